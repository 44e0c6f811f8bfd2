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
    "torch-compile": ("trtformer.runtime.backends.torch", "TorchBackend", {"compile": True}),
    "torch-cuda-compile": ("trtformer.runtime.backends.torch", "TorchBackend", {"device": "cuda", "triton": True, "compile": True}),
    "ort-cpu": ("trtformer.runtime.backends.ort", "OrtBackend", {"device": "cpu"}),
    "ort-cuda": ("trtformer.runtime.backends.ort", "OrtBackend", {"device": "cuda"}),
    "tensorrt": ("trtformer.runtime.backends.tensorrt", "TensorRTBackend", {}),
}


# The options a caller may pass to each backend class (the registry's own keyword arguments excepted).
OPTIONS: dict[str, tuple[str, ...]] = {
    "TorchBackend": ("model", "threads", "precision", "static_cache", "cuda_graphs", "buckets"),
    "OrtBackend": ("model", "threads", "device_id"),
    "TensorRTBackend": ("engine", "flavor", "cuda_graphs", "max_graphs", "device_id"),
}


# The backends that run on a GPU: only they replay CUDA graphs.
ON_GPU = ("torch-cuda", "torch-cuda-triton", "torch-cuda-compile", "ort-cuda", "tensorrt")


def taking(option: str) -> list[str]:
    """The backends that take `option` (cuda_graphs: those of them on a GPU)."""
    return [name for name, (_, factory, _) in REGISTRY.items()
            if option in OPTIONS[factory] and (option != "cuda_graphs" or name in ON_GPU)]  # fmt: skip


def misplaced(option: str, backend: str, spelled: str | None = None) -> str | None:
    """Why `backend` cannot take `option` (written as `spelled`, e.g. a command-line flag), or None."""
    takers = taking(option)
    if backend in takers:
        return None
    return f"{spelled or option} applies to the {', '.join(takers)} backend{'s' if len(takers) > 1 else ''}, not {backend}"


def names() -> list[str]:
    return list(REGISTRY)


def create(name: str, artifact, graph: str | None = None, **options) -> Backend:
    """Backend `name` for graph `graph` of `artifact` (its only graph by default)."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise BackendError(f"unknown backend {name!r}", hint=f"backends: {', '.join(REGISTRY)}")
    module, factory, defaults = REGISTRY[name]
    cls = getattr(importlib.import_module(module), factory)
    unknown = sorted(set(options) - set(OPTIONS[factory]))
    if unknown:
        raise BackendError(f"the {name} backend takes no option {', '.join(unknown)}",
                           hint=f"its options: {', '.join(OPTIONS[factory]) or 'none'}")
    return cls(artifact, graph=graph, **{**defaults, **options})


__all__ = ["Backend", "State", "REGISTRY", "create", "names", "taking"]
