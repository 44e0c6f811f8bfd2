"""trtformer::sliding_window_attention against transformers' LongformerSelfAttention and a dense-mask oracle;
export with a dynamic sequence; memory linear in the sequence."""

from __future__ import annotations

import math

import pytest
import sympy
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.export import Dim
from torch.utils._python_dispatch import TorchDispatchMode

from trtformer.ops.sliding_window import NAME, sliding_window_attention, sliding_window_reference

HEADS, HEAD_DIM = 4, 8


def activations(batch: int, seq: int, seed: int = 0, heads: int = HEADS) -> list[torch.Tensor]:
    """q, k, v, q_global, k_global, v_global: [batch, heads, seq, head_dim]."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, seq, HEAD_DIM, generator=g) for _ in range(6)]


def masks(batch: int, seq: int, globals_at=(), pad_last: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(key_padding_mask, global_mask) [batch, seq] bool; the last row loses `pad_last` tokens to padding."""
    real = torch.ones(batch, seq, dtype=torch.bool)
    if pad_last:
        real[-1, seq - pad_last :] = False
    glob = torch.zeros(batch, seq, dtype=torch.bool)
    for row, col in globals_at:
        glob[row, col] = True
    return real, glob


def dense_oracle(q, k, v, qg, kg, vg, real, glob, window, dilations, scale):
    """The op's semantics written plainly with an n x n mask (fine in a test, never in the op)."""
    n = q.shape[2]
    is_global = glob & real
    offset = torch.arange(n)[None, :] - torch.arange(n)[:, None]  # [n, n]: key - query
    d = torch.tensor(dilations)[:, None, None]  # [heads, 1, 1]
    band = (offset.abs() <= window // 2 * d) & (offset % d == 0)  # [heads, n, n]
    local_ok = real[:, None, None, :] & (band[None] | is_global[:, None, None, :])  # [batch, heads, n, n]
    local = torch.softmax((q @ k.transpose(-1, -2) * scale).masked_fill(~local_ok, -math.inf), -1) @ v
    everyone = real[:, None, None, :].expand(-1, q.shape[1], n, -1)
    glob_out = torch.softmax((qg @ kg.transpose(-1, -2) * scale).masked_fill(~everyone, -math.inf), -1) @ vg
    out = torch.where(is_global[:, None, :, None], glob_out, local)
    return out.masked_fill(~real[:, None, :, None], 0.0)


def run(window, dilations, acts, real, glob, fn=sliding_window_attention):
    return fn(*acts, real, glob, window, dilations, 1 / math.sqrt(HEAD_DIM))


# ---------------------------------------------------------------------------------------------- transformers


def hf_self_attention(window: int):
    from transformers import LongformerConfig
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    cfg = LongformerConfig(hidden_size=HEADS * HEAD_DIM, num_attention_heads=HEADS, attention_window=[window],
                           num_hidden_layers=1)  # fmt: skip
    torch.manual_seed(0)
    attn = LongformerSelfAttention(cfg, layer_id=0).eval()
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return attn


@pytest.mark.parametrize("seq", [5, 13, 16, 21])  # window 8: shorter than it, not a multiple, a multiple
@pytest.mark.parametrize(
    "globals_at",
    [(), ((0, 0), (1, 0)), ((0, 3), (0, 4), (1, 9))],
    ids=["no-global", "global-at-start", "global-elsewhere"],
)
@pytest.mark.parametrize("pad_last", [0, 3], ids=["unpadded", "padded"])
def test_matches_transformers(seq, globals_at, pad_last):
    """transformers needs a multiple of the window and pads; the op takes the input length as it is."""
    window, batch = 8, 2
    attn = hf_self_attention(window)
    x = torch.randn(batch, seq, HEADS * HEAD_DIM, generator=torch.Generator().manual_seed(seq))
    real, glob = masks(batch, seq, [(r, c) for r, c in globals_at if c < seq], pad_last)
    extra = (-seq) % window
    real_p, glob_p = F.pad(real, (0, extra)), F.pad(glob, (0, extra))
    hf_mask = torch.zeros(batch, seq + extra)  # transformers' encoding: < 0 padding, > 0 global, 0 local
    hf_mask[~real_p] = -10000.0
    hf_mask[glob_p & real_p] = 10000.0
    with torch.no_grad():
        want = attn(F.pad(x, (0, 0, 0, extra)), attention_mask=hf_mask, is_index_masked=hf_mask < 0,
                    is_index_global_attn=hf_mask > 0, is_global_attn=bool((hf_mask > 0).any()))[0][:, :seq]  # fmt: skip
        projections = (attn.query, attn.key, attn.value, attn.query_global, attn.key_global, attn.value_global)
        acts = [p(x).view(batch, seq, HEADS, HEAD_DIM).transpose(1, 2) for p in projections]
        got = run(window, [1] * HEADS, acts, real, glob).transpose(1, 2).reshape(batch, seq, -1)
    assert (want - got).abs().max() <= 1e-5


# ---------------------------------------------------------------------------------------------- dilation


@pytest.mark.parametrize("dilations", [[1, 2, 3, 1], [2, 2, 2, 2], [4, 1, 1, 3]])
@pytest.mark.parametrize("seq", [1, 2, 7, 19])
def test_dilation_matches_dense_oracle(dilations, seq):
    acts = activations(2, seq, seed=seq)
    real, glob = masks(2, seq, [(0, 0), (1, seq // 2)], pad_last=seq // 3)
    want = run(4, dilations, acts, real, glob, fn=dense_oracle)
    assert (run(4, dilations, acts, real, glob) - want).abs().max() <= 1e-5


@settings(max_examples=40, deadline=None)
@given(
    seq=st.integers(1, 40),
    half_window=st.integers(1, 5),
    dilations=st.lists(st.integers(1, 4), min_size=3, max_size=3),
    data=st.data(),
)
def test_any_masks_match_dense_oracle(seq, half_window, dilations, data):
    bits = st.lists(st.booleans(), min_size=2 * seq, max_size=2 * seq)
    real = torch.tensor(data.draw(bits)).view(2, seq)
    glob = torch.tensor(data.draw(bits)).view(2, seq)
    acts = activations(2, seq, seed=seq, heads=3)
    args = (*acts, real, glob, 2 * half_window, dilations, 0.5)
    assert (sliding_window_attention(*args) - dense_oracle(*args)).abs().max() <= 1e-5


def test_trailing_padding_does_not_change_real_tokens():
    """Why padding to a multiple of the window (transformers) cannot change the output at the input length."""
    acts = activations(1, 11)
    real, glob = masks(1, 11, [(0, 4)])
    padded = [F.pad(a, (0, 0, 0, 5)) for a in acts]
    alone = run(8, [1, 2, 1, 3], acts, real, glob)
    in_longer = run(8, [1, 2, 1, 3], padded, F.pad(real, (0, 5)), F.pad(glob, (0, 5)))
    assert (in_longer[:, :, :11] - alone).abs().max() <= 1e-6
    assert torch.all(in_longer[:, :, 11:] == 0)  # padding queries get zeros, as in transformers


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 1e-2), (torch.bfloat16, 4e-2)])
def test_half_precision_and_an_all_padding_row(dtype, tol):
    acts = activations(2, 37)
    real, glob = masks(2, 37, [(0, 3), (1, 5)])
    real[1] = False
    want = run(8, [1, 2, 1, 3], acts, real, glob)
    got = run(8, [1, 2, 1, 3], [a.to(dtype) for a in acts], real, glob)
    assert got.dtype == dtype and torch.all(want[1] == 0) and not want.isnan().any()
    assert (got.float() - want).abs().max() <= tol


# ---------------------------------------------------------------------------------------------- export


class Calls(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, q, k, v, qg, kg, vg, real, glob):
        return self.fn(q, k, v, qg, kg, vg, real, glob, 4, [1, 2, 1, 2], 0.35)  # two dilation groups, reordered


def export(fn):
    batch, seq = Dim("batch"), Dim("seq")
    act, mask = {0: batch, 2: seq}, {0: batch, 1: seq}
    example = (*activations(2, 6), *masks(2, 6, [(0, 0)]))  # sizes >= 2: torch.export specialises 0 and 1
    return torch.export.export(Calls(fn), example, dynamic_shapes=(act,) * 6 + (mask,) * 2, strict=False)


def check_other_lengths(program):
    for batch, seq, globals_at in [(1, 5, [(0, 2)]), (3, 33, [(0, 0), (2, 31), (2, 7)]), (2, 64, []),
                                   (1, 1000, [(0, i) for i in range(0, 1000, 97)]), (2, 1, [(1, 0)])]:  # fmt: skip
        inputs = (*activations(batch, seq), *masks(batch, seq, globals_at, pad_last=seq // 4))
        assert torch.equal(program.module()(*inputs), Calls(sliding_window_reference)(*inputs)), (batch, seq)


def test_export_of_the_op_runs_at_other_lengths():
    program = export(sliding_window_attention)
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert [str(t) for t in targets] == [NAME.replace("::", ".") + ".default"]
    check_other_lengths(program)


@pytest.fixture(scope="module")
def reference_program():
    return export(sliding_window_reference)  # several seconds: the body traces to a few hundred nodes


@pytest.mark.slow
def test_eager_implementation_exports_with_a_dynamic_seq(reference_program):
    """The eager body itself traces with symbolic batch and seq (what a portable decomposition starts from)."""
    check_other_lengths(reference_program)


# ---------------------------------------------------------------------------------------------- memory


@pytest.mark.slow
def test_exported_intermediates_are_linear_in_seq(reference_program):
    """Every tensor in the traced eager body has a size at most linear in seq, read from its symbolic shape."""
    nodes = list(reference_program.graph.nodes)
    seq = next(n for n in nodes if n.name == "q").meta["val"].shape[2].node.expr

    def numel_at(val, n):  # the size with seq = n, batch and the global count = 2
        expr = sympy.sympify(math.prod(d.node.expr if isinstance(d, torch.SymInt) else d for d in val.shape))
        return int(expr.xreplace({s: (n if s == seq else 2) for s in expr.free_symbols}))

    sizes = {n.name: [numel_at(n.meta["val"], s) for s in (4096, 8192)] for n in nodes
             if isinstance(n.meta.get("val"), torch.Tensor)}  # fmt: skip
    name, (small, big) = max(sizes.items(), key=lambda kv: kv[1][1] / kv[1][0])
    assert big <= 2 * small, f"{name} grows faster than seq: {small} -> {big}"
    assert max(b for _, b in sizes.values()) < 8192**2 / 64  # nowhere near an n x n tensor


class LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_eager_intermediates_are_linear_in_seq():
    largest = {}
    for seq in (1024, 4096):
        inputs = (*activations(1, seq, heads=2), *masks(1, seq, [(0, 0), (0, seq // 2), (0, seq - 1)]))
        with LargestTensor() as mode:
            sliding_window_attention(*inputs, 8, [1, 3], 0.35)
        largest[seq] = mode.largest
    assert largest[4096] <= 4.1 * largest[1024]
    assert largest[4096] < 4096**2 / 64


# ---------------------------------------------------------------------------------------------- contract


def test_opcheck():
    acts = activations(2, 7)
    real, glob = masks(2, 7, [(0, 2)], pad_last=2)
    torch.library.opcheck(sliding_window_attention, (*acts, real, glob, 4, [1, 2, 1, 1], 0.3))


@pytest.mark.parametrize(
    ("window", "dilations", "match"),
    [(5, [1] * HEADS, "even"), (0, [1] * HEADS, "even"), (4, [1, 1], "4 heads"), (4, [1, 0, 1, 1], ">= 1")],
)
def test_bad_attributes(window, dilations, match):
    acts = activations(1, 5)
    with pytest.raises(ValueError, match=match):
        run(window, dilations, acts, *masks(1, 5))
