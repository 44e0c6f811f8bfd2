"""Longformer's sliding-window attention (per-head dilation, global tokens) as the custom op
`trtformer::sliding_window_attention`.

Semantics, for query i of a real (unmasked) token:
- a local (non-global) query attends to the band keys i + o * d for o in -w/2..w/2 (w = `window`, d = the head's
  dilation) that lie inside the sequence, are real and are not global, plus every global key; both parts use the
  local projections q, k, v and share one softmax;
- a global query attends to every real key with the global projections q_global, k_global, v_global;
- a padding query gets zeros (as transformers does).
This is transformers' LongformerSelfAttention with dilation added. transformers pads the sequence to a multiple of
the window; keys past the end are masked there, so the output at the input length does not depend on that padding,
and the op takes any length.

Memory is linear in the sequence: the band is computed in blocks of w/2 queries against their 3w/2 neighbouring keys
([.., seq, 3w/2] scores, reduced to [.., seq, w + 1]), and the global part in g slots ([.., seq, g] scores of every
query against the global keys, [.., g, seq] of the global queries against every key), where g is the largest number
of global tokens in a row of the batch, read from the mask. No [seq, seq] tensor exists; memory is O(seq * (w + g)),
and g needs no bound fixed in advance (all tokens global is full attention, quadratic by definition). Dilation d is
handled by splitting the sequence into the d interleaved subsequences of positions with the same remainder mod d,
where a dilated band is a plain band.

The op takes projected activations rather than hidden states and weights: the projections are ordinary GEMMs that
every backend already runs (and fuses into one QKV GEMM); the op, its Triton kernel and its TensorRT plugin then
share one signature of eight same-layout activations, and precision stays a matter of the ONNX graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .identity import OpIdentity

NAME = "trtformer::sliding_window_attention"
_MASKED = torch.finfo(torch.float32).min  # finite, so a row with nothing allowed stays NaN-free


def check_attributes(heads: int, window: int, dilations: list[int]) -> None:
    if window < 2 or window % 2:
        raise ValueError(f"window must be a positive even number (keys w/2 each side), got {window}")
    if len(dilations) != heads:
        raise ValueError(f"dilations has {len(dilations)} entries for {heads} heads")
    if any(d < 1 for d in dilations):
        raise ValueError(f"dilations must be >= 1, got {dilations}")


def check_shapes(q: torch.Tensor, others: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
    """Every activation shaped like q, every mask [batch, seq]. torch._check rather than `if`: when traced, the
    checks tell torch.export that the inputs share their batch and seq symbols."""
    torch._check(q.dim() == 4, lambda: "q must be [batch, heads, seq, head_dim]")
    for x in others:
        torch._check(x.dim() == 4, lambda: "k, v and the global q, k, v must be [batch, heads, seq, head_dim]")
        for axis in range(4):
            torch._check(x.shape[axis] == q.shape[axis], lambda: "q, k, v and the global q, k, v must share a shape")
    for mask in masks:
        torch._check(mask.dim() == 2, lambda: "the masks must be [batch, seq]")
        for axis in range(2):
            torch._check(mask.shape[axis] == q.shape[2 * axis], lambda: "the masks must be [batch, seq] of q")


def dilation_groups(dilations: list[int]) -> list[tuple[int, list[int]]]:
    """Heads grouped by dilation, in order of first appearance: [(dilation, [head, ...]), ...]."""
    groups: dict[int, list[int]] = {}
    for head, d in enumerate(dilations):
        groups.setdefault(d, []).append(head)
    return list(groups.items())


# ---------------------------------------------------------------------------------------------- band helpers
# A band row holds 2c + 1 = w + 1 scores, column j for the key at offset j - c. The helpers work on [B, m, e]
# sequences with m a multiple of c, in blocks of c queries whose keys lie in a context of 3c positions. Shapes are
# written out (no -1, no slicing back to a symbolic length, bmm rather than broadcasting matmul) so that torch.export
# can trace this code with a symbolic seq without guarding on its parity or on a block count of 1.


def _deinterleave(x: torch.Tensor, dilation: int, c: int) -> torch.Tensor:
    """[b, h, n, e] -> [b * h * dilation, m, e]: the subsequences of positions r, r + d, r + 2d, ... (m % c == 0).

    Slots past the end repeat the last token; band_allowed masks them as keys and their query rows are dropped.
    m holds one block more than needed, so that the block count is >= 2 for every n >= 1: torch.export then
    never meets a size that may be 1 and so never specialises on it.
    """
    b, h, n, e = x.shape
    m = ((n - 1) // (c * dilation) + 2) * c
    # One gather over the flattened rows; a 2-D -> 3-D split is the only reshape torch.export has to prove.
    position = torch.arange(m * dilation, device=x.device).reshape(m, dilation).t().clamp(max=n - 1)  # [d, m]
    rows = torch.arange(b * h, device=x.device).reshape(b * h, 1, 1) * n + position  # [b * h, d, m]
    return x.reshape(b * h * n, e).index_select(0, rows.reshape(b * h * dilation * m)).reshape(b * h * dilation, m, e)


def _interleave(x: torch.Tensor, b: int, n: int, dilation: int) -> torch.Tensor:
    """[b * h * dilation, m, e] -> [b, h, n, e], the inverse of _deinterleave."""
    bhd, m, e = x.shape
    position = torch.arange(n, device=x.device)
    index = position % dilation * m + position // dilation  # [n]
    return x.reshape(b, bhd // (b * dilation), dilation * m, e).index_select(2, index)


def _context(x: torch.Tensor, c: int) -> torch.Tensor:
    """[B, m, e] -> [B * m / c, e, 3c]: for block t the positions t*c - c .. t*c + 2c - 1, zeros outside."""
    big, m, e = x.shape
    return F.pad(x, (0, 0, c, c)).unfold(1, 3 * c, c).reshape(big * (m // c), e, 3 * c)


def _unskew(x: torch.Tensor, c: int) -> torch.Tensor:
    """[B, c, 3c] -> [B, c, 2c + 1]: out[r, j] = x[r, r + j], the band of each row (a pad and reshapes)."""
    big = x.shape[0]
    x = F.pad(x.reshape(big, 3 * c * c), (0, c))  # [B, c * (3c + 1)]
    return x.reshape(big, c, 3 * c + 1)[..., : 2 * c + 1]


def _skew(x: torch.Tensor, c: int) -> torch.Tensor:
    """[B, c, 2c + 1] -> [B, c, 3c] with out[r, r + j] = x[r, j] and zeros elsewhere; the inverse of _unskew."""
    big = x.shape[0]
    x = F.pad(x, (0, c)).reshape(big, c * (3 * c + 1))
    return x[:, : 3 * c * c].reshape(big, c, 3 * c)


def band_scores(q: torch.Tensor, k: torch.Tensor, c: int) -> torch.Tensor:
    """q, k [B, m, e] -> [B, m, 2c + 1]: q[i] . k[i + j - c] (0 outside the sequence)."""
    big, m, e = q.shape
    blocks = q.reshape(big * (m // c), c, e)
    scores = torch.bmm(blocks, _context(k, c))  # [B * m / c, c, 3c]
    return _unskew(scores, c).reshape(big, m, 2 * c + 1)


def band_values(p: torch.Tensor, v: torch.Tensor, c: int) -> torch.Tensor:
    """p [B, m, 2c + 1], v [B, m, e] -> [B, m, e]: sum_j p[i, j] v[i + j - c]."""
    big, m, e = v.shape
    blocks = _skew(p.reshape(big * (m // c), c, 2 * c + 1), c)  # [B * m / c, c, 3c]
    return torch.bmm(blocks, _context(v, c).transpose(1, 2)).reshape(big, m, e)


def band_allowed(allowed: torch.Tensor, c: int, dilation: int) -> torch.Tensor:
    """allowed [b, n] bool -> [b, 1, n, 2c + 1]: whether key i + (j - c) * dilation exists and is allowed."""
    n = allowed.shape[1]
    offsets = torch.arange(-c, c + 1, device=allowed.device) * dilation  # [2c + 1]
    idx = torch.arange(n, device=allowed.device)[:, None] + offsets  # [n, 2c + 1]
    inside = (idx >= 0) & (idx < n)
    return (allowed[:, idx.clamp(0, n - 1)] & inside)[:, None]


# ---------------------------------------------------------------------------------------------- global slots


def global_slots(is_global: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """is_global [b, n] bool -> (position [b, g], valid [b, g], slot [b, n]).

    g is the largest number of global tokens in a row (at least 1, so shapes never go empty). position[:, s] is the
    s-th global token of the row (in order), valid says which slots hold one, slot[:, i] is token i's slot (clamped,
    meaningful for global tokens only). g is read from the data: the one data-dependent size in the op.
    """
    count = is_global.sum(-1)  # [b]
    g = count.max().clamp(min=1).item()  # an unbacked size when traced
    torch._check(g >= 1)
    torch._check(g <= is_global.shape[1])
    # Distinct keys, globals first and each group in position order: top-k is then the ordered global positions
    # (TopK exports to ONNX with a data-dependent k; a stable sort does not).
    n = is_global.shape[1]
    rank = is_global.to(torch.int64) * n + (n - 1 - torch.arange(n, device=is_global.device))  # [b, n]
    position = torch.topk(rank, g, dim=-1).indices  # [b, g]
    valid = torch.arange(g, device=is_global.device) < count[:, None]  # [b, g]
    slot = (is_global.to(torch.int64).cumsum(-1) - 1).clamp(0, g - 1)  # [b, n]
    return position, valid, slot


def _heads(x: torch.Tensor, heads: list[int]) -> torch.Tensor:
    """x[:, heads] from slices rather than an index tensor, which would be a constant in a traced graph."""
    return x if heads == list(range(x.shape[1])) else torch.stack([x[:, i] for i in heads], dim=1)


def _joint_softmax(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(cat([a, b], -1)) returned as its two parts, without the concatenation (b's width is data-dependent)."""
    top = torch.maximum(a.amax(-1, keepdim=True), b.amax(-1, keepdim=True))
    ea, eb = torch.exp(a - top), torch.exp(b - top)
    total = ea.sum(-1, keepdim=True) + eb.sum(-1, keepdim=True)
    return ea / total, eb / total


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [b, h, n, e], index [b, g] -> x[b, :, index[b]]: [b, h, g, e]."""
    b, h, _, e = x.shape
    return x.gather(2, index[:, None, :, None].expand(b, h, index.shape[1], e))


# ---------------------------------------------------------------------------------------------- the op


def sliding_window_reference(
    q: torch.Tensor,  # [batch, heads, seq, head_dim]
    k: torch.Tensor,  # [batch, heads, seq, head_dim]
    v: torch.Tensor,  # [batch, heads, seq, head_dim]
    q_global: torch.Tensor,  # [batch, heads, seq, head_dim]
    k_global: torch.Tensor,  # [batch, heads, seq, head_dim]
    v_global: torch.Tensor,  # [batch, heads, seq, head_dim]
    key_padding_mask: torch.Tensor,  # [batch, seq], nonzero = real token
    global_mask: torch.Tensor,  # [batch, seq], nonzero = global token
    window: int,
    dilations: list[int],
    scale: float,
) -> torch.Tensor:  # [batch, heads, seq, head_dim]
    """The eager implementation of the op (see the module docstring); callable outside the op for tracing."""
    b, h, n, e = q.shape
    check_attributes(h, window, dilations)
    check_shapes(q, [k, v, q_global, k_global, v_global], [key_padding_mask, global_mask])
    c = window // 2
    real = key_padding_mask != 0  # [b, n]
    is_global = (global_mask != 0) & real  # [b, n]; a padding token is never global
    position, valid, slot = global_slots(is_global)  # [b, g], [b, g], [b, n]
    q = q * scale

    # Local queries: one softmax over the band (global keys excluded, they come as columns) and the global keys.
    band_ok = real & ~is_global  # [b, n]
    k_sel, v_sel = _take(k, position), _take(v, position)  # [b, h, g, e]
    groups = dilation_groups(dilations)
    per_head: dict[int, torch.Tensor] = {}  # head -> [b, n, e]
    for dilation, heads in groups:
        hq, hk, hv, hks, hvs = (_heads(x, heads) for x in (q, k, v, k_sel, v_sel))  # [b, hg, n | g, e]
        band = band_scores(_deinterleave(hq, dilation, c), _deinterleave(hk, dilation, c), c)  # [b*hg*d, m, w+1]
        band = _interleave(band, b, n, dilation).float()  # [b, hg, n, w + 1]
        band = band.masked_fill(~band_allowed(band_ok, c, dilation), _MASKED)
        cols = torch.matmul(hq, hks.transpose(-1, -2)).float()  # [b, hg, n, g]
        cols = cols.masked_fill(~valid[:, None, None, :], _MASKED)
        p_band, p_cols = _joint_softmax(band, cols)  # [b, hg, n, w + 1], [b, hg, n, g]
        p_band, p_cols = p_band.to(v.dtype), p_cols.to(v.dtype)
        local = band_values(_deinterleave(p_band, dilation, c), _deinterleave(hv, dilation, c), c)  # [b*hg*d, m, e]
        local = _interleave(local, b, n, dilation) + torch.matmul(p_cols, hvs)  # [b, hg, n, e]
        for head, out in zip(heads, local.unbind(1), strict=True):
            per_head[head] = out
    local = local if len(groups) == 1 else torch.stack([per_head[i] for i in range(h)], dim=1)  # [b, h, n, e]

    # Global queries: their own projections against every real key, computed for the g slots only.
    qg = _take(q_global, position) * scale  # [b, h, g, e]
    scores = torch.matmul(qg, k_global.transpose(-1, -2)).float()  # [b, h, g, n]
    scores = scores.masked_fill(~real[:, None, None, :], _MASKED)
    rows = torch.matmul(torch.softmax(scores, dim=-1).to(v.dtype), v_global)  # [b, h, g, e]
    rows = _take(rows, slot)  # [b, h, n, e], each global token's own slot

    out = torch.where(is_global[:, None, :, None], rows, local)  # [b, h, n, e]
    return out.masked_fill(~real[:, None, :, None], 0.0)


@torch.library.custom_op(NAME, mutates_args=())
def sliding_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_global: torch.Tensor,
    k_global: torch.Tensor,
    v_global: torch.Tensor,
    key_padding_mask: torch.Tensor,
    global_mask: torch.Tensor,
    window: int,
    dilations: list[int],
    scale: float,
) -> torch.Tensor:
    """Sliding-window attention with per-head dilation and global tokens: [batch, heads, seq, head_dim]."""
    return sliding_window_reference(
        q, k, v, q_global, k_global, v_global, key_padding_mask, global_mask, window, dilations, scale
    )


@sliding_window_attention.register_fake
def _(q, k, v, q_global, k_global, v_global, key_padding_mask, global_mask, window, dilations, scale):
    check_attributes(q.shape[1], window, dilations)
    return v.new_empty(v.shape)  # contiguous, as the eager body returns: empty_like would promise v's strides


OP = torch.ops.trtformer.sliding_window_attention.default  # the overload ExportedPrograms call
IDENTITY = OpIdentity.of(OP, "SlidingWindowAttention", ("output",))  # the plugin-form node and TensorRT plugin
