"""The Transformer-XL reference model: the formulas, the HF checkpoint layout, memory over segments, bad inputs."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import save_file
from test_rel_position_op import layer_norm64, loop_attention

from trtformer.errors import CheckpointError, InputError
from trtformer.families import build_model, load_model, preset
from trtformer.models.transfo_xl import TransfoXL, TransfoXLConfig, tied_weights

SMALL = dict(vocab_size=60, d_model=8, n_head=2, d_head=4, d_inner=16, n_layer=2, mem_len=5, init_std=0.3)
CONFIGS = {
    # three clusters of widths 8, 4, 2; u, v per layer; every query sees mem_len keys; clamped distances
    "adaptive": TransfoXLConfig(**SMALL, cutoffs=(10, 30), d_embed=8, div_val=2, same_length=True, clamp_len=4),
    # one table of width 6 projected to 8, plain softmax, one shared u, v, pre-LayerNorm blocks
    "plain": TransfoXLConfig(**SMALL, cutoffs=(), d_embed=6, div_val=1, clamp_len=0, untie_r=False, pre_lnorm=True),
}


def small_model(name: str) -> TransfoXL:
    model = TransfoXL(CONFIGS[name]).init_weights(0).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # biases and LayerNorms start at 0 and 1: move them so that every parameter counts
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def carried(out: dict, n_layer: int) -> list[torch.Tensor]:
    return [out[f"new_mems.{i}"] for i in range(n_layer)]


def independent_forward(model: TransfoXL, ids: torch.Tensor, mems: list[torch.Tensor]):
    """The model's formulas in float64, one token at a time: adaptive input, layers, adaptive softmax."""
    cfg, sd = model.config, {k: v.double() for k, v in model.state_dict().items()}
    bounds = [0, *cfg.cutoffs, cfg.vocab_size]
    batch, seg = ids.shape
    x = torch.zeros(seg, batch, cfg.d_model, dtype=torch.float64)
    for b in range(batch):
        for s in range(seg):
            tok = int(ids[b, s])
            c = 0 if cfg.div_val == 1 else max(i for i in range(len(bounds) - 1) if tok >= bounds[i])
            e = sd[f"word_emb.emb_layers.{c}.weight"][tok - bounds[c] if cfg.div_val > 1 else tok]
            proj = sd.get(f"word_emb.emb_projs.{c}")
            x[s, b] = (proj @ e if proj is not None else e) * math.sqrt(cfg.d_model)
    new_mems = []
    for i in range(cfg.n_layer):
        p = f"layers.{i}."
        uv = [sd[(p + "dec_attn." if cfg.untie_r else "") + n] for n in ("r_w_bias", "r_r_bias")]
        w = [sd[p + "dec_attn.qkv_net.weight"], sd[p + "dec_attn.r_net.weight"], *uv, sd[p + "dec_attn.o_net.weight"]]
        w += [sd[p + "dec_attn.layer_norm.weight"], sd[p + "dec_attn.layer_norm.bias"]]
        a, new = loop_attention(x, mems[i], *w, cfg.n_head, cfg.d_head, cfg.mem_len, cfg.same_length, cfg.clamp_len,
                                cfg.pre_lnorm, cfg.layer_norm_epsilon)  # fmt: skip
        new_mems.append(new)
        ln = (sd[p + "pos_ff.layer_norm.weight"], sd[p + "pos_ff.layer_norm.bias"], cfg.layer_norm_epsilon)
        w0, b0, w3, b3 = (sd[p + f"pos_ff.CoreNet.{n}"] for n in ("0.weight", "0.bias", "3.weight", "3.bias"))
        y = torch.relu((layer_norm64(a, *ln) if cfg.pre_lnorm else a) @ w0.T + b0) @ w3.T + b3
        x = a + y if cfg.pre_lnorm else layer_norm64(a + y, *ln)
    h = x.transpose(0, 1)  # [batch, seg, d_model]

    def cluster(c, extra_w=None, extra_b=None):  # logits of cluster c: W (P^T h) + b
        lo, hi = bounds[c], bounds[c + 1]
        t = 0 if cfg.div_val == 1 else c
        W, bias = sd[f"crit.out_layers.{t}.weight"], sd[f"crit.out_layers.{t}.bias"]
        if cfg.div_val == 1:
            W, bias = W[lo:hi], bias[lo:hi]
        if extra_w is not None:
            W, bias = torch.cat([W, extra_w]), torch.cat([bias, extra_b])
        proj = sd.get(f"crit.out_projs.{c}")
        return (h @ proj if proj is not None else h) @ W.T + bias

    if not cfg.cutoffs:
        return cluster(0), new_mems
    head = torch.log_softmax(cluster(0, sd["crit.cluster_weight"], sd["crit.cluster_bias"]), -1)
    short = cfg.cutoffs[0]
    tails = [head[..., short + c - 1, None] + torch.log_softmax(cluster(c), -1) for c in range(1, len(bounds) - 1)]
    return torch.cat([head[..., :short], *tails], -1), new_mems


