"""`trtformer::sliding_window_attention` with Triton kernels: one for the local queries, one for the global queries.
Importing this module provides it as the op's CUDA kernel inside `triton_kernels()` (ops/dispatch.py); elsewhere, and
on CPU, the op keeps the eager reference.

Split of the work:
- `_kinds_kernel` (`token_kinds`), one program per batch row, O(seq) and no host sync: codes each token as padding,
  local or global (int8) and lists the row's global positions in order ([batch, seq + 1] int32, so no
  data-dependent size is read back) with their count.
- `_local_kernel`, one program per (block of queries of one dilation residue, batch * head). A dilated band is a
  plain band on the subsequence of positions r, r + d, r + 2d, ... (as in the eager op), so a program takes
  BLOCK_M queries of one residue r and scans only that residue's keys t - w/2 .. t + w/2 (t = index in the
  subsequence), loaded with stride d: no work on the keys the dilation skips. The same online softmax (fp32
  statistics) then continues over the row's global keys, read through the position list: one joint softmax of the
  band and the global columns, as in the reference. A global key is excluded from the band (it comes as a column).
  Padding queries get zeros; global queries' rows are left to the other kernel.
- `_global_kernel`: each global slot's query against every real key with the global projections, written to the
  slot's position. The first GLOBAL_ROWS slots (a model's few global tokens) scan the keys split over programs
  (split-K), their partial softmax states merged by triton_common's `_combine_kernel`; later slot blocks go unsplit
  to a few more programs. Slots past the row's count do nothing.
Launch configs come from a small space per head size and dtype, timed on a shape bucket's first CUDA call (`Tuner`):
warm a shape up before capturing it in a CUDA graph (a capture runs the default config untimed).
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

# split-K and tuning, as the rel-position kernel does them
from ..triton_common import COMBINE_ROWS, Config, Tuner, _combine_kernel, bucket, split_count, store_partials

# What the reference's masked_fill writes. Finite, so a tile with nothing allowed gives no NaN (-inf - -inf); a real
# score later resets the sums through alpha = exp2(FILL - s) = 0.
FILL = tl.constexpr(torch.finfo(torch.float32).min)
LOG2E = tl.constexpr(math.log2(math.e))
PADDING, LOCAL, GLOBAL = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)  # token kinds (kind codes)
GLOBAL_COLS = tl.constexpr(16)  # global keys per tile in the local kernel (tl.dot's least)
GLOBAL_ROWS = 16  # global queries per block in the global kernel: a model has a few, often 1 to 3
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

    # Every global key of the row, continuing the same softmax (skipped by a block without queries), in tiles of
    # GLOBAL_COLS: a model has a few global tokens, and a BLOCK_N-wide tile for one key would cost a band tile.
    count = tl.where(start < length, tl.load(GCount + b), 0)
    for g0 in range(0, count, GLOBAL_COLS):
        slots = g0 + tl.arange(0, GLOBAL_COLS)
        key_ok = slots < count
        pos_k = tl.load(GPos + b * g_stride + slots, mask=key_ok, other=0)
        m_i, l_i, acc = _attend(q, K, V, sk_n, sv_n, pos_k, key_ok, key_ok[None, :], offs_d, d_ok, m_i, l_i, acc,
                                PRECISION)  # fmt: skip

    kind = tl.load(Kind + pos_q, mask=q_ok, other=PADDING)
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    out = tl.where((kind == LOCAL)[:, None], out, 0.0)  # padding queries: zeros
    o_ptrs = Out + b * so_b + h * so_h + pos_q[:, None] * so_n + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=(q_ok & (kind != GLOBAL))[:, None] & d_ok[None, :])


@triton.jit
def _global_rows(Q, K, V, Kind, GPos, b, slot0, count, lo, hi, sq_n, sk_n, sv_n, n, g_stride, head_dim, scale,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr):  # fmt: skip
    """Global slots slot0 .. slot0 + BLOCK_M (those < count) against the real keys lo .. hi: the softmax state."""
    slots = slot0 + tl.arange(0, BLOCK_M)
    q_ok = slots < count
    pos_q = tl.load(GPos + b * g_stride + slots, mask=q_ok, other=0)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < head_dim
    q = _load_query(Q, pos_q, q_ok, sq_n, offs_d, d_ok, scale)
    m_i = tl.full([BLOCK_M], FILL, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for k0 in range(lo, hi, BLOCK_N):
        pos_k = k0 + tl.arange(0, BLOCK_N)
        key_ok = pos_k < hi
        real = tl.load(Kind + b * n + pos_k, mask=key_ok, other=PADDING) != PADDING
        m_i, l_i, acc = _attend(q, K, V, sk_n, sv_n, pos_k, key_ok, real[None, :], offs_d, d_ok, m_i, l_i, acc,
                                PRECISION)  # fmt: skip
    return slots, q_ok, pos_q, offs_d, d_ok, m_i, l_i, acc


@triton.jit(do_not_specialize=["n", "g_stride", "n_split"])
def _global_kernel(
    Q, K, V, Out, Kind, GPos, GCount,  # the global projections q_global, k_global, v_global
    ML, Acc,  # split-K partials of slot block 0, fp32: [n_split, b * h, 2, BLOCK_M], [n_split, b * h, BLOCK_M, e]
    sq_b, sq_h, sq_n, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, so_b, so_h, so_n,
    n, n_head, head_dim, g_stride, scale, n_split,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
):  # fmt: skip
    """Programs 0 .. n_split - 1: the first BLOCK_M global slots against one share of the keys each (all keys when
    n_split is 1); the programs after them: the later slot blocks, each against all keys, taking every
    (programs - n_split)th block. One program per head scanning all seq keys in a row was the old kernel's critical
    path (seq 4096: 64 key tiles one after the other, beside ~10 per program of the local kernel)."""
    b = (tl.program_id(1) // n_head).to(tl.int64)
    h = tl.program_id(1) % n_head
    pid = tl.program_id(0)
    count = tl.load(GCount + b)
    Q = Q + b * sq_b + h * sq_h
    K = K + b * sk_b + h * sk_h
    V = V + b * sv_b + h * sv_h
    Out = Out + b * so_b + h * so_h
    if pid < n_split:
        per_split = tl.cdiv(tl.cdiv(n, BLOCK_N), n_split) * BLOCK_N
        lo = pid * per_split
        hi = tl.where(count > 0, tl.minimum(n, lo + per_split), lo)  # no global token: nothing to scan
        slots, q_ok, pos_q, offs_d, d_ok, m_i, l_i, acc = _global_rows(
            Q, K, V, Kind, GPos, b, 0, count, lo, hi, sq_n, sk_n, sv_n, n, g_stride, head_dim, scale,
            BLOCK_M, BLOCK_N, BLOCK_D, PRECISION)  # fmt: skip
        if SPLIT:
            part = pid * tl.num_programs(1) + tl.program_id(1)
            store_partials(ML, Acc, part, BLOCK_M, head_dim, slots, q_ok, offs_d, d_ok, m_i, l_i, acc)
        else:
            _store_rows(Out, pos_q, q_ok, so_n, offs_d, d_ok, l_i, acc)
    else:
        for block in range(1 + pid - n_split, tl.cdiv(count, BLOCK_M), tl.num_programs(0) - n_split):
            slots, q_ok, pos_q, offs_d, d_ok, m_i, l_i, acc = _global_rows(
                Q, K, V, Kind, GPos, b, block * BLOCK_M, count, 0, n, sq_n, sk_n, sv_n, n, g_stride, head_dim, scale,
                BLOCK_M, BLOCK_N, BLOCK_D, PRECISION)  # fmt: skip
            _store_rows(Out, pos_q, q_ok, so_n, offs_d, d_ok, l_i, acc)


@triton.jit
def _store_rows(Out, pos_q, q_ok, so_n, offs_d, d_ok, l_i, acc):
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    o_ptrs = Out + pos_q[:, None] * so_n + offs_d[None, :]
    tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=q_ok[:, None] & d_ok[None, :])


@triton.jit(do_not_specialize=["n"])
def _kinds_kernel(Real, Glob, Kind, GPos, GCount, n, BLOCK: tl.constexpr):
    """token_kinds for batch row program_id(0), in one pass over chunks of BLOCK positions: `seen` globals so far is
    the slot of the next one."""
    b = tl.program_id(0).to(tl.int64)
    seen = tl.full([], 0, tl.int32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < n
        real = tl.load(Real + b * n + offs, mask=ok, other=0) != 0
        glob = (tl.load(Glob + b * n + offs, mask=ok, other=0) != 0) & real  # a padding token is never global
        tl.store(Kind + b * n + offs, real.to(tl.int8) + glob.to(tl.int8), mask=ok)
        is_global = glob.to(tl.int32)
        tl.store(GPos + b * (n + 1) + seen + tl.cumsum(is_global, 0) - 1, offs, mask=glob)
        seen += tl.sum(is_global, 0)
    tl.store(GCount + b, seen)


# The interpreter: small tiles, so small test sizes still cross block edges. `fill` sets the global kernel's split:
# tests raise INTERPRETER_SMS (a stand-in SM count) and lower MIN_SPLIT_TILES to force it on CPU tensors.
INTERPRETED = Config(16, 16, 1, 1, 1)
INTERPRETER_SMS = 1
MIN_SPLIT_TILES = 2

# Tuned per shape bucket on CUDA (triton_common's Tuner), the first the default. Each compiled for sm_90 with a launch's
# alignment hints (the tests check all): shared memory under 99 KB, no register spills; registers per thread of the
# local kernel / shared memory noted (65536 registers and 228 KB an H100/H200 SM). A query block of the band scans
# BLOCK_M + w keys for the BLOCK_M * (w + 1) scores it needs: at w = 512, 64 and 128 rows waste about 12 % and 25 %.
# s4096 with 12 heads: 768 programs of 64 rows (2 an SM at 4 warps) or 384 of 128 (1 an SM at 8 warps), ~3 waves.
CONFIGS_16 = {
    64: [Config(64, 64, 4, 2, 2),  # 168 / 40 KB
         Config(64, 64, 4, 3, 2),  # 56 KB
         Config(128, 64, 8, 2, 2),  # 217 / 48 KB
         Config(128, 64, 8, 3, 2),  # 64 KB
         Config(64, 32, 4, 2, 2),  # 24 KB
         Config(64, 64, 4, 2, 4)],
    128: [Config(64, 32, 4, 2, 2),  # 203 / 48 KB
          Config(64, 64, 8, 2, 2),  # 226 / 80 KB
          Config(128, 64, 8, 2, 2),  # 252 / 96 KB
          Config(64, 64, 4, 2, 2)],  # 254 / 80 KB
}  # fmt: skip
CONFIGS_32 = {  # fp32, the parity path (ieee dots on the FMA units): the old 32 x 32 tiles spilled 656 B at 128
    64: [Config(32, 32, 4, 2, 2),  # 190 / 28 KB
         Config(32, 32, 4, 3, 2),  # 95 / 44 KB
         Config(64, 32, 8, 2, 2)],  # 164 / 40 KB
    128: [Config(16, 16, 4, 2, 2),  # 72 / 25 KB
          Config(16, 16, 4, 2, 4)],
}  # fmt: skip
TUNER = Tuner()


def configs(head_dim: int, dtype: torch.dtype, device: torch.device) -> list[Config]:
    """The config space the tuner times for this head size and dtype; one fixed config off CUDA."""
    if device.type != "cuda":
        return [INTERPRETED]
    space = CONFIGS_32 if dtype == torch.float32 else CONFIGS_16
    return space[64 if triton.next_power_of_2(head_dim) <= 64 else 128]


def block_sizes(head_dim: int, dtype: torch.dtype, device: torch.device) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages) of the default config. tl.dot needs every dimension >= 16."""
    c = configs(head_dim, dtype, device)[0]
    return c.block_m, c.block_n, max(16, triton.next_power_of_2(head_dim)), c.num_warps, c.num_stages


