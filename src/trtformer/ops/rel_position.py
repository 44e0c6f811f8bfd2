"""Transformer-XL relative-position attention as the custom op `trtformer::rel_position_attention`.

One call is one layer's whole attention sublayer, HF's `RelPartialLearnableMultiHeadAttn` plus the memory update:

    keys and values come from cat = [mems ; hidden]               klen = mlen + qlen
    score[i, j] = (q_i + u) . k_j  +  (q_i + v) . W_r R(mlen + i - j)   (terms a + c, and b + d)
    R(d) = [sin(min(d, clamp_len) * f), cos(...)]                  sinusoids of the distance (clamp if > 0)
    allowed[i, j] = j <= mlen + i  (and j > mlen + i - mem_len with same_length)
    out = LayerNorm(hidden + o_net(attention))                     (pre_lnorm: hidden + o_net(...), LN on the input)
    new_mem = the last mem_len rows of cat                         (the layer INPUT, as HF and the paper keep it)

Choices the fused kernels inherit:
- The residual and LayerNorm are inside: HF's module owns them, a kernel applies them in the o_net epilogue, and
  with pre_lnorm the LN must see the memory rows while the new memory stays un-normalised, which only the op
  that owns both can arrange.
- The sinusoids R are generated inside: they are a function of (klen, clamp_len, d_model) with no weights, so an
  input would only be a way to pass inconsistent ones; a kernel computes sin/cos of pos * inv_freq in registers.
- Tensors are time-first ([len, batch, d_model]), the layout of the memory state (HF's and the manifest's), so
  cat and the memory slice are along dim 0 with no transposes.

The eager body (`reference`) is the semantics every other form is checked against, and it traces with symbolic
qlen and mlen (mlen 0 included): masks from arange comparisons, the rel-shift as pad + flat slice (HF's
pad-and-view form guards on klen % qlen under torch.export), the memory length as sym_min. The exporter can
inline it with `exported.run_decompositions({OP: reference})`. Scores and softmax are fp32 in every precision.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .identity import OpIdentity


def sinusoid_encodings(pos: Tensor, d_model: int) -> Tensor:  # [len(pos), d_model] fp32
    """R(d) = [sin(d * f), cos(d * f)] for the distances in pos."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d_model, 2, device=pos.device, dtype=torch.float32) / d_model))
    angles = pos.float()[:, None] * inv_freq[None, :]  # [len(pos), d_model / 2]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def distance_projections(klen: int, clamp_len: int, r_weight: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    """W_r R(d) for the distances that differ, d = 0 .. n_rel - 1: [n_rel, n_head * d_head].

    n_rel is klen, or clamp_len + 1 when clamp_len > 0 caps it: farther distances share the last row. Projecting
    only these rows is what makes clamp_len cheap (r_net costs n_rel rows, not klen, per segment).
    """
    n_rel = torch.sym_min(klen, clamp_len + 1) if clamp_len > 0 else klen  # a SymInt under export
    enc = sinusoid_encodings(torch.arange(n_rel, device=device), r_weight.shape[1]).to(dtype)  # [n_rel, d_model]
    return F.linear(enc, r_weight.to(dtype))


def attention_allowed(qlen: int, mlen: int, mem_len: int, same_length: bool, device: torch.device) -> Tensor:
    """[qlen, mlen + qlen] bool: query i sits at absolute position mlen + i and sees keys up to itself.

    same_length keeps each query's window at mem_len keys, HF's triu + tril mask written as one comparison.
    """
    i = torch.arange(qlen, device=device)[:, None] + mlen  # [qlen, 1], absolute query positions
    j = torch.arange(mlen + qlen, device=device)[None, :]  # [1, klen]
    allowed = j <= i
    if same_length:
        allowed = allowed & (j > i - mem_len)
    return allowed


def rel_shift(x: Tensor) -> Tensor:  # [batch, heads, qlen, klen] -> same
    """x[..., i, m] scores distance klen - 1 - m; the result at [i, j] scores distance mlen + i - j.

    Valid where j <= mlen + i (everything the causal mask allows); the rest is filler. The padded rows are
    flattened and the first qlen entries dropped, which equals HF's view-and-drop-a-row without a reshape of a
    strided slice.
    """
    b, h, q, k = x.shape
    flat = F.pad(x, (1, 0)).reshape(b, h, q * (k + 1))  # [batch, heads, qlen * (klen + 1)]
    return flat[..., q:].reshape(b, h, q, k)


def _layer_norm32(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:  # fp32 in, fp32 out
    return F.layer_norm(x, x.shape[-1:], weight.float(), bias.float(), eps)


def reference(
    hidden: Tensor,  # [qlen, batch, d_model], the layer input
    mems: Tensor,  # [mlen, batch, d_model], mlen may be 0
    qkv_weight: Tensor,  # [3 * n_head * d_head, d_model], q, k, v stacked (qkv_net, no bias)
    r_weight: Tensor,  # [n_head * d_head, d_model] (r_net: W_k,R)
    r_w_bias: Tensor,  # [n_head, d_head], u
    r_r_bias: Tensor,  # [n_head, d_head], v
    o_weight: Tensor,  # [d_model, n_head * d_head] (o_net)
    ln_weight: Tensor,  # [d_model]
    ln_bias: Tensor,  # [d_model]
    n_head: int,
    d_head: int,
    mem_len: int,
    same_length: bool,
    clamp_len: int,
    pre_lnorm: bool,
    ln_eps: float,
) -> tuple[Tensor, Tensor]:  # [qlen, batch, d_model], [min(mem_len, mlen + qlen), batch, d_model]
    qlen, batch, d_model = hidden.shape
    mlen = mems.shape[0]
    klen = mlen + qlen
    dtype, hd = hidden.dtype, n_head * d_head

    cat = torch.cat([mems, hidden], dim=0)  # [klen, batch, d_model]
    inp = _layer_norm32(cat.float(), ln_weight, ln_bias, ln_eps).to(dtype) if pre_lnorm else cat
    w = qkv_weight.to(dtype)
    q = F.linear(inp[mlen:], w[:hd])  # [qlen, batch, hd]; HF projects q for the memory rows too, then drops them
    kv = F.linear(inp, w[hd:])  # [klen, batch, 2 * hd]
    q = q.view(qlen, batch, n_head, d_head).permute(1, 2, 0, 3)  # [batch, heads, qlen, d_head]
    k, v = kv.view(klen, batch, 2, n_head, d_head).permute(2, 1, 3, 0, 4).unbind(0)  # 2 x [batch, heads, klen, d_head]

    rel = distance_projections(klen, clamp_len, r_weight, dtype, hidden.device)  # [n_rel, hd], row d = distance d
    distance = torch.arange(klen - 1, -1, -1, device=hidden.device)  # of key m from the last query: klen - 1 - m
    distance = distance.clamp(max=clamp_len) if clamp_len > 0 else distance
    r_head = rel.index_select(0, distance).view(klen, n_head, d_head).permute(1, 2, 0)  # [heads, d_head, klen]

    content = torch.matmul(q + r_w_bias.to(dtype)[:, None], k.transpose(-1, -2))  # (a)+(c): [batch, heads, qlen, klen]
    position = rel_shift(torch.matmul(q + r_r_bias.to(dtype)[:, None], r_head))  # (b) + (d): [batch, heads, qlen, klen]
    scores = (content.float() + position.float()) * (1.0 / math.sqrt(d_head))  # fp32
    allowed = attention_allowed(qlen, mlen, mem_len, same_length, hidden.device)  # [qlen, klen]
    scores = scores.masked_fill(~allowed, torch.finfo(torch.float32).min)
    probs = torch.softmax(scores, dim=-1).to(dtype)  # [batch, heads, qlen, klen]
    attn = torch.matmul(probs, v).permute(2, 0, 1, 3).reshape(qlen, batch, hd)  # [qlen, batch, hd]
    attn = F.linear(attn, o_weight.to(dtype))  # [qlen, batch, d_model]

    residual = hidden.float() + attn.float()  # [qlen, batch, d_model] fp32
    out = residual if pre_lnorm else _layer_norm32(residual, ln_weight, ln_bias, ln_eps)
    keep = torch.sym_min(mem_len, klen)  # a SymInt under export: no guard on klen >= mem_len
    # The new memory gets its own storage: a view would keep all of cat alive from segment to segment.
    return out.to(dtype), cat[klen - keep :].clone()  # [min(mem_len, klen), batch, d_model]


rel_position_attention = torch.library.custom_op("trtformer::rel_position_attention", reference, mutates_args=())
OP = torch.ops.trtformer.rel_position_attention.default
# The plugin-form node and TensorRT plugin: the attention sublayer's output and the layer's new memory.
IDENTITY = OpIdentity.of(OP, "RelPositionAttention", ("output", "new_mem"))


@rel_position_attention.register_fake
def _(
    hidden, mems, qkv_weight, r_weight, r_w_bias, r_r_bias, o_weight, ln_weight, ln_bias,
    n_head, d_head, mem_len, same_length, clamp_len, pre_lnorm, ln_eps,
):  # fmt: skip
    _, batch, d_model = hidden.shape
    keep = torch.sym_min(mem_len, mems.shape[0] + hidden.shape[0])
    # Contiguous, as the eager body returns (empty_like would promise hidden's strides, which torch.compile checks).
    return hidden.new_empty(hidden.shape), hidden.new_empty((keep, batch, d_model))