@pytest.mark.parametrize("name", CONFIGS)
def test_matches_independent_computation(name):
    model = small_model(name)
    ids = torch.randint(0, 60, (2, 7), generator=torch.Generator().manual_seed(2))
    mems, want_mems = None, [torch.zeros(0, 2, 8, dtype=torch.float64)] * 2
    with torch.no_grad():
        for seg in (ids[:, :4], ids[:, 4:]):  # second segment: klen 7 > mem_len 5
            out = model(seg, mems)
            want, want_mems = independent_forward(model, seg, want_mems)
            assert (out[model.config.lm_output].double() - want).abs().max() <= 1e-5
            assert all((m.double() - w).abs().max() <= 1e-5 for m, w in zip(carried(out, 2), want_mems, strict=True))
            mems = carried(out, 2)
    assert mems[0].shape == (5, 2, 8)


def hf_layout(model: TransfoXL) -> dict[str, torch.Tensor]:
    """The state dict as HF's TransfoXLLMHeadModel saves it: `transformer.` prefix, tied output weights left out."""
    cfg = model.config
    tied = {target for target, _ in tied_weights(cfg)}
    sd = {k if k.startswith("crit.") else f"transformer.{k}": v.clone() for k, v in model.state_dict().items()}
    sd = {k: v for k, v in sd.items() if k.removeprefix("transformer.") not in tied}
    sd["transformer.pos_emb.inv_freq"] = 1 / 10000 ** (torch.arange(0, cfg.d_model, 2.0) / cfg.d_model)
    if not cfg.untie_r:  # HF registers the shared u, v under every layer too
        for i in range(cfg.n_layer):
            sd[f"transformer.layers.{i}.dec_attn.r_w_bias"] = sd["transformer.r_w_bias"].clone()
            sd[f"transformer.layers.{i}.dec_attn.r_r_bias"] = sd["transformer.r_r_bias"].clone()
    return sd


def test_hf_layout_names():
    norms = ("layer_norm.weight", "layer_norm.bias")
    attn = ("qkv_net.weight", "r_net.weight", "o_net.weight", *norms, "r_w_bias", "r_r_bias")
    ff = ("CoreNet.0.weight", "CoreNet.0.bias", "CoreNet.3.weight", "CoreNet.3.bias", *norms)
    layer = [f"dec_attn.{n}" for n in attn] + [f"pos_ff.{n}" for n in ff]
    expected = {f"transformer.layers.{i}.{n}" for i in range(2) for n in layer} | {"transformer.pos_emb.inv_freq"}
    expected |= {f"transformer.word_emb.emb_layers.{c}.weight" for c in range(3)}
    expected |= {f"transformer.word_emb.emb_projs.{c}" for c in range(3)}
    expected |= {f"crit.out_layers.{c}.bias" for c in range(3)} | {"crit.cluster_weight", "crit.cluster_bias"}
    expected |= {"crit.out_projs.0"}  # the only projection HF's default proj_share_all_but_first leaves untied
    assert set(hf_layout(small_model("adaptive"))) == expected  # as transformers 4.x saves it (tied keys once)


@pytest.mark.parametrize("name", CONFIGS)
def test_hf_checkpoint_loads_back_to_identical_outputs(tmp_path, name):
    model = small_model(name)
    cfg = model.config
    hf = {k: v for k, v in cfg.to_dict().items() if k not in ("vocab_size", "tie_projs")}
    # HF's own spellings: n_token is vocab_size's old name; tie_projs follows from proj_share_all_but_first.
    hf |= {"model_type": "transfo-xl", "architectures": ["TransfoXLLMHeadModel"], "n_token": cfg.vocab_size,
           "proj_share_all_but_first": True, "attn_type": 0, "sample_softmax": -1, "dropout": 0.1}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(hf))
    save_file(hf_layout(model), tmp_path / "model.safetensors")
    loaded = load_model(tmp_path)
    assert loaded.family == "transfo_xl" and loaded.config == cfg
    ids = torch.randint(0, 60, (2, 6))
    with torch.no_grad():
        a, b = model(ids), loaded.model(ids)
        a2, b2 = model(ids, carried(a, 2)), loaded.model(ids, carried(b, 2))
    assert all(torch.equal(a[k], b[k]) and torch.equal(a2[k], b2[k]) for k in a)
    with torch.no_grad():  # and the manifest's route: build_model(family, config.to_dict())
        rebuilt = build_model("transfo_xl", cfg.to_dict())
        rebuilt.load_state_dict(model.state_dict())
        assert torch.equal(rebuilt.eval()(ids)[cfg.lm_output], a[cfg.lm_output])


