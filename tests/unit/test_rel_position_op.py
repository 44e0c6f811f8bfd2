"""trtformer::rel_position_attention against a plain computation of Transformer-XL's four score terms, and export."""

from __future__ import annotations

import math

import pytest
import torch
from torch.export import Dim

from trtformer.ops.rel_position import OP, reference, rel_position_attention

N_HEAD, D_HEAD, D_MODEL, BATCH = 2, 4, 8, 2


def make_inputs(qlen: int, mlen: int, dtype=torch.float32, seed: int = 0, n_head: int = N_HEAD, d_head: int = D_HEAD,
                d_model: int = D_MODEL, batch: int = BATCH) -> dict:  # fmt: skip
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.5, shift=0.0):
        return (torch.randn(shape, generator=g) * scale + shift).to(dtype)

    hd = n_head * d_head
    return dict(
        hidden=rand(qlen, batch, d_model, scale=1.0), mems=rand(mlen, batch, d_model, scale=1.0),
        qkv_weight=rand(3 * hd, d_model), r_weight=rand(hd, d_model), r_w_bias=rand(n_head, d_head),
        r_r_bias=rand(n_head, d_head), o_weight=rand(d_model, hd), ln_weight=rand(d_model, shift=1.0).float(),
        ln_bias=rand(d_model).float(),
    )  # fmt: skip


def attrs(mem_len=5, same_length=False, clamp_len=0, pre_lnorm=False) -> dict:
    return dict(n_head=N_HEAD, d_head=D_HEAD, mem_len=mem_len, same_length=same_length, clamp_len=clamp_len,
                pre_lnorm=pre_lnorm, ln_eps=1e-5)  # fmt: skip


