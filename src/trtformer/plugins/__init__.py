"""Fused-op plugins: a Triton kernel and a TensorRT IPluginV3 per custom op; `registry` names and loads them.

Importing this package imports neither Triton nor TensorRT: the registry loads an implementation when asked.
"""
