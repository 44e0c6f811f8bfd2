"""What names a fused op outside torch: its ONNX node, its TensorRT plugin, and the attributes both carry.

The exporter writes plugin-form nodes by this identity and the plugins register under it, so the node an export
writes and the plugin TensorRT looks up cannot drift apart. It lives with the op, below both, so that neither
imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NAMESPACE = "trtformer"  # the TensorRT plugin namespace, also the plugin-form nodes' ONNX domain
VERSION = "1"  # the TensorRT plugin version


def arguments(op: torch._ops.OpOverload) -> tuple[list[str], list[tuple[str, str]]]:
    """The op's tensor argument names, and its other arguments as (name, torch type), in schema order."""
    tensors, attrs = [], []
    for a in op._schema.arguments:
        if isinstance(a.type, torch.TensorType):
            tensors.append(a.name)
        else:
            attrs.append((a.name, str(a.type)))
    return tensors, attrs


@dataclass(frozen=True)
class OpIdentity:
    """One fused op's names and schema, as the plugin-form node and the TensorRT plugin spell them."""

    op: torch._ops.OpOverload  # the overload ExportedPrograms call
    plugin: str  # the TensorRT plugin name, also the node's op type when the op has no variants
    tensors: tuple[str, ...]  # tensor inputs, in schema order
    attributes: tuple[tuple[str, str], ...]  # (name, torch type) of the other arguments, in schema order
    outputs: tuple[str, ...]  # the node's and the plugin's outputs
    domain: str = NAMESPACE
    namespace: str = NAMESPACE
    version: str = VERSION

    @classmethod
    def of(cls, op: torch._ops.OpOverload, plugin: str, outputs: tuple[str, ...]) -> OpIdentity:
        tensors, attrs = arguments(op)
        return cls(op, plugin, tuple(tensors), tuple(attrs), tuple(outputs))

    @property
    def name(self) -> str:
        """The custom op's qualified name, e.g. trtformer::rel_position_attention."""
        return self.op.name()
