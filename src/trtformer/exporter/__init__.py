"""PyTorch -> ONNX: tracing against a family's graph spec, precision, the fused ops' translations, ONNX Runtime's fusions,
int8, and the artifact writer."""
