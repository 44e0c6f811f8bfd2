"""The fused ops that have plugins: their identity (from trtformer.ops), and lazy loaders of their implementations.

Names come from each op's IDENTITY, which the exporter writes plugin-form nodes by, so the ONNX node and the plugin
TensorRT looks up cannot drift apart. Nothing heavy is imported until a loader runs: Triton and TensorRT are
optional extras, and a missing one raises DependencyError naming the extra.

Loading a Triton module does not switch the ops to it: the kernels run only inside `triton_kernels()` (see
ops/dispatch.py), so a torch-cuda session keeps the eager reference whatever another session loaded.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType

import torch

from ..errors import require
from ..ops import dispatch, rel_position, sliding_window
from ..ops.identity import OpIdentity


@dataclass(frozen=True)
class Plugin:
    identity: OpIdentity  # the op's node and plugin names
    package: str  # trtformer.plugins.<package> holds triton.py and trt.py

    @property
    def op(self) -> torch._ops.OpOverload:
        """The custom op the plugin implements."""
        return self.identity.op

    @property
    def name(self) -> str:
        """The TensorRT plugin name: the plugin-form node's op type (without a variant suffix)."""
        return self.identity.plugin

    @property
    def namespace(self) -> str:
        return self.identity.namespace

    @property
    def version(self) -> str:
        return self.identity.version

    def load_triton(self) -> ModuleType:
        """The Triton implementation; importing it provides the op's accelerated CUDA kernel (ops/dispatch.py)."""
        require("triton", "triton", f"the Triton kernel of {self.name}")
        return importlib.import_module(f"{__package__}.{self.package}.triton")

    def load_trt(self) -> ModuleType:
        """The TensorRT plugin module (it imports tensorrt itself, when a plugin is registered or built)."""
        return importlib.import_module(f"{__package__}.{self.package}.trt")


PLUGINS: dict[str, Plugin] = {
    p.name: p for p in (Plugin(rel_position.IDENTITY, "rel_position"), Plugin(sliding_window.IDENTITY, "sliding_window"))
}


def plugin_for(op) -> Plugin:
    """The plugin of a custom op (an OpOverload), or KeyError."""
    for p in PLUGINS.values():
        if p.op == op:
            return p
    raise KeyError(op)


_loaded = False  # every Triton module imported: triton_kernels() then skips the loaders


def load_triton_kernels() -> list[str]:
    """Import every Triton implementation (DependencyError without Triton); their plugin names. The kernels run
    only inside `triton_kernels()`."""
    global _loaded
    for p in PLUGINS.values():
        p.load_triton()
    _loaded = True
    return list(PLUGINS)


@contextlib.contextmanager
def triton_kernels() -> Iterator[None]:
    """Inside the block, the fused ops run their Triton kernels on CUDA tensors (in this thread or task only)."""
    if not _loaded:
        load_triton_kernels()
    with dispatch.accelerated():
        yield