def global_launch(config: Config, dtype: torch.dtype) -> dict:
    """Warps and stages of the global kernel: its tiles have GLOBAL_ROWS rows, 4 warps are plenty; fp32 with 2 stages
    spilled (sm_90, 32-key tiles)."""
    return {"num_warps": 4, "num_stages": 1 if dtype == torch.float32 else config.num_stages}


def global_splits(config: Config, n: int, bh: int, device: torch.device) -> int:
    """Key shares of the first global slot block: one program per head would scan all n keys in a row."""
    return split_count(config, n, bh, device, INTERPRETER_SMS, MIN_SPLIT_TILES)


def token_kinds(key_padding_mask: Tensor, global_mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Masks [b, n] (any dtype, nonzero = true) -> kind [b, n] int8 (0 padding, 1 local, 2 global), position
    [b, n + 1] int32 (the row's global tokens in order from slot 0; slots past the count are undefined) and count [b]
    int32 (how many slots hold one).

    One launch (the torch ops it replaces were 13, their launch time beside a 40 us kernel budget). The position list
    is as wide as the sequence rather than the largest count, so nothing is read back to the host (enqueue stays
    sync-free); the kernels read `count` on the device and never a slot past it.
    """
    b, n = key_padding_mask.shape
    device = key_padding_mask.device
    kind = torch.empty(b, n, dtype=torch.int8, device=device)
    position = torch.empty(b, n + 1, dtype=torch.int32, device=device)
    count = torch.empty(b, dtype=torch.int32, device=device)
    if b and n:
        _kinds_kernel[(b,)](key_padding_mask.contiguous(), global_mask.contiguous(), kind, position, count, n,
                            BLOCK=min(1024, triton.next_power_of_2(n)))  # fmt: skip
    else:
        count.zero_()
    return kind, position, count


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
    args = (q, k, v, qg, kg, vg, key_padding_mask, global_mask, window, dilations, scale, out)
    space = configs(e, q.dtype, q.device)
    _launch(TUNER.pick(_tuning_key(q, window, dilations), space, lambda c: _launch(c, *args)), *args)


def plan(q: Tensor, window: int, dilations: list[int]) -> tuple[Config, int]:
    """The config sliding_window_attention_into runs for these shapes (the tuned one once the bucket is tuned) and the
    global kernel's split count."""
    b, h, n, e = q.shape
    config = TUNER.best.get(_tuning_key(q, window, dilations), configs(e, q.dtype, q.device)[0])
    return config, global_splits(config, n, b * h, q.device)


def _tuning_key(q: Tensor, window: int, dilations: list[int]) -> tuple:
    """Head size, dtype, buckets of seq and batch * heads, and the attributes that shape the band (fixed per model)."""
    b, h, n, e = q.shape
    return (e, q.dtype, *bucket(n, b * h), window, max(dilations))


def _launch(config: Config, q: Tensor, k: Tensor, v: Tensor, qg: Tensor, kg: Tensor, vg: Tensor,
            key_padding_mask: Tensor, global_mask: Tensor, window: int, dilations: list[int], scale: float,
            out: Tensor) -> None:  # fmt: skip
    b, h, n, e = q.shape
    kind, position, count = token_kinds(key_padding_mask, global_mask)
    dil = _dilation_tensor(tuple(dilations), q.device)
    block_m, block_d = config.block_m, max(16, triton.next_power_of_2(e))
    common = dict(BLOCK_N=config.block_n, BLOCK_D=block_d, PRECISION="ieee" if q.dtype == torch.float32 else "tf32")

    # Residue r of dilation d has cdiv(n - r, d) queries: d * cdiv(cdiv(n, d), BLOCK_M) blocks cover a head.
    blocks = max(d * triton.cdiv(triton.cdiv(n, d), block_m) for d in set(dilations))
    _local_kernel[(blocks, b * h)](
        q, k, v, out, kind, position, count, dil, *_strides(q, k, v, out), n, h, e, window // 2, n + 1, scale,
        BLOCK_M=block_m, num_warps=config.num_warps, num_stages=config.num_stages, **common,
    )  # fmt: skip
    # Global rows: the first slot block split over the keys, the later ones (rare: > 16 global tokens) after them,
    # each by one of up to 16 more programs; programs past a row's count scan and store nothing.
    splits = global_splits(config, n, b * h, q.device)
    ml = acc = out  # unused without a split
    if splits > 1:
        ml = torch.empty(splits, b * h, 2, GLOBAL_ROWS, dtype=torch.float32, device=q.device)
        acc = torch.empty(splits, b * h, GLOBAL_ROWS, e, dtype=torch.float32, device=q.device)
    later = min(16, triton.cdiv(n, GLOBAL_ROWS) - 1)
    _global_kernel[(splits + later, b * h)](
        qg, kg, vg, out, kind, position, count, ml, acc, *_strides(qg, kg, vg, out), n, h, e, n + 1, scale, splits,
        BLOCK_M=GLOBAL_ROWS, SPLIT=splits > 1, **global_launch(config, q.dtype), **common,
    )  # fmt: skip
    if splits > 1:
        _combine_kernel[(triton.cdiv(GLOBAL_ROWS, COMBINE_ROWS), b * h)](
            ml, acc, out, position, count, out.stride(0), out.stride(1), out.stride(2), n + 1, GLOBAL_ROWS, splits, h, e,
            BLOCK_M=COMBINE_ROWS, BLOCK_D=block_d, GATHER=True,
        )  # fmt: skip


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
