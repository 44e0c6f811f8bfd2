"""`trtformer::sliding_window_attention` (Longformer) as a Triton kernel (`triton`) and a TensorRT plugin (`trt`)."""
