"""The compiled torch backends (`torch-compile` on CPU, `torch-cuda-compile` on the GPU): the reference model through
torch.compile with Inductor.

- fullgraph=True: the fused ops are `torch.library.custom_op`s with fake implementations, opaque to Inductor (on the
  GPU they dispatch to their Triton kernels inside the session's calls), so every family's forward is one graph. A
  graph break would be an error here, never a silent fall back to eager Python.
- dynamic=True: one graph serves every batch size and length. torch still specialises dims of size 0 and 1, so an
  encoder compiles at most three graphs (batch 1, length 1, the rest) and a GPT decode two (the prefill, whose past is
  empty, and the one-token step), after which every later position runs without recompiling; with the static KV cache
  the decode step's shapes are fixed anyway.
- `compiles` counts the graphs Inductor compiled for this backend, so tests and benchmarks see recompiles.

Inductor builds its CPU kernels with a C++ compiler; without one, creating `torch-compile` is a BackendError.
"""

from __future__ import annotations

from ...errors import BackendError
from .buffers import Device, Module, Tensor


def require_cpp_compiler() -> str:
    """The C++ compiler Inductor will use for CPU kernels, or a BackendError saying none was found."""
    from torch._inductor import cpp_builder

    try:
        return cpp_builder.get_cpp_compiler()
    except Exception as exc:  # torch raises its own InvalidCxxCompiler (or a RuntimeError) when the search fails
        raise BackendError(f"torch.compile on CPU needs a C++ compiler for Inductor's kernels, and none was found ({exc})",
                           hint="install one (e.g. apt-get install g++, or set CXX), or use the torch backend") from None  # fmt: skip


class CompiledModel:
    """`model` compiled once; calls take the model's keyword arguments."""

    def __init__(self, model: Module, device: Device):
        import torch
        if device.type == "cpu":
            require_cpp_compiler()
        self.compiles = 0
        inductor = torch._dynamo.lookup_backend("inductor")

        def counted(graph_module, example_inputs):
            compiled = inductor(graph_module, example_inputs)  # may raise to make dynamo retrace (not a compile)
            self.compiles += 1
            return compiled

        self.forward = torch.compile(model, backend=counted, dynamic=True, fullgraph=True)

    def __call__(self, **kwargs) -> dict[str, Tensor]:
        return self.forward(**kwargs)
