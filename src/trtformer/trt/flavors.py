"""The two TensorRT flavors, imported only when asked for: full TensorRT and TensorRT-RTX.

Full TensorRT (`import tensorrt`) builds on and for the GPU it runs on, and will take trtformer's plugins.
TensorRT-RTX (`import tensorrt_rtx`) builds ahead of time for named compute capabilities, on a machine
without a GPU. Everything else the builder and the runtime use is API the two share. Tensor types: artifact/dtypes.py.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import re
import sys
from dataclasses import dataclass
from types import ModuleType

from ..errors import DependencyError, EngineError, InputError, require


@dataclass(frozen=True)
class Flavor:
    name: str  # as users and manifests spell it
    module: str  # what to import
    extra: str  # the trtformer extra that installs it
    title: str  # for messages


FLAVORS = {
    "tensorrt": Flavor("tensorrt", "tensorrt", "tensorrt", "TensorRT"),
    "tensorrt-rtx": Flavor("tensorrt-rtx", "tensorrt_rtx", "tensorrt-rtx", "TensorRT-RTX"),
}
FLAVOR_CHOICES = ("auto", *FLAVORS)
# NVIDIA builds TensorRT-RTX engines for Turing only on request: it holds back the other targets, and fp32
# matmuls do not compile for it at all.
RTX_OPT_IN = {"7.5"}
# TensorRT's ONNX importer prefers a registered plugin over the node's local function from 10.7 on ("Now prioritizes
# using plugins over local functions"); before, it inlines the function, and the plugin form runs without plugins.
MIN_PLUGIN_VERSION = (10, 7)


@dataclass(frozen=True)
class Toolkit:
    flavor: Flavor
    trt: ModuleType

    @property
    def name(self) -> str:
        return self.flavor.name

    @property
    def version(self) -> str:
        return self.trt.__version__

    @property
    def label(self) -> str:
        return f"{self.flavor.title} {self.version}"

    @property
    def plugin_layers(self) -> bool:
        """True when the flavor runs plugins (full TensorRT); TensorRT-RTX has no plugin layers."""
        return self.flavor.name == "tensorrt"

    @property
    def ahead_of_time(self) -> bool:
        """True when the flavor targets named compute capabilities instead of the GPU it runs on."""
        return self.flavor.name == "tensorrt-rtx"


    @property
    def numeric_version(self) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", self.version)[:3])

    def plugin_problem(self) -> str | None:
        """Why this toolkit would not make trtformer's plugin-form nodes plugin layers, or None."""
        if not self.plugin_layers:
            return f"{self.label} has no plugin layers: it inlines the plugin form's local functions"
        if self.numeric_version < MIN_PLUGIN_VERSION:
            least = ".".join(map(str, MIN_PLUGIN_VERSION))
            return f"{self.label} inlines the plugin form's local functions instead of using the plugins (needs >= {least})"
        return None


@dataclass(frozen=True)
class Targets:
    labels: tuple[str, ...]  # "8.6", recorded in the manifest
    values: tuple = ()  # trt.ComputeCapability members to set (ahead-of-time flavors only)


def installed(name: str) -> bool:
    return importlib.util.find_spec(FLAVORS[name].module) is not None


def load(flavor: str = "auto") -> Toolkit:
    """Import the flavor's module. `auto`: full TensorRT on a machine with a GPU, else TensorRT-RTX."""
    if flavor == "auto":
        flavor = _pick_auto()
    if flavor not in FLAVORS:
        raise InputError(f"unknown TensorRT flavor {flavor!r}", hint=f"flavors: {', '.join(FLAVOR_CHOICES)}")
    fl = FLAVORS[flavor]
    try:
        module = require(fl.module, fl.extra, f"the {fl.title} flavor")
    except DependencyError:
        raise
    except (OSError, RuntimeError) as exc:  # a wheel whose native libraries do not load
        raise EngineError(f"importing {fl.module} failed: {exc}", hint=f"reinstall with pip install 'trtformer[{fl.extra}]'") from exc
    return Toolkit(fl, module)


def _pick_auto() -> str:
    full, rtx = installed("tensorrt"), installed("tensorrt-rtx")
    if full and (not rtx or device_capability() is not None):
        return "tensorrt"
    if rtx:
        return "tensorrt-rtx"
    err = DependencyError("tensorrt_rtx", "tensorrt-rtx", "TensorRT engines")
    err.hint = "pip install 'trtformer[tensorrt-rtx]' (any machine) or 'trtformer[tensorrt]' (with an NVIDIA GPU)"
    raise err


