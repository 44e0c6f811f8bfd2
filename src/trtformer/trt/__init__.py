"""What the engine builder and the tensorrt runtime backend share, so the backend never imports the builder.

- flavors.py  full TensorRT and TensorRT-RTX, imported when asked for; compute capability targets
- logger.py   a trt.ILogger that forwards to logging (known-benign warnings at DEBUG) and keeps the errors
- plugins.py  registering the plugins a plugin-form artifact uses, before parsing or deserializing

Importing this package imports neither TensorRT flavor nor torch.
"""
