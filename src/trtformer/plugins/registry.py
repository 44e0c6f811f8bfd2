"""The fused ops that have plugins: TensorRT name, namespace and version, the custom op, and lazy loaders.

Names come from the exporter's translation table, so the ONNX node a plugin-form export writes and the plugin
TensorRT looks up cannot drift apart. Nothing heavy is imported until a loader runs: Triton and TensorRT are
optional extras, and a missing one raises DependencyError naming the extra.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import torch

from ..errors import require
from ..exporter.translations import PLUGIN_NAMESPACE, PLUGIN_VERSION, TRANSLATIONS
from ..ops import rel_position, sliding_window


@dataclass(frozen=True)
class Plugin:
    op: torch._ops.OpOverload  # the custom op the plugin implements
    package: str  # trtformer.plugins.<package> holds triton.py and trt.py
    namespace: str = PLUGIN_NAMESPACE
    version: str = PLUGIN_VERSION

    @property
    def name(self) -> str:
        """The TensorRT plugin name: the plugin-form node's op type (without a variant suffix)."""
        return TRANSLATIONS[self.op].name

    def load_triton(self) -> ModuleType:
        """The Triton implementation; importing it registers it as the op's CUDA kernel."""
        require("triton", "triton", f"the Triton kernel of {self.name}")
        return importlib.import_module(f"{__package__}.{self.package}.triton")

    def load_trt(self) -> ModuleType:
        """The TensorRT plugin module (it imports tensorrt itself, when a plugin is registered or built)."""
        return importlib.import_module(f"{__package__}.{self.package}.trt")


PLUGINS: dict[str, Plugin] = {
    p.name: p for p in (Plugin(rel_position.OP, "rel_position"), Plugin(sliding_window.OP, "sliding_window"))
}


def plugin_for(op) -> Plugin:
    """The plugin of a custom op (an OpOverload), or KeyError."""
    for p in PLUGINS.values():
        if p.op == op:
            return p
    raise KeyError(op)


def use_triton_kernels() -> list[str]:
    """Load every Triton implementation, so the custom ops dispatch to them on CUDA tensors; their names."""
    for p in PLUGINS.values():
        p.load_triton()
    return list(PLUGINS)
