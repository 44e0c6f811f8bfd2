"""`trtformer::rel_position_attention` with Triton kernels: one flash-attention kernel for the core, one copy kernel
for the memory update. Importing this module provides it as the op's CUDA kernel inside `triton_kernels()`
(ops/dispatch.py); elsewhere, and on CPU, the op keeps the eager reference.

Split of the work:
- torch (cuBLAS on GPU): the q, k/v, r_net and o_net projections, the residual and the LayerNorm epilogue. The
  LayerNorm normalises over d_model, i.e. over all heads, which a per-(batch, head) attention program does not see.
- `_attention_kernel`, one program per (query block, batch * head): the content term (q + u) . k and the position
  term (q + v) . P[d] for the distance d = mlen + i - j, online softmax over key blocks with fp32 statistics, the
  memory-aware causal mask, same_length and clamp_len. No [qlen, klen] matrix exists: P is indexed by distance
  (row d = W_r R(d); clamp_len caps the row index), and for a (BLOCK_M x BLOCK_N) tile the distances span one band
  of BLOCK_M + BLOCK_N - 1 rows. One tl.dot scores every query row against the band, and tl.gather picks, per
  row i, the column of distance mlen + i - j: the rel-shift as index arithmetic on a tile in registers.
- Split-K: a short segment gives too few (query block, batch * head) programs to fill the GPU (q 128, batch 1, 8
  heads: 16 to 32 of them on 132 SMs, each over up to 27 key tiles in a row). The key range of each block is then
  split over programs that write partial softmax states (m, l, acc) in fp32; `_combine_kernel` merges them.
- Launch configs (tiles, warps, stages, split fill) come from a small space per head size and dtype, timed on a shape
  bucket's first CUDA call (`Tuner`): warm a shape up before capturing it in a CUDA graph.
- `_memory_kernel`: new_mem[r] = [mems ; hidden][klen - keep + r], each row read from whichever input holds it, so
  the new memory is written once, without a concatenation.
The k/v projection also avoids the concatenation: both parts are written into one [klen, batch, 2 * hd] buffer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
import triton.testing
from torch import Tensor

from ...ops import dispatch
from ...ops.rel_position import OP, _layer_norm32, distance_projections, reference
from ..triton_common import COMBINE_ROWS, Config, Tuner, _combine_kernel, bucket, split_count, store_partials

# What the reference's masked_fill writes; with it a fully masked row averages all keys, as there.
FILL = tl.constexpr(torch.finfo(torch.float32).min)


# Lengths vary from call to call: no value specialisation (1 would become a constexpr and recompile).
@triton.jit(do_not_specialize=["qlen", "klen", "mlen", "window", "n_rel", "n_split"])
def _attention_kernel(
    Q, KV, P, U, VB, Out,  # [qlen, batch, hd], [klen, batch, 2hd], [n_rel, hd], [heads, d_head] x 2, [qlen, batch, hd]
    ML, Acc,  # split-K partials, fp32: [n_split, batch * heads, 2, qlen] (m, l) and [n_split, batch * heads, qlen, d_head]
    q_row, kv_row, o_row,  # strides of one time step (batch * hd, batch * 2 * hd, batch * hd)
    batch_stride_q, batch_stride_kv, hd,
    qlen, klen, mlen, window, n_rel, n_head, d_head, qk_scale, n_split,  # qk_scale = log2(e) / sqrt(d_head)
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BAND: tl.constexpr,
    PRECISION: tl.constexpr,  # "ieee" for fp32 inputs: tl.dot would otherwise use tf32 where torch's matmul does not
    SPLIT: tl.constexpr,  # program_id(2) takes one of n_split key ranges and writes partials for _combine_kernel
):
    start_m = tl.program_id(0) * BLOCK_M
    b = tl.program_id(1) // n_head
    h = tl.program_id(1) % n_head
    offs_m = start_m + tl.arange(0, BLOCK_M)  # query rows
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < d_head  # d_head need not be a power of two
    head = h * d_head

    q_ptrs = Q + b * batch_stride_q + head + offs_m[:, None] * q_row + offs_d[None, :]
    q = tl.load(q_ptrs, mask=(offs_m[:, None] < qlen) & d_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
    u = tl.load(U + head + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    vb = tl.load(VB + head + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    q_u = (q.to(tl.float32) + u[None, :]).to(q.dtype)  # rounded like the reference's q + u in the input dtype
    q_v = (q.to(tl.float32) + vb[None, :]).to(q.dtype)

    k_base = KV + b * batch_stride_kv + head
    v_base = k_base + hd
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # Keys a block can see: j <= mlen + i, and j > mlen + i - window (window = mem_len with same_length, else klen).
    # window <= 0 masks every key (same_length with mem_len 0); the reference then averages all klen values.
    hi = tl.where(window > 0, tl.minimum(klen, mlen + start_m + BLOCK_M), klen)
    lo = tl.where(window > 0, tl.maximum(mlen + start_m - window + 1, 0) // BLOCK_N * BLOCK_N, 0)
    # Split-K: this program's share of the block's key tiles (n_split 1: all of them). A share can be empty, or hold
    # only masked keys for some rows; _combine_kernel weighs each share by its maximum, so both drop out there.
    per_split = tl.cdiv(tl.cdiv(hi - lo, BLOCK_N), n_split) * BLOCK_N
    lo = lo + tl.program_id(2) * per_split
    hi = tl.minimum(hi, lo + per_split)
    offs_t = tl.arange(0, BAND)
    shift = tl.arange(0, BLOCK_M)[:, None] - tl.arange(0, BLOCK_N)[None, :] + (BLOCK_N - 1)  # band column of (i, j)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < klen
        k = tl.load(k_base + offs_n[None, :] * kv_row + offs_d[:, None], mask=n_ok[None, :] & d_ok[:, None], other=0.0)
        content = tl.dot(q_u, k, input_precision=PRECISION)  # (a) + (c): [BLOCK_M, BLOCK_N] fp32

        # The tile's distances mlen + i - j run over a band of BLOCK_M + BLOCK_N - 1 values starting at dist0.
        dist = mlen + start_m - start_n - (BLOCK_N - 1) + offs_t  # [BAND]
        rows = tl.minimum(dist, n_rel - 1)  # clamp_len: every distance beyond it reads the last row
        band_ok = (dist >= 0) & (offs_t < BLOCK_M + BLOCK_N - 1)  # negative distances are masked below anyway
        p_ptrs = P + head + rows[None, :] * hd + offs_d[:, None]
        p_rel = tl.load(p_ptrs, mask=band_ok[None, :] & d_ok[:, None], other=0.0)  # [BLOCK_D, BAND]
        band = tl.dot(q_v, p_rel, input_precision=PRECISION)  # [BLOCK_M, BAND]: each query row against each distance
        position = tl.gather(band, shift, axis=1)  # (b) + (d): [BLOCK_M, BLOCK_N], the rel-shift

        s = (content + position) * qk_scale
        d_ij = (mlen + offs_m)[:, None] - offs_n[None, :]  # distance of query i to key j
        s = tl.where((d_ij >= 0) & (d_ij < window), s, FILL)
        s = tl.where(n_ok[None, :], s, float("-inf"))  # tail columns are no keys at all
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + offs_n[:, None] * kv_row + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        # probabilities rounded to the input dtype before the product with v, as in the reference
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new

    row_ok = offs_m < qlen
    if SPLIT:
        part = tl.program_id(2) * tl.num_programs(1) + tl.program_id(1)  # (split, batch * head)
        store_partials(ML, Acc, part, qlen, d_head, offs_m, row_ok, offs_d, d_ok, m_i, l_i, acc)
    else:
        o_ptrs = Out + b * batch_stride_q + head + offs_m[:, None] * o_row + offs_d[None, :]
        tl.store(o_ptrs, (acc / l_i[:, None]).to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


@triton.jit(do_not_specialize=["mlen", "first"])
def _memory_kernel(Mems, Hidden, NewMem, mlen, first, row_numel, BLOCK: tl.constexpr):
    """new_mem[r] = [mems ; hidden][first + r]; one program per (row, chunk of batch * d_model)."""
    r = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < row_numel
    src = first + r
    if src < mlen:
        x = tl.load(Mems + src * row_numel + offs, mask=ok)
    else:
        x = tl.load(Hidden + (src - mlen) * row_numel + offs, mask=ok)
    tl.store(NewMem + r * row_numel + offs, x, mask=ok)


# The interpreter: small tiles, so small test sizes still cross block edges; splits when the base grid has fewer
# programs than INTERPRETER_SMS (a stand-in SM count, so tests can force split-K on CPU tensors).
INTERPRETED = Config(16, 16, 1, 1, 1)
INTERPRETER_SMS = 1
MIN_SPLIT_TILES = 2  # key tiles a share keeps at least, so partials stay small beside the work (tests set 1)

# Tuned per shape bucket on CUDA (`Tuner`); the first of each list is the default and what block_sizes reports.
# Each config compiled for sm_90 ahead of time with a launch's alignment hints (the tests check all): shared memory
# (K, V and P tiles times num_stages) under the 99 KB of the smallest GPUs in view, and no register spills
# (cuobjdump). Registers per thread / shared memory are noted: 65536 registers and 228 KB per H100/H200 SM set how
# many programs an SM holds, which `fill` matches. The fp32 band tile, next_pow2(BLOCK_M + BLOCK_N - 1) columns,
# dominates the registers: the old 16-bit default, 64 x 64 with 4 warps, took 112 KB and spilled 136 B a thread.
CONFIGS_16 = {
    64: [Config(32, 64, 4, 2, 2),  # 218 / 48 KB: 2 programs an SM
         Config(32, 64, 4, 2, 1), Config(32, 32, 4, 3, 3),  # 133 / 44 KB: 3
         Config(16, 32, 4, 2, 4),  # 98 / 24 KB: 4
         Config(16, 64, 4, 3, 3),  # 138 / 76 KB
         Config(64, 32, 8, 2, 1),  # 202 / 96 KB: 1
         Config(32, 64, 4, 2, 0)],  # unsplit
    128: [Config(32, 32, 4, 2, 2),  # 176 / 52 KB
          Config(32, 64, 8, 2, 1),  # 176 / 88 KB
          Config(16, 32, 4, 2, 4),  # 106 / 44 KB
          Config(16, 64, 4, 2, 2),  # 183 / 80 KB
          Config(32, 32, 4, 2, 0)],
}  # fmt: skip
CONFIGS_32 = {  # fp32, the parity path: ieee dots on the FMA units, so small tiles
    64: [Config(16, 16, 2, 2, 4),  # 114 / 26 KB
         Config(16, 16, 4, 2, 4),  # 90 / 26 KB
         Config(16, 32, 4, 1, 2),  # 146 / 32 KB
         Config(32, 32, 8, 2, 1),  # 255 / 56 KB
         Config(16, 16, 2, 2, 0)],
    128: [Config(16, 32, 8, 1, 1),  # 93 / 64 KB
          Config(16, 32, 8, 1, 2), Config(16, 32, 8, 1, 0)],
}  # fmt: skip


def configs(d_head: int, dtype: torch.dtype, device: torch.device) -> list[Config]:
    """The config space the tuner times for this head size and dtype; one fixed config off CUDA."""
    if device.type != "cuda":
        return [INTERPRETED]
    space = CONFIGS_32 if dtype == torch.float32 else CONFIGS_16
    return space[64 if triton.next_power_of_2(d_head) <= 64 else 128]


def block_sizes(d_head: int, dtype: torch.dtype, device: torch.device) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages) of the default config. tl.dot needs every dimension >= 16."""
    c = configs(d_head, dtype, device)[0]
    return c.block_m, c.block_n, max(16, triton.next_power_of_2(d_head)), c.num_warps, c.num_stages


