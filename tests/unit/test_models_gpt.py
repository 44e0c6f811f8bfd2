"""The GPT reference models against transformers itself, and the properties the export relies on."""

from __future__ import annotations

import math

import pytest
import torch
import transformers as T

from trtformer.families import load_checkpoint, preset

SMALL = dict(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=4, pad_token_id=0)

CASES = [
    (T.GPT2Config, T.GPT2LMHeadModel, "lm"),
    (T.GPT2Config, T.GPT2ForSequenceClassification, "sequence-classification"),
    (T.GPT2Config, T.GPT2DoubleHeadsModel, "double-heads"),
    (T.OpenAIGPTConfig, T.OpenAIGPTLMHeadModel, "lm"),
    (T.OpenAIGPTConfig, T.OpenAIGPTForSequenceClassification, "sequence-classification"),
    (T.OpenAIGPTConfig, T.OpenAIGPTDoubleHeadsModel, "double-heads"),
]


@pytest.mark.parametrize(("cfg_cls", "model_cls", "head"), CASES, ids=[c[1].__name__ for c in CASES])
def test_matches_transformers(tmp_path, cfg_cls, model_cls, head):
    torch.manual_seed(0)
    hf = model_cls(cfg_cls(**SMALL, initializer_range=0.2)).eval()
    hf.save_pretrained(tmp_path)
    ours = load_checkpoint(tmp_path).model
    assert ours.config.head == head
    with torch.no_grad():
        if head == "double-heads":
            ids = torch.randint(1, 100, (2, 3, 9))
            mc = torch.tensor([[8, 4, 2], [1, 8, 5]])
            want, got = hf(ids, mc_token_ids=mc), ours(ids, mc_token_ids=mc)
            assert (want.mc_logits - got["mc_logits"]).abs().max() <= 1e-5
        else:
            ids = torch.randint(1, 100, (3, 11))
            want, got = hf(ids), ours(ids)
    assert want.logits.shape == got["logits"].shape
    assert (want.logits - got["logits"]).abs().max() <= 1e-5


def test_left_padding_matches_transformers_with_positions_from_mask(tmp_path):
    """transformers' generate derives positions from the mask exactly as trtformer does inside the model."""
    torch.manual_seed(0)
    hf = T.GPT2LMHeadModel(T.GPT2Config(**SMALL)).eval()
    hf.save_pretrained(tmp_path)
    ours = load_checkpoint(tmp_path).model
    ids = torch.randint(1, 100, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    with torch.no_grad():
        want = hf(ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, mask)["logits"]
    assert (want - got)[mask.bool()].abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-openai-gpt"])
def test_incremental_decoding_equals_full_recompute(name):
    model = preset(name).model
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    with torch.no_grad():
        full = model(ids, mask)
        out = model(ids[:, :5], mask[:, :5])
        logits = [out["logits"]]
        for t in range(5, 12):
            past = [(out[f"present.{i}.key"], out[f"present.{i}.value"]) for i in range(model.config.n_layer)]
            out = model(ids[:, t : t + 1], mask[:, : t + 1], past)
            logits.append(out["logits"])
    inc = torch.cat(logits, dim=1)
    real = mask.bool()
    assert (inc - full["logits"])[real].abs().max() <= 1e-5
    assert (out["present.1.value"] - full["present.1.value"]).transpose(1, 2)[real].abs().max() <= 1e-5


def test_padded_row_equals_unpadded_row():
    model = preset("tiny-gpt2").model
    ids = torch.randint(0, 512, (1, 6))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 6, dtype=torch.long)], dim=1)
    with torch.no_grad():
        a = model(ids)["logits"]
        b = model(padded, mask)["logits"][:, 3:]
    assert (a - b).abs().max() <= 1e-5


def test_gpt2_residual_projection_init_is_scaled():
    model = preset("gpt2-small-random").model
    n_layer = model.config.n_layer
    proj = torch.cat([b.attn.c_proj.weight.flatten() for b in model.h])
    fc = torch.cat([b.mlp.c_fc.weight.flatten() for b in model.h])
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(2 * n_layer), rel=0.02)
    assert fc.std().item() == pytest.approx(0.02, rel=0.02)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(124.4e6, rel=0.01)


def test_presets_are_deterministic():
    a, b = preset("tiny-gpt2").model, preset("tiny-gpt2").model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
