"""TensorRT and TensorRT-RTX engines built from an artifact's ONNX, cached in ARTIFACT/engines/.

Importing this package imports neither TensorRT flavor nor torch; `build_engine` and `read_engine` import the
flavor they use.
"""

from __future__ import annotations

from .build import EngineBuild, build_engine
from .flavors import FLAVOR_CHOICES, FLAVORS
from .loader import StoredEngine, read_engine
from .profiles import DEFAULT_MAX, DimRange, Profile

__all__ = [
    "DEFAULT_MAX",
    "FLAVORS",
    "FLAVOR_CHOICES",
    "DimRange",
    "EngineBuild",
    "Profile",
    "StoredEngine",
    "build_engine",
    "read_engine",
]
