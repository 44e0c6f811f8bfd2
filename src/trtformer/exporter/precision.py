"""Precision of an exported graph, expressed in the model itself (strongly typed TensorRT needs that).

fp16/bf16 cast the matmul weights; LayerNorms (LayerNorm32 computes in fp32 anyway), embeddings (a gather
is cheap, and a tied LM head then projects in fp32) and heads (GPT's and Transformer-XL's by name, Linear32
everywhere) keep fp32 parameters.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..models.layers import Linear32

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FP32_HEADS = ("crit",)  # Transformer-XL's (adaptive) softmax; projection heads are Linear32


def apply_precision(model: nn.Module, precision: str) -> nn.Module:
    """A copy of `model` at `precision` (the original stays fp32 as the parity reference)."""
    dtype = PRECISIONS[precision]
    if dtype == torch.float32:
        return model
    low = copy.deepcopy(model).to(dtype)
    for name, module in low.named_modules():
        if isinstance(module, (nn.LayerNorm, nn.Embedding, Linear32)) or name in FP32_HEADS:
            module.float()
    return low


def fp32_heads(model: nn.Module) -> list[str]:
    """Names of the head projections that the precision contract keeps fp32 (int8 quantisation included)."""
    return [name for name, m in model.named_modules() if isinstance(m, Linear32) or name in FP32_HEADS]
