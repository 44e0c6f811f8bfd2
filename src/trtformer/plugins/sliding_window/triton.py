"""`trtformer::sliding_window_attention` with Triton kernels: one for the local queries, one for the global queries.
Importing this module provides it as the op's CUDA kernel inside `triton_kernels()` (ops/dispatch.py); elsewhere, and
on CPU, the op keeps the eager reference.

Split of the work:
- torch, O(batch * seq) and no host sync: `token_kinds` codes each token as padding, local or global (int8) and lists
  each row's global positions in order ([batch, seq + 1] int32, so no data-dependent size is read back) with their
  count.
- `_local_kernel`, one program per (block of queries of one dilation residue, batch * head). A dilated band is a
  plain band on the subsequence of positions r, r + d, r + 2d, ... (as in the eager op), so a program takes
  BLOCK_M queries of one residue r and scans only that residue's keys t - w/2 .. t + w/2 (t = index in the
  subsequence), loaded with stride d: no work on the keys the dilation skips. The same online softmax (fp32
  statistics) then continues over the row's global keys, read through the position list: one joint softmax of the
  band and the global columns, as in the reference. A global key is excluded from the band (it comes as a column).
  Padding queries get zeros; global queries' rows are left to the other kernel.
- `_global_kernel`, one program per (block of global slots, batch * head): the slot's query against every real key
  with the global projections, written to the slot's position. Slots past the row's count do nothing.
No [seq, seq] tensor exists: memory is O(batch * seq) besides the inputs and the output, and the work is
O(seq * (w + g) + g * seq) per head.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from ...ops import dispatch
from ...ops.sliding_window import OP, check_attributes, check_shapes, sliding_window_reference

# What the reference's masked_fill writes. Finite, so a tile with nothing allowed gives no NaN (-inf - -inf); a real
# score later resets the sums through alpha = exp2(FILL - s) = 0.
FILL = tl.constexpr(torch.finfo(torch.float32).min)
LOG2E = tl.constexpr(math.log2(math.e))
PADDING, LOCAL, GLOBAL = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)  # token kinds (kind codes)
DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # bf16 for the op's CUDA dispatch; the plugin takes fp32/fp16


@triton.jit
def _attend(q, K, V, sk_n, sv_n, pos_k, key_ok, allowed, offs_d, d_ok, m_i, l_i, acc, PRECISION: tl.constexpr):
    """One online-softmax step: q [BLOCK_M, BLOCK_D] (already scaled) against the keys at pos_k [BLOCK_N] of the head
    at K, V; `allowed` ([BLOCK_M or 1, BLOCK_N]) masks scores, key_ok says which columns are keys at all."""
    k = tl.load(K + pos_k[None, :] * sk_n + offs_d[:, None], mask=key_ok[None, :] & d_ok[:, None], other=0.0)
    s = tl.dot(q, k, input_precision=PRECISION) * LOG2E  # [BLOCK_M, BLOCK_N] fp32, in base 2 for exp2
    s = tl.where(allowed, s, FILL)
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    v = tl.load(V + pos_k[:, None] * sv_n + offs_d[None, :], mask=key_ok[:, None] & d_ok[None, :], other=0.0)
    # probabilities rounded to the input dtype before the product with v, as in the reference
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return m_new, l_i, acc


@triton.jit
def _load_query(Q, pos_q, q_ok, sq_n, offs_d, d_ok, scale):
    q = tl.load(Q + pos_q[:, None] * sq_n + offs_d[None, :], mask=q_ok[:, None] & d_ok[None, :], other=0.0)
    return (q.to(tl.float32) * scale).to(q.dtype)  # rounded like the reference's q * scale in the input dtype


# Lengths vary from call to call: no value specialisation (1 would become a constexpr and recompile).
@triton.jit(do_not_specialize=["n", "half", "g_stride"])
def _local_kernel(
    Q, K, V, Out, Kind, GPos, GCount, Dil,  # [b, h, n, e] x 4 (any strides, last dim 1), [b, n], [b, g_stride], [b], [h]
    sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, so_b, so_h, so_n,
    n, n_head, head_dim, half, g_stride, scale,  # half = w / 2
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,  # "ieee" for fp32 inputs: tl.dot would otherwise use tf32 where torch's matmul does not
):  # fmt: skip
    b = (tl.program_id(1) // n_head).to(tl.int64)
    h = tl.program_id(1) % n_head
    d = tl.load(Dil + h)
    per_residue = tl.cdiv(tl.cdiv(n, d), BLOCK_M)  # query blocks of the longest subsequence (residue 0)
    r = tl.program_id(0) // per_residue  # the grid covers the largest dilation: r >= d is no work for this head
    start = tl.program_id(0) % per_residue * BLOCK_M
    length = tl.where(r < d, tl.cdiv(tl.maximum(n - r, 0), d), 0)  # positions r, r + d, ... below n

    offs_t = start + tl.arange(0, BLOCK_M)  # query indices in the subsequence
    q_ok = offs_t < length
    pos_q = r + offs_t * d
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim  # head_dim need not be a power of two
    q = _load_query(Q + b * sq_b + h * sq_h, pos_q, q_ok, sq_n, offs_d, d_ok, scale)
    K = K + b * sk_b + h * sk_h
    V = V + b * sv_b + h * sv_h
    Kind = Kind + b * n
    m_i = tl.full([BLOCK_M], FILL, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # The band: keys t - half .. t + half of the same subsequence that are real and not global.
    lo = tl.maximum(start - half, 0)
    hi = tl.minimum(start + BLOCK_M + half, length)
    for t0 in range(lo, hi, BLOCK_N):
        offs_k = t0 + tl.arange(0, BLOCK_N)
        key_ok = offs_k < hi
        pos_k = r + offs_k * d
        local = tl.load(Kind + pos_k, mask=key_ok, other=PADDING) == LOCAL
        dist = offs_k[None, :] - offs_t[:, None]
        allowed = local[None, :] & (dist <= half) & (dist >= -half)
        m_i, l_i, acc = _attend(q, K, V, sk_n, sv_n, pos_k, key_ok, allowed, offs_d, d_ok, m_i, l_i, acc, PRECISION)

    # Every global key of the row, continuing the same softmax (skipped by a block without queries).
    count = tl.where(start < length, tl.load(GCount + b), 0)
    for g0 in range(0, count, BLOCK_N):
        slots = g0 + tl.arange(0, BLOCK_N)
        key_ok = slots < count
        pos_k = tl.load(GPos + b * g_stride + slots, mask=key_ok, other=0)
        m_i, l_i, acc = _attend(q, K, V, sk_n, sv_n, pos_k, key_ok, key_ok[None, :], offs_d, d_ok, m_i, l_i, acc,
                                PRECISION)  # fmt: skip

    kind = tl.load(Kind + pos_q, mask=q_ok, other=PADDING)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    out = tl.where((kind == LOCAL)[:, None], out, 0.0)  # padding queries: zeros
    o_ptrs = Out + b * so_b + h * so_h + pos_q[:, None] * so_n + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=(q_ok & (kind != GLOBAL))[:, None] & d_ok[None, :])


@triton.jit(do_not_specialize=["n", "g_stride"])
def _global_kernel(
    Q, K, V, Out, Kind, GPos, GCount,  # the global projections q_global, k_global, v_global
    sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, so_b, so_h, so_n,
    n, n_head, head_dim, g_stride, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    b = (tl.program_id(1) // n_head).to(tl.int64)
    h = tl.program_id(1) % n_head
    count = tl.load(GCount + b)
    start = tl.program_id(0) * BLOCK_M
    slots = start + tl.arange(0, BLOCK_M)
    q_ok = slots < count
    pos_q = tl.load(GPos + b * g_stride + slots, mask=q_ok, other=0)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    q = _load_query(Q + b * sq_b + h * sq_h, pos_q, q_ok, sq_n, offs_d, d_ok, scale)
    K = K + b * sk_b + h * sk_h
    V = V + b * sv_b + h * sv_h
    m_i = tl.full([BLOCK_M], FILL, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    hi = tl.where(start < count, n, 0)  # a block of empty slots scans nothing
    for k0 in range(0, hi, BLOCK_N):
        pos_k = k0 + tl.arange(0, BLOCK_N)
        key_ok = pos_k < n
        real = tl.load(Kind + b * n + pos_k, mask=key_ok, other=PADDING) != PADDING
        m_i, l_i, acc = _attend(q, K, V, sk_n, sv_n, pos_k, key_ok, real[None, :], offs_d, d_ok, m_i, l_i, acc,
                                PRECISION)  # fmt: skip

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    o_ptrs = Out + b * so_b + h * so_h + pos_q[:, None] * so_n + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=q_ok[:, None] & d_ok[None, :])


def block_sizes(head_dim: int, dtype: torch.dtype, device: torch.device) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages). tl.dot needs every dimension >= 16.

    A query block of the band scans BLOCK_M + w keys for the BLOCK_M * (w + 1) scores it needs: at w = 512, 32 and 64
    query rows waste about 6 % and 12 %. Shared memory, from compiling for sm_90 ahead of time (no band tile as in
    rel_position, so less of it): fp32 29 KB at head_dim 64 and 53 KB at 128, fp16 16 KB and 33 KB, under the 99 KB
    of the smallest GPUs in view. Not tuned for speed on a GPU yet.
    """
    block_d = max(16, triton.next_power_of_2(head_dim))
    if device.type != "cuda":  # the interpreter: small tiles, so small test sizes still cross block edges
        return 16, 16, block_d, 1, 1
    if dtype == torch.float32:  # the parity path
        return 32, 32, block_d, 4, 2
    return 64, 64, block_d, 4 if block_d <= 64 else 8, 2


