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
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return torch.matmul(probs, v)


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """[batch, seq, n_head * head_dim] -> [batch, n_head, seq, head_dim]"""
    b, s, _ = x.shape
    return x.view(b, s, n_head, -1).transpose(1, 2)


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