TUNER = Tuner()


def write_new_memory(hidden: Tensor, mems: Tensor, new_mem: Tensor) -> None:
    """The last new_mem.shape[0] rows of [mems ; hidden] into new_mem, all contiguous [len, batch, d_model]."""
    keep, row_numel = new_mem.shape[0], math.prod(new_mem.shape[1:])
    if keep == 0 or row_numel == 0:
        return
    block = min(1024, triton.next_power_of_2(row_numel))
    first = mems.shape[0] + hidden.shape[0] - keep
    _memory_kernel[(keep, triton.cdiv(row_numel, block))](mems, hidden, new_mem, mems.shape[0], first, row_numel, block)


def attention_core(q: Tensor, kv: Tensor, rel: Tensor, r_w_bias: Tensor, r_r_bias: Tensor, out: Tensor,
                   mlen: int, window: int, n_head: int, d_head: int) -> None:  # fmt: skip
    """out = softmax(content + shifted position scores) @ v, per head; q, out [qlen, batch, hd], kv [klen, batch, 2hd],
    rel [n_rel, hd] with row d the projected encoding of distance d.

    On CUDA the config is tuned per shape bucket on the bucket's first call (see Tuner): warm up before a capture."""
    qlen, batch, hd = q.shape
    if qlen == 0 or batch == 0:
        return
    space, key = configs(d_head, q.dtype, q.device), _tuning_key(q, kv, n_head, d_head, mlen, window)
    args = (q, kv, rel, r_w_bias, r_r_bias, out, mlen, window, n_head, d_head)
    _launch(TUNER.pick(key, space, lambda c: _launch(c, *args)), *args)