def token_kinds(key_padding_mask: Tensor, global_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Masks [b, n] (any dtype, nonzero = true) -> kind [b, n] int8 (0 padding, 1 local, 2 global), position
    [b, n + 1] int32 (the row's global tokens in order from slot 0) and count [b] int32 (how many slots hold one).

    The position list is as wide as the sequence rather than the largest count, so nothing is read back to the host
    (enqueue stays sync-free); the kernels read `count` on the device.
    """
    real = key_padding_mask != 0
    is_global = (global_mask != 0) & real  # a padding token is never global
    b, n = real.shape
    kind = (real.to(torch.int8) + is_global.to(torch.int8)).contiguous()
    slot = torch.where(is_global, is_global.cumsum(-1) - 1, n)  # [b, n]; other tokens all land in the spare column n
    position = torch.zeros(b, n + 1, dtype=torch.int32, device=real.device)
    position.scatter_(1, slot, torch.arange(n, dtype=torch.int32, device=real.device).expand(b, n))
    return kind, position, is_global.sum(-1, dtype=torch.int32)


@functools.cache
def _dilation_tensor(dilations: tuple[int, ...], device: torch.device) -> Tensor:
    """One device copy per (dilations, device): no host-to-device copy on every call (enqueue stays async).

    A host-to-device copy cannot be captured in a CUDA graph: the TensorRT plugin makes this copy when an execution
    context takes it (`prepare`), so a captured enqueue finds it here."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(f"the device copy of dilations {list(dilations)} would be made inside a CUDA graph capture; "
                           "call prepare() before capturing")
    return torch.tensor(dilations, dtype=torch.int32, device=device)


def prepare(attrs: dict, device: torch.device) -> None:
    """Make what a call with `attrs` on `device` needs ahead of time (the TensorRT plugin's attach_to_context)."""
    _dilation_tensor(tuple(attrs["dilations"]), device)


def _strides(*tensors: Tensor) -> list[int]:
    return [s for x in tensors for s in x.stride()[:3]]


def sliding_window_attention_into(
    q: Tensor, k: Tensor, v: Tensor, q_global: Tensor, k_global: Tensor, v_global: Tensor,
    key_padding_mask: Tensor, global_mask: Tensor, window: int, dilations: list[int], scale: float, out: Tensor,
) -> None:  # fmt: skip
    """The op, writing into `out` ([batch, heads, seq, head_dim], any strides with a unit last one).

    The TensorRT plugin passes its output buffer here, so the output is not copied.
    """
    b, h, n, e = q.shape
    check_attributes(h, window, dilations)
    check_shapes(q, [k, v, q_global, k_global, v_global], [key_padding_mask, global_mask])
    if q.dtype not in DTYPES:
        raise TypeError(f"the Triton sliding-window kernel takes {DTYPES}, got {q.dtype}")
    if out.numel() == 0:
        return
    q, k, v, qg, kg, vg = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v, q_global, k_global, v_global))
    kind, position, count = token_kinds(key_padding_mask, global_mask)
    dil = _dilation_tensor(tuple(dilations), q.device)
    block_m, block_n, block_d, warps, stages = block_sizes(e, q.dtype, q.device)
    common = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, PRECISION="ieee" if q.dtype == torch.float32
                  else "tf32", num_warps=warps, num_stages=stages)  # fmt: skip

    # Residue r of dilation d has cdiv(n - r, d) queries: d * cdiv(cdiv(n, d), BLOCK_M) blocks cover a head.
    blocks = max(d * triton.cdiv(triton.cdiv(n, d), block_m) for d in set(dilations))
    _local_kernel[(blocks, b * h)](
        q, k, v, out, kind, position, count, dil, *_strides(q, k, v, out), n, h, e, window // 2, n + 1, scale, **common
    )
    # Launched for every slot the list could hold; blocks past a row's count scan and store nothing.
    _global_kernel[(triton.cdiv(n, block_m), b * h)](
        qg, kg, vg, out, kind, position, count, *_strides(qg, kg, vg, out), n, h, e, n + 1, scale, **common
    )


def sliding_window_attention_triton(
    q: Tensor, k: Tensor, v: Tensor, q_global: Tensor, k_global: Tensor, v_global: Tensor,
    key_padding_mask: Tensor, global_mask: Tensor, window: int, dilations: list[int], scale: float,
) -> Tensor:  # [batch, heads, seq, head_dim]  # fmt: skip
    """The op's signature and output, computed with the Triton kernels."""
    out = v.new_empty(v.shape)  # contiguous, as the op's fake implementation promises
    if out.stride(-1) != 1:
        out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    sliding_window_attention_into(q, k, v, q_global, k_global, v_global, key_padding_mask, global_mask, window,
                                  dilations, scale, out)  # fmt: skip
    return out


# The op's CUDA kernel inside plugins.registry.triton_kernels(); the eager reference elsewhere.
dispatch.provide(OP, sliding_window_attention_triton, sliding_window_reference)