@pytest.mark.parametrize(("change", "message"), [
    ({"attn_type": 1}, "attn_type 1"),
    ({"architectures": ["TransfoXLForSequenceClassification"]}, "not supported"),
])  # fmt: skip
def test_unsupported_checkpoints(tmp_path, change, message):
    hf = {"model_type": "transfo-xl", **CONFIGS["adaptive"].to_dict(), **change}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path)


def test_adaptive_log_probs_normalise():
    model = preset("tiny-transfo-xl").model
    ids = torch.randint(0, 512, (2, 9))
    with torch.no_grad():
        first = model(ids)
        second = model(ids, carried(first, 2))
    for out in (first, second):
        assert out["log_probs"].shape == (2, 9, 512)
        assert out["log_probs"].logsumexp(-1).abs().max() <= 1e-5


def test_memory_over_three_segments_equals_one_pass():
    """With mem_len (16) >= all the past (12 tokens), carrying memory loses nothing: the math is one pass."""
    model = preset("tiny-transfo-xl").model
    ids = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        full = model(ids)
        mems, parts = None, []
        for seg in (ids[:, :4], ids[:, 4:7], ids[:, 7:]):
            out = model(seg, mems)
            parts.append(out["log_probs"])
            mems = carried(out, 2)
    assert (torch.cat(parts, dim=1) - full["log_probs"]).abs().max() <= 1e-4
    assert all((m - f).abs().max() <= 1e-5 for m, f in zip(mems, carried(full, 2), strict=True))


def test_new_memory_is_the_last_mem_len_layer_inputs():
    model = TransfoXL(dataclasses.replace(preset("tiny-transfo-xl").config, mem_len=5)).init_weights(0).eval()
    ids = torch.randint(0, 512, (2, 7))
    with torch.no_grad():
        first = model(ids[:, :4])  # 4 rows: all there is
        second = model(ids[:, 4:], carried(first, 2))
        layer0_input = torch.cat([model.word_emb(ids[:, :4].t()), model.word_emb(ids[:, 4:].t())])  # [7, 2, 64]
    assert first["new_mems.0"].shape == (4, 2, 64)
    assert torch.equal(second["new_mems.0"], layer0_input[-5:])
    assert second["new_mems.1"].shape == (5, 2, 64)


BAD = {  # mems for input_ids [2, 4] and a model of 2 layers, width 64
    "mem batch": ([torch.zeros(3, 3, 64)] * 2, r"mems.0 has shape \(3, 3, 64\); expected \[mem_len, 2, 64\]"),
    "mem width": ([torch.zeros(3, 2, 64), torch.zeros(3, 2, 32)], r"mems.1 has shape \(3, 2, 32\)"),
    "mem lengths differ": ([torch.zeros(3, 2, 64), torch.zeros(4, 2, 64)], "mems.1 .* one mem_len for every layer"),
    "mem rank": ([torch.zeros(2, 64)] * 2, r"mems.0 has shape \(2, 64\)"),
    "mem count": ([torch.zeros(3, 2, 64)], "mems has 1 tensors, the model has 2 layers"),
    "mem dtype": ([torch.zeros(3, 2, 64, dtype=torch.float64)] * 2, "mems.0 is torch.float64"),
}


@pytest.mark.parametrize(("mems", "message"), BAD.values(), ids=BAD.keys())
def test_bad_memory_is_named(mems, message):
    with pytest.raises(InputError, match=message):
        preset("tiny-transfo-xl").model(torch.zeros(2, 4, dtype=torch.long), mems)


@pytest.mark.parametrize(("ids", "message"), [
    (torch.tensor([[1, 512, 3]]), "token id 512, outside the vocabulary \\[0, 512\\)"),
    (torch.tensor([[-1, 2]]), "token id -1"),
    (torch.zeros(1, 3), "input_ids must be integer"),
    (torch.zeros(3, dtype=torch.long), "input_ids must be integer \\[batch, seg\\]"),
])  # fmt: skip
def test_bad_input_ids_are_named(ids, message):
    with pytest.raises(InputError, match=message):
        preset("tiny-transfo-xl").model(ids)