@functools.cache
def _driver():
    """The CUDA driver library through ctypes, or None where there is none: free of CUDA Python packages and torch."""
    for name in ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _device(index: int):
    """(driver library, CUdevice) of CUDA device `index`, or None without a driver or such a GPU."""
    lib, dev = _driver(), ctypes.c_int()
    if lib is None or lib.cuInit(0) != 0 or lib.cuDeviceGet(ctypes.byref(dev), index) != 0:
        return None
    return lib, dev


@functools.cache
def device_name(index: int = 0) -> str | None:
    """The name of CUDA device `index` from the driver API; None without a driver or a GPU."""
    found = _device(index)
    if found is None:
        return None
    lib, dev = found
    name = ctypes.create_string_buffer(256)
    return name.value.decode(errors="replace") if lib.cuDeviceGetName(name, len(name), dev) == 0 else None


@functools.cache
def device_capability(index: int = 0) -> str | None:
    """Compute capability of CUDA device `index` from the driver API; None without a driver or a GPU."""
    found = _device(index)
    if found is None:
        return None
    lib, dev = found
    major, minor = ctypes.c_int(), ctypes.c_int()
    # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75, _MINOR = 76
    if lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev) or lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev):
        return None
    return f"{major.value}.{minor.value}"


def parse_capability(text: str) -> str:
    """'8.6', '86', 'sm86', 'sm_86' -> '8.6'; '120' -> '12.0'; 'current' stays."""
    t = text.strip().lower().removeprefix("sm").lstrip("_")
    if t == "current":
        return t
    if re.fullmatch(r"\d+\.\d", t):
        major, minor = t.split(".")
    elif re.fullmatch(r"\d{2,3}", t):
        major, minor = t[:-1], t[-1]
    else:
        raise InputError(f"compute capability {text!r} is not like 8.6, 86 or sm86", hint="or pass 'current'")
    return f"{int(major)}.{minor}"


def _capability_order(label: str) -> tuple[int, int]:
    major, minor = label.split(".")
    return int(major), int(minor)


def rtx_capabilities(trt: ModuleType) -> dict[str, object]:
    """'8.6' -> trt.ComputeCapability.SM86, for every target the installed TensorRT-RTX knows."""
    out = {}
    for name, member in trt.ComputeCapability.__members__.items():
        if m := re.fullmatch(r"SM(\d+)(\d)", name):
            out[f"{int(m[1])}.{m[2]}"] = member
    return dict(sorted(out.items(), key=lambda kv: _capability_order(kv[0])))


def targets(kit: Toolkit, requested: list[str] | None = None) -> Targets:
    """The compute capabilities to build for. Ahead of time: the ones asked for, by default every target the
    installed TensorRT-RTX knows except RTX_OPT_IN. Full TensorRT: the GPU it runs on, nothing else."""
    wanted = {parse_capability(t) for t in requested or []}
    return _rtx_targets(kit, wanted) if kit.ahead_of_time else _device_target(kit, wanted)


def _device_target(kit: Toolkit, wanted: set[str]) -> Targets:
    device = device_capability()
    if device is None:
        raise EngineError(f"{kit.label} builds on the GPU it targets, and no CUDA GPU is visible here",
                          hint="use --flavor tensorrt-rtx to build ahead of time without a GPU")
    others = sorted(wanted - {"current", device})
    if others:
        raise EngineError(f"{kit.label} builds for the GPU here ({device}); it cannot target {', '.join(others)}",
                          hint="use --flavor tensorrt-rtx to build for other GPUs")
    return Targets((device,))


def _rtx_targets(kit: Toolkit, wanted: set[str]) -> Targets:
    known = rtx_capabilities(kit.trt)
    if "current" in wanted:
        device = device_capability()
        if len(wanted) > 1:
            raise InputError("compute capability 'current' cannot be combined with other targets")
        if device is None:
            raise EngineError("compute capability 'current' needs a visible CUDA GPU, and there is none",
                              hint="name the targets, e.g. --compute-capability 8.6 12.0")
        if device not in known:
            raise EngineError(f"{kit.label} cannot target this GPU (compute capability {device}); it targets {', '.join(known)}")
        return Targets((device,), (kit.trt.ComputeCapability.CURRENT,))
    unknown = sorted(wanted - set(known))
    if unknown:
        raise EngineError(f"{kit.label} cannot target compute capability {', '.join(unknown)}; it targets {', '.join(known)}",
                          hint="pick from those with --compute-capability")
    labels = sorted(wanted or set(known) - RTX_OPT_IN, key=_capability_order)
    return Targets(tuple(labels), tuple(known[t] for t in labels))
