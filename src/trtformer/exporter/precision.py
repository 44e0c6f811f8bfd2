"""Precision of an exported graph, expressed in the model itself (strongly typed TensorRT needs that).

fp16/bf16 cast the matmul weights; LayerNorms (LayerNorm32 computes in fp32 anyway), embeddings (a gather
is cheap, and a tied LM head then projects in fp32) and heads (Linear32 everywhere, plus the modules a family's
registry entry names, such as Transformer-XL's softmax) keep fp32 parameters, and so do modules that declare
`keeps_fp32 = True` because their model computes them in fp32 (T5's RMS norms and its feed-forward output
projections, which overflow fp16); the manifest lists those (`fp32_modules`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..artifact.dtypes import PRECISIONS
from ..models.layers import Linear32


def torch_dtype(precision: str) -> torch.dtype:
    """The dtype of a precision's low-precision tensors (the manifest's dtype names are torch's)."""
    return getattr(torch, PRECISIONS[precision])


def apply_precision(model: nn.Module, precision: str, heads: tuple[str, ...] = ()) -> nn.Module:
    """A copy of `model` at `precision`, Linear32 modules and the modules named in `heads` kept fp32 (the original
    stays fp32 as the parity reference)."""
    dtype = torch_dtype(precision)
    if dtype == torch.float32:
        return model
    low = copy.deepcopy(model).to(dtype)
    for name, module in low.named_modules():
        if isinstance(module, (nn.LayerNorm, nn.Embedding, Linear32)) or name in heads or kept_fp32(module):
            module.float()
    return low


def kept_fp32(module: nn.Module) -> bool:
    """A module its model computes in fp32 whatever the precision (see the module docstring)."""
    return getattr(module, "keeps_fp32", False) is True


def fp32_modules(model: nn.Module) -> dict[str, list[str]]:
    """What a low-precision export keeps fp32 beyond norms, embeddings and heads: module type -> names, for the
    manifest (empty for the families whose contract is the plain one)."""
    out: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if kept_fp32(module):
            out.setdefault(type(module).__name__, []).append(name)
    return out


def fp32_heads(model: nn.Module, heads: tuple[str, ...] = ()) -> list[str]:
    """Names of the head projections that the precision contract keeps fp32 (int8 quantisation included)."""
    return [name for name, m in model.named_modules() if isinstance(m, Linear32) or name in heads]