def plan(q: Tensor, kv: Tensor, n_head: int, d_head: int, mlen: int, window: int) -> tuple[Config, int]:
    """The config attention_core runs for these shapes (the tuned one once the bucket is tuned) and its split count."""
    qlen, batch, _ = q.shape
    config = TUNER.best.get(_tuning_key(q, kv, n_head, d_head, mlen, window), configs(d_head, q.dtype, q.device)[0])
    return config, _splits(config, qlen, kv.shape[0], batch * n_head, q.device)


def _splits(config: Config, qlen: int, klen: int, bh: int, device: torch.device) -> int:
    programs = triton.cdiv(qlen, config.block_m) * bh
    return split_count(config, klen, programs, device, INTERPRETER_SMS, MIN_SPLIT_TILES)


def _tuning_key(q: Tensor, kv: Tensor, n_head: int, d_head: int, mlen: int, window: int) -> tuple:
    """Head size, dtype, the lengths' buckets, and whether memory or same_length's window shape the mask."""
    qlen, batch, _ = q.shape
    return (d_head, q.dtype, *bucket(qlen, kv.shape[0], batch * n_head), mlen == 0, window < kv.shape[0])


def _launch(config: Config, q: Tensor, kv: Tensor, rel: Tensor, r_w_bias: Tensor, r_r_bias: Tensor, out: Tensor,
            mlen: int, window: int, n_head: int, d_head: int) -> None:  # fmt: skip
    qlen, batch, hd = q.shape
    klen, bh = kv.shape[0], batch * n_head
    block_m, block_n = config.block_m, config.block_n
    block_d = max(16, triton.next_power_of_2(d_head))
    blocks = triton.cdiv(qlen, block_m)
    splits = _splits(config, qlen, klen, bh, q.device)
    ml = acc = out  # unused without a split
    if splits > 1:  # fp32 partials: splits * bh * qlen * (d_head + 2) * 4 bytes, 2.2 MB at q 128, 8 x 64, 8 splits
        ml = torch.empty(splits, bh, 2, qlen, dtype=torch.float32, device=q.device)
        acc = torch.empty(splits, bh, qlen, d_head, dtype=torch.float32, device=q.device)
    _attention_kernel[(blocks, bh, splits)](
        q, kv, rel, r_w_bias, r_r_bias, out, ml, acc, batch * hd, batch * 2 * hd, batch * hd, hd, 2 * hd, hd,
        qlen, klen, mlen, window, rel.shape[0], n_head, d_head, math.log2(math.e) / math.sqrt(d_head), splits,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, BAND=triton.next_power_of_2(block_m + block_n - 1),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32", SPLIT=splits > 1, num_warps=config.num_warps,
        num_stages=config.num_stages,
    )  # fmt: skip
    if splits > 1:
        _combine_kernel[(triton.cdiv(qlen, COMBINE_ROWS), bh)](
            ml, acc, out, ml, ml, hd, d_head, batch * hd, 0, qlen, splits, n_head, d_head, BLOCK_M=COMBINE_ROWS,
            BLOCK_D=block_d, GATHER=False,
        )  # fmt: skip


