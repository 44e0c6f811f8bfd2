"""What both fused ops' Triton kernels share: launch configs, split-K over the keys (the partial softmax states each
share stores and the kernel that merges them), and the tuner that picks a config per shape bucket.

Split-K: when a grid has too few programs to fill the GPU, each program's key range is split over several programs;
each share stores its unnormalised softmax state (m, l, acc) in fp32 with `store_partials`, and `_combine_kernel`
merges the shares of each row as one softmax (optionally scattering rows to a list of positions: the sliding-window
op's global rows).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
import triton
import triton.language as tl
import triton.testing


class Config(NamedTuple):
    """One launch configuration: tiles, warps, pipeline stages, and `fill`, the programs per SM a split-K launch aims
    for (0: never split)."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    fill: int = 0


COMBINE_ROWS = 16  # query rows per _combine_kernel program (4 warps): no spill at d_head 64 or 128 on sm_90


@triton.jit(do_not_specialize=["rows", "n_split"])
def _combine_kernel(
    ML, Acc, Out, Pos, Count,  # partials [n_split, batch * heads, 2, rows], [n_split, batch * heads, rows, d_head]
    s_b, s_h, s_row, pos_b, rows, n_split, n_head, d_head,  # s_*: Out's strides of batch, head and row
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
    GATHER: tl.constexpr,  # row i is slot i of a list of positions (Pos [batch, pos_b], Count [batch] in use)
):  # fmt: skip
    """out = sum_s 2^(m_s - m) acc_s / sum_s 2^(m_s - m) l_s, m = max_s m_s: the split shares of a key range merged
    as one softmax. A share of only masked keys has m_s = FILL and drops out beside an allowed key; a row with none
    allowed anywhere (window <= 0) weighs every share 1, averaging all keys as the unsplit kernel does."""
    bh = tl.program_id(1)
    b = (bh // n_head).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < rows
    if GATHER:
        row_ok = row_ok & (offs_m < tl.load(Count + b))
        dest = tl.load(Pos + b * pos_b + offs_m, mask=row_ok, other=0)
    else:
        dest = offs_m
    ok = row_ok[:, None] & (offs_d < d_head)[None, :]
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for s in range(0, n_split):
        part = s * tl.num_programs(1) + bh
        m_s = tl.load(ML + (2 * part) * rows + offs_m, mask=row_ok, other=float("-inf"))
        l_s = tl.load(ML + (2 * part + 1) * rows + offs_m, mask=row_ok, other=0.0)
        acc_s = tl.load(Acc + (part * rows + offs_m[:, None]) * d_head + offs_d[None, :], mask=ok, other=0.0)
        m_new = tl.maximum(m, m_s)
        alpha = tl.where(m == m_new, 1.0, tl.exp2(m - m_new))  # == first: -inf - -inf would be NaN
        beta = tl.where(m_s == m_new, 1.0, tl.exp2(m_s - m_new))
        l_sum = l_sum * alpha + l_s * beta
        acc = acc * alpha[:, None] + acc_s * beta[:, None]
        m = m_new
    o_ptrs = Out + b * s_b + (bh % n_head) * s_h + dest[:, None] * s_row + offs_d[None, :]
    tl.store(o_ptrs, (acc / l_sum[:, None]).to(Out.dtype.element_ty), mask=ok)


@triton.jit
def store_partials(ML, Acc, part, rows, d_head, offs_m, row_ok, offs_d, d_ok, m_i, l_i, acc):
    """Split share `part` (= split * batch * heads + batch * head) of rows offs_m: unnormalised (m, l, acc) in the
    layout _combine_kernel reads. An empty share stores its initial m, l = 0 and acc = 0, which drop out there."""
    tl.store(ML + (2 * part) * rows + offs_m, m_i, mask=row_ok)
    tl.store(ML + (2 * part + 1) * rows + offs_m, l_i, mask=row_ok)
    tl.store(Acc + (part * rows + offs_m[:, None]) * d_head + offs_d[None, :], acc, mask=row_ok[:, None] & d_ok[None, :])


@functools.cache
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def split_count(config: Config, klen: int, programs_per_split: int, device: torch.device, interpreter_sms: int,
                min_tiles: int) -> int:  # fmt: skip
    """Key ranges per (query block, batch * head). Transformer-XL's short segments give few programs (q 128 in
    32-row blocks, batch 1, 8 heads: 32 on a 132-SM H200, each up to 27 key tiles of 64 in a row): split the keys until
    the grid holds up to `fill` programs per SM (rounded down: one wave, no tail), each share >= min_tiles tiles. Off
    CUDA, `interpreter_sms` stands in for the SM count."""
    sms = interpreter_sms if device.type != "cuda" else _sm_count(device)
    if config.fill == 0 or programs_per_split >= config.fill * sms:
        return 1
    tiles = triton.cdiv(klen, config.block_n)
    return max(1, min(config.fill * sms // programs_per_split, tiles // min_tiles))  # one wave, no tail


class Tuner:
    """The fastest config per shape bucket, timed with triton.testing.do_bench on the bucket's first CUDA call.

    Buckets, not exact lengths: Transformer-XL's memory grows every segment, and a retune per call would cost more than
    it saves. Timing launches kernels and synchronises, which a CUDA graph capture forbids: a bucket first seen while
    capturing runs the default config untimed (and stays untuned); the runtime warms each shape up before capture.
    """

    def __init__(self) -> None:
        self.best: dict[tuple, object] = {}

    def pick(self, key: tuple, space: list, launch: Callable[[object], None]) -> object:
        if key in self.best:
            return self.best[key]
        if len(space) == 1 or torch.cuda.is_current_stream_capturing():
            return space[0]
        ms = [triton.testing.do_bench(lambda c=c: launch(c), warmup=5, rep=20) for c in space]
        self.best[key] = space[ms.index(min(ms))]
        return self.best[key]


def bucket(*lengths: int) -> tuple[int, ...]:
    """Lengths to the next power of two: the part of a tuning key that grows with the memory."""
    return tuple(triton.next_power_of_2(max(1, n)) for n in lengths)
