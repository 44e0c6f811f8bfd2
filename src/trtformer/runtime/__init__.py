"""The runtime: artifacts, backends, sessions, generation. Needs numpy and onnxruntime, never torch."""