def rel_position_attention_into(
    hidden: Tensor, mems: Tensor, qkv_weight: Tensor, r_weight: Tensor, r_w_bias: Tensor, r_r_bias: Tensor,
    o_weight: Tensor, ln_weight: Tensor, ln_bias: Tensor, n_head: int, d_head: int, mem_len: int, same_length: bool,
    clamp_len: int, pre_lnorm: bool, ln_eps: float, out: Tensor, new_mem: Tensor,
) -> None:  # fmt: skip
    """The op, writing into given contiguous buffers: out [qlen, batch, d_model], new_mem [min(mem_len, klen), ...].

    The TensorRT plugin passes its output buffers here, so neither output is copied.
    """
    hidden, mems = hidden.contiguous(), mems.contiguous()
    qlen, batch, d_model = hidden.shape
    mlen, dtype, hd = mems.shape[0], hidden.dtype, n_head * d_head
    klen = mlen + qlen

    def normed(x: Tensor) -> Tensor:  # pre_lnorm: LN of the layer input, memory rows included
        return _layer_norm32(x.float(), ln_weight, ln_bias, ln_eps).to(dtype) if pre_lnorm else x

    w = qkv_weight.to(dtype)
    x_h = normed(hidden)
    q = F.linear(x_h, w[:hd])  # [qlen, batch, hd]
    kv = hidden.new_empty(klen, batch, 2 * hd)  # [klen, batch, 2 * hd]: k then v per step, no cat of the inputs
    kv_rows = kv.view(klen * batch, 2 * hd)
    torch.mm(normed(mems).reshape(mlen * batch, d_model), w[hd:].t(), out=kv_rows[: mlen * batch])
    torch.mm(x_h.reshape(qlen * batch, d_model), w[hd:].t(), out=kv_rows[mlen * batch :])

    # Row d is distance d; with clamp_len the rows stop at clamp_len and the kernel caps its index there.
    rel = distance_projections(klen, clamp_len, r_weight, dtype, hidden.device)  # [n_rel, hd]

    attn = torch.empty_like(q)  # [qlen, batch, hd]
    window = mem_len if same_length else klen
    attention_core(q, kv, rel, r_w_bias.to(dtype).contiguous(), r_r_bias.to(dtype).contiguous(), attn, mlen, window,
                   n_head, d_head)  # fmt: skip

    write_new_memory(hidden, mems, new_mem)  # [keep, batch, d_model], straight from the two inputs
    residual = hidden.float() + F.linear(attn, o_weight.to(dtype)).float()  # [qlen, batch, d_model] fp32
    out.copy_(residual if pre_lnorm else _layer_norm32(residual, ln_weight, ln_bias, ln_eps))