def layer_norm64(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def loop_attention(hidden, mems, qkv_weight, r_weight, r_w_bias, r_r_bias, o_weight, ln_weight, ln_bias,
                   n_head, d_head, mem_len, same_length, clamp_len, pre_lnorm, ln_eps):  # fmt: skip
    """Transformer-XL attention in float64, one (query, key) pair at a time, with the terms (a)-(d) apart.

    Query i sits at absolute position mlen + i, key j at j; their distance is mlen + i - j.
    """
    t = {k: v.double() for k, v in locals().items() if isinstance(v, torch.Tensor)}
    qlen, batch, d_model = hidden.shape
    mlen, hd = mems.shape[0], n_head * d_head
    cat = torch.cat([t["mems"], t["hidden"]])  # [klen, batch, d_model]
    inp = layer_norm64(cat, t["ln_weight"], t["ln_bias"], ln_eps) if pre_lnorm else cat
    w_q, w_k, w_v = t["qkv_weight"].split(hd)
    heads = lambda x: x.reshape(*x.shape[:-1], n_head, d_head)  # noqa: E731  [..., hd] -> [..., heads, d_head]
    q, k, v = heads(inp @ w_q.T), heads(inp @ w_k.T), heads(inp @ w_v.T)  # [klen, batch, heads, d_head]
    u, vb = t["r_w_bias"], t["r_r_bias"]  # [heads, d_head]
    freqs = [1 / 10000 ** (2 * f / d_model) for f in range(d_model // 2)]
    out = torch.zeros(qlen, batch, n_head, d_head, dtype=torch.float64)
    for i in range(qlen):
        scores, values = [], []
        for j in range(mlen + qlen):
            dist = mlen + i - j
            if dist < 0 or (same_length and dist >= mem_len):
                continue
            d = min(dist, clamp_len) if clamp_len > 0 else dist
            enc = torch.tensor([math.sin(d * f) for f in freqs] + [math.cos(d * f) for f in freqs], dtype=torch.float64)
            r = heads(t["r_weight"] @ enc)  # [heads, d_head]
            qi = q[mlen + i]  # [batch, heads, d_head]
            a = (qi * k[j]).sum(-1)  # content: [batch, heads]
            b = (qi * r).sum(-1)  # content-to-position
            c = (u * k[j]).sum(-1)  # global content bias
            dd = (vb * r).sum(-1).expand_as(a)  # global position bias
            scores.append((a + b + c + dd) / math.sqrt(d_head))
            values.append(v[j])
        p = torch.softmax(torch.stack(scores), dim=0)  # [keys, batch, heads]
        out[i] = (p[..., None] * torch.stack(values)).sum(0)
    attn = out.reshape(qlen, batch, hd) @ t["o_weight"].T
    res = t["hidden"] + attn
    res = res if pre_lnorm else layer_norm64(res, t["ln_weight"], t["ln_bias"], ln_eps)
    return res, cat[max(0, mlen + qlen - mem_len) :]


CASES = {
    "memory": (4, 3, attrs()),
    "mlen-0": (4, 0, attrs()),
    "same-length": (4, 4, attrs(mem_len=5, same_length=True)),  # klen 8 > mem_len: the window bites
    "same-length-mlen-0": (5, 0, attrs(mem_len=3, same_length=True)),
    "clamp-len": (4, 5, attrs(clamp_len=2)),  # distances up to 8 share the encoding of 2
    "pre-lnorm-all": (3, 4, attrs(mem_len=4, same_length=True, clamp_len=3, pre_lnorm=True)),
    "mem-len-0": (3, 2, attrs(mem_len=0)),
    "mem-len-beyond-klen": (3, 2, attrs(mem_len=9)),
}


@pytest.mark.parametrize(("qlen", "mlen", "a"), CASES.values(), ids=CASES.keys())
def test_matches_plain_four_terms(qlen, mlen, a):
    x = make_inputs(qlen, mlen)
    out, new_mem = rel_position_attention(**x, **a)
    want, want_mem = loop_attention(**x, **a)
    assert out.shape == (qlen, BATCH, D_MODEL) and out.dtype == torch.float32
    assert (out.double() - want).abs().max() <= 1e-5
    assert new_mem.shape == (min(a["mem_len"], mlen + qlen), BATCH, D_MODEL)
    assert torch.equal(new_mem.double(), want_mem)  # the last mem_len rows of [mems ; hidden], bit for bit


@pytest.mark.parametrize("mlen", [0, 3])
def test_fp16_with_fp32_softmax(mlen):
    a = attrs(same_length=True, clamp_len=3)
    x = make_inputs(4, mlen, dtype=torch.float16)
    out, new_mem = rel_position_attention(**x, **a)
    want, _ = loop_attention(**x, **a)  # float64 from the same fp16 inputs
    assert out.dtype == new_mem.dtype == torch.float16
    assert (out.double() - want).abs().max() <= 2e-2  # output magnitude ~1 after the LayerNorm


def test_fake_impl_agrees_with_eager():
    for qlen, mlen, mem_len in [(3, 0, 5), (3, 4, 5), (2, 2, 0)]:
        torch.library.opcheck(rel_position_attention, (*make_inputs(qlen, mlen).values(), *attrs(mem_len).values()),
                              test_utils=("test_schema", "test_faketensor"))  # fmt: skip


class OneLayer(torch.nn.Module):
    def __init__(self, a: dict):
        super().__init__()
        x = make_inputs(1, 0, seed=1)
        self.weights = torch.nn.ParameterList(v for k, v in x.items() if k not in ("hidden", "mems"))
        self.a = a

    def forward(self, hidden, mems):
        return rel_position_attention(hidden, mems, *self.weights, **self.a)


def test_torch_export_with_dynamic_qlen_and_mlen():
    """Exported at qlen 3, mlen 4 (torch.export specialises sizes 0 and 1), run at mlen 0 and other qlen."""
    a = attrs(mem_len=5, same_length=True, clamp_len=4)
    module = OneLayer(a).eval()
    ex = make_inputs(3, 4, seed=2)
    dims = {"hidden": {0: Dim("qlen", min=1, max=64)}, "mems": {0: Dim("mlen", min=0, max=64)}}
    exported = torch.export.export(module, (ex["hidden"], ex["mems"]), dynamic_shapes=dims, strict=False)
    assert [n.target for n in exported.graph.nodes].count(OP) == 1  # one node for the translation table
    inlined = exported.run_decompositions({OP: reference})  # the portable form: the eager body, traced symbolically
    assert OP not in [n.target for n in inlined.graph.nodes]
    runnable = [exported.module(), inlined.module()]
    for qlen, mlen in [(3, 0), (6, 0), (1, 0), (2, 7), (5, 2)]:  # klen below, at and above mem_len
        x = make_inputs(qlen, mlen, seed=3)
        want = module(x["hidden"], x["mems"])
        for program in runnable:
            got = program(x["hidden"], x["mems"])
            assert got[1].shape == want[1].shape == (min(5, qlen + mlen), BATCH, D_MODEL)
            assert all((g - w).abs().max() <= 1e-6 for g, w in zip(got, want, strict=True))
