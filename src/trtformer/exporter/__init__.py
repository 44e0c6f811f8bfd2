"""PyTorch -> ONNX: I/O specs per family, precision, and the artifact writer."""
