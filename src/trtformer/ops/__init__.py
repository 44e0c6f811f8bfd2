"""The attention math of the fused ops as torch custom ops: one eager reference implementation each.

- rel_position.py, sliding_window.py  the ops, each with its IDENTITY (ONNX node and TensorRT plugin names)
- identity.py                         OpIdentity and the op schema reader `arguments`
- dispatch.py                         accelerated CUDA kernels, used only inside `accelerated()`
"""