def rel_position_attention_triton(
    hidden: Tensor, mems: Tensor, qkv_weight: Tensor, r_weight: Tensor, r_w_bias: Tensor, r_r_bias: Tensor,
    o_weight: Tensor, ln_weight: Tensor, ln_bias: Tensor, n_head: int, d_head: int, mem_len: int, same_length: bool,
    clamp_len: int, pre_lnorm: bool, ln_eps: float,
) -> tuple[Tensor, Tensor]:  # [qlen, batch, d_model], [min(mem_len, mlen + qlen), batch, d_model]
    """The op's signature and outputs, (out, new_mem), computed with the Triton kernels."""
    qlen, batch, d_model = hidden.shape
    keep = max(0, min(mem_len, mems.shape[0] + qlen))
    out = torch.empty_like(hidden, memory_format=torch.contiguous_format)
    new_mem = hidden.new_empty(keep, batch, d_model)
    rel_position_attention_into(
        hidden, mems, qkv_weight, r_weight, r_w_bias, r_r_bias, o_weight, ln_weight, ln_bias,
        n_head, d_head, mem_len, same_length, clamp_len, pre_lnorm, ln_eps, out, new_mem,
    )  # fmt: skip
    return out, new_mem


# The op's CUDA kernel inside plugins.registry.triton_kernels(); the eager reference elsewhere.
dispatch.provide(OP, rel_position_attention_triton, reference)
