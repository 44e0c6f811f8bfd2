"""`trtformer::rel_position_attention` (Transformer-XL) as a Triton kernel (`triton`) and a TensorRT plugin (`trt`)."""
