"""Scoped accelerated kernels: an op runs its accelerated CUDA kernel (Triton) only inside `accelerated()`.

`torch.library.register_kernel(op, "cuda", fn)` would re-route the op for every later CUDA call in the process:
a torch-cuda session would silently run the Triton kernels once any torch-cuda-triton session had loaded them.
So the CUDA kernel registered here (once per op) asks a context variable at every call and runs the accelerated
kernel only while it is set, the eager reference otherwise. A ContextVar is per thread (and per asyncio task):
a session enabling the kernels around its forward does not switch them on for a session in another thread.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("trtformer_accelerated_kernels", default=False)
_KERNELS: dict[str, Callable] = {}  # op name -> its accelerated kernel
_ROUTES: dict[str, Callable] = {}  # op name -> the CUDA kernel registered with torch (it picks per call)


def provide(op: torch._ops.OpOverload, kernel: Callable, reference: Callable) -> Callable:
    """Make `kernel` the op's accelerated CUDA implementation, used inside `accelerated()`; `reference` (the op's
    eager body) runs on CUDA otherwise. Registers the op's CUDA kernel with torch on the first call; a later call
    replaces the accelerated kernel only. Returns the registered CUDA kernel."""
    name = op.name()
    _KERNELS[name] = kernel
    if name not in _ROUTES:

        def cuda(*args, **kwargs):
            return (_KERNELS[name] if _ENABLED.get() else reference)(*args, **kwargs)

        cuda.__name__ = cuda.__qualname__ = f"{name.partition('::')[2]}_cuda"
        torch.library.register_kernel(op, "cuda", cuda)
        _ROUTES[name] = cuda
    return _ROUTES[name]


def route(op: torch._ops.OpOverload) -> Callable | None:
    """The CUDA kernel registered for `op` (None before an accelerated kernel is provided)."""
    return _ROUTES.get(op.name())


def enabled() -> bool:
    """Whether ops run their accelerated kernels in this context."""
    return _ENABLED.get()


@contextlib.contextmanager
def accelerated(enable: bool = True) -> Iterator[None]:
    """Inside the block, ops with an accelerated kernel run it on CUDA tensors (`enable=False`: the reference)."""
    token = _ENABLED.set(enable)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def implementation(op: torch._ops.OpOverload) -> Callable | None:
    """The Python body a trtformer op runs on CUDA in this context: its accelerated kernel inside `accelerated()`,
    the body it was defined with otherwise; None for any other op. (For checks that must see inside the op.)"""
    name = op.name()
    if op.namespace != "trtformer":
        return None
    if _ENABLED.get() and name in _KERNELS:
        return _KERNELS[name]
    from torch._library.custom_ops import OPDEFS  # torch's table of custom_op definitions: the body each was made from

    return OPDEFS[name]._init_fn
