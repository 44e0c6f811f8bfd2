"""TensorRT and TensorRT-RTX engines built from an artifact graph's ONNX, cached in ARTIFACT/engines/.

- build.py     the builder (`build_engine`)
- cache.py     keys, manifest records, the checks that name a mismatch
- loader.py    a stored engine's bytes for a runtime, checked first (`read_engine`)
- profiles.py  optimisation profiles from a graph's dims and overrides
The flavors, the logger and plugin registration are in trtformer.trt, shared with the tensorrt backend.

Importing this package imports nothing of its own: each name below is imported when first used, so the runtime can
read engines without importing the builder, and neither TensorRT flavor nor torch is imported until a build or read.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_engine": ".build", "EngineBuild": ".build",
    "read_engine": ".loader", "StoredEngine": ".loader",
    "DEFAULT_MAX": ".profiles", "DimRange": ".profiles", "Profile": ".profiles",
    "FLAVORS": "..trt.flavors", "FLAVOR_CHOICES": "..trt.flavors",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
