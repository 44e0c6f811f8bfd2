"""Serving on NVIDIA Triton Inference Server.

`trtformer serve` (launch.start_serving) runs artifacts behind a tritonserver through its Python backend, on any
trtformer backend: encoders with dynamic batching across lengths, GPT generation (plain and decoupled streaming),
Transformer-XL scoring. `trtformer repository` (repository.write_portable_repository) writes a model repository
for Triton's own onnxruntime or tensorrt backend, which needs no Python at run time.

Nothing here is imported by the rest of trtformer; the server and client packages come with the `serve` extra.
"""
