"""Blocks shared by the model families.

Precision contract (DESIGN.md): LayerNorm, softmax statistics and the logits projection run in fp32 whatever
the compute dtype. These helpers cast up and back; in an fp32 model the casts are no-ops and vanish from the
exported graph, so there is one numerical path for every precision.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm32(nn.LayerNorm):
    """LayerNorm whose statistics and parameters stay fp32; returns the input's dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class Linear32(nn.Linear):
    """A head projection that stays fp32 in every precision (the logits contract); returns fp32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.float(), self.weight, self.bias)


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GELU used by GPT-1, GPT-2 and BERT's `gelu_new`."""
    return F.gelu(x, approximate="tanh")


ACTIVATIONS = {
    "gelu_new": gelu_new,
    "gelu_pytorch_tanh": gelu_new,
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


def masked_softmax_attention(
    q: torch.Tensor,  # [batch, heads, q_len, head_dim]
    k: torch.Tensor,  # [batch, heads, k_len, head_dim]
    v: torch.Tensor,  # [batch, heads, k_len, head_dim]
    allowed: torch.Tensor,  # bool, broadcastable to [batch, heads, q_len, k_len]
    scale: float,
) -> torch.Tensor:  # [batch, heads, q_len, head_dim]
    """Scaled dot-product attention with the softmax in fp32.

    Disallowed scores get the most negative finite fp32 value rather than -inf, so a row with nothing
    allowed (a padding query) gives a uniform distribution instead of NaN.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale  # [batch, heads, q_len, k_len]
    scores = scores.masked_fill(~allowed, torch.finfo(torch.float32).min)
    return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)


def padding_bias(attention_mask: torch.Tensor) -> torch.Tensor:  # [batch, seq] -> [batch, 1, 1, seq] fp32
    """The additive form of a key padding mask: 0 for real tokens, the most negative fp32 value for padding.

    Written as (1 - mask) * min, the shape ONNX Runtime's attention fusion recognises in BERT-like graphs.
    """
    return (1.0 - attention_mask.unsqueeze(1).unsqueeze(2).float()) * torch.finfo(torch.float32).min


def biased_softmax_attention(
    q: torch.Tensor,  # [batch, heads, q_len, head_dim]
    k: torch.Tensor,  # [batch, heads, k_len, head_dim]
    v: torch.Tensor,  # [batch, heads, k_len, head_dim]
    bias: torch.Tensor,  # fp32, broadcastable to [batch, heads, q_len, k_len]
) -> torch.Tensor:  # [batch, heads, q_len, head_dim]
    """Dot-product attention scaled by 1/sqrt(head_dim) with an additive bias (see padding_bias); softmax in fp32.

    The scores are divided by sqrt(head_dim) and the scaled scores come before the bias in the Add: ONNX
    Runtime's attention fusion matches MatMul -> Div -> Add(mask) and takes the Add's first Mul-typed input
    as the mask, without trying the other.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1]) + bias  # [batch, heads, q_len, k_len]
    return torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v)


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """[batch, seq, n_head * head_dim] -> [batch, n_head, seq, head_dim]"""
    b, s, width = x.shape
    # An explicit head size (not -1) makes it a constant in the graph, where ONNX Runtime's fusions read it.
    return x.view(b, s, n_head, width // n_head).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[batch, n_head, seq, head_dim] -> [batch, seq, n_head * head_dim]"""
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b, s, h * d)


def init_normal_(module: nn.Module, std: float) -> None:
    """GPT/BERT-style init: normal weights, zero biases, unit LayerNorm."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def inverse_sqrt(n: int) -> float:
    return 1.0 / math.sqrt(n)
