"""Backend registry. Each entry is imported only when chosen, so `ort-cpu` never imports torch or TensorRT, and the
GPU backends touch CUDA only when created."""

from __future__ import annotations

import importlib

from ...errors import BackendError
from .base import Backend, State

# name -> (module, factory, keyword arguments)
REGISTRY: dict[str, tuple[str, str, dict]] = {
    "torch": ("trtformer.runtime.backends.torch", "TorchBackend", {}),
    "torch-cuda": ("trtformer.runtime.backends.torch", "TorchBackend", {"device": "cuda"}),
    "torch-cuda-triton": ("trtformer.runtime.backends.torch", "TorchBackend", {"device": "cuda", "triton": True}),
    "ort-cpu": ("trtformer.runtime.backends.ort", "OrtBackend", {"device": "cpu"}),
    "ort-cuda": ("trtformer.runtime.backends.ort", "OrtBackend", {"device": "cuda"}),
    "tensorrt": ("trtformer.runtime.backends.tensorrt", "TensorRTBackend", {}),
}


def names() -> list[str]:
    return list(REGISTRY)


def create(name: str, artifact, **options) -> Backend:
    if name not in REGISTRY:
        raise BackendError(f"unknown backend {name!r}", hint=f"backends: {', '.join(REGISTRY)}")
    module, factory, defaults = REGISTRY[name]
    cls = getattr(importlib.import_module(module), factory)
    return cls(artifact, **{**defaults, **options})


__all__ = ["Backend", "State", "REGISTRY", "create", "names"]
