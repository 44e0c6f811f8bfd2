"""BERT, RoBERTa, ALBERT and ELECTRA reference models against transformers, every head, with padding."""

from __future__ import annotations

import json

import pytest
import torch
from bert_checkpoints import architectures, hf_model, save_hf

from trtformer.errors import CheckpointError
from trtformer.families import load_model
from trtformer.models.bert import Bert, BertConfig


def inputs(pad_id: int, type_vocab: int):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 99, (3, 11), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    ids = ids.masked_fill(mask == 0, pad_id)
    types = torch.zeros_like(ids)
    if type_vocab > 1:
        types[:, 5:] = 1
    return ids, mask, types


@pytest.mark.parametrize(("variant", "head"), architectures())
def test_matches_transformers(tmp_path, variant, head):
    hf = hf_model(variant, head)
    hf.save_pretrained(tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.family == "bert" and loaded.config.variant == variant
    ids, mask, types = inputs(hf.config.pad_token_id, hf.config.type_vocab_size)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = loaded.model(ids, mask, types)
    assert got, "no outputs"
    real = mask.bool()
    for name, value in got.items():
        ref = want[name]
        if value.dim() >= 2 and value.shape[:2] == ids.shape:  # per-token outputs: real tokens only
            value, ref = value[real], ref[real]
        assert value.shape == ref.shape, name
        assert (value - ref).abs().max() <= 1e-5, f"{variant} {head} {name}"


def test_albert_shares_layers_across_groups(tmp_path):
    hf = hf_model("albert", "Model", num_hidden_layers=4, num_hidden_groups=2, inner_group_num=2)
    hf.save_pretrained(tmp_path)
    model = load_model(tmp_path).model
    assert len(model.encoder.layer) == 4  # 2 groups x 2 inner layers, each group run over 2 depths
    assert model.encoder.order == [0, 1, 0, 1, 2, 3, 2, 3]
    ids, mask, types = inputs(0, 2)
    with torch.no_grad():
        diff = (model(ids, mask, types)["last_hidden_state"] - hf(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state)
    assert diff[mask.bool()].abs().max() <= 1e-5


@pytest.mark.parametrize("variant", ["bert", "roberta"])
def test_padded_rows_match_unpadded_runs(variant):
    cfg = BertConfig(variant=variant, vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=64, pad_token_id=1 if variant == "roberta" else 0)
    model = Bert(cfg).init_weights(0).eval()
    ids = torch.randint(2, 99, (1, 6))
    padded = torch.cat([ids, torch.full((1, 4), cfg.pad_token_id)], 1)
    mask = torch.cat([torch.ones(1, 6, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)], 1)
    with torch.no_grad():
        alone = model(ids)["last_hidden_state"]
        in_batch = model(padded, mask)["last_hidden_state"][:, :6]
    assert (alone - in_batch).abs().max() <= 1e-6


def test_tied_decoder_saved_only_as_embeddings_loads(tmp_path):
    save_hf("bert", "ForMaskedLM", tmp_path)
    model = load_model(tmp_path).model
    assert torch.equal(model.mlm.decoder.weight, model.embeddings.word_embeddings.weight)


def test_unsupported_architecture_and_position_type_are_named(tmp_path):
    save_hf("bert", "Model", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "architectures": ["BertLMHeadModel"]}))
    with pytest.raises(CheckpointError, match="BertLMHeadModel"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "position_embedding_type": "relative_key"}))
    with pytest.raises(CheckpointError, match="relative_key"):
        load_model(tmp_path)


def test_config_rejects_heads_a_variant_lacks():
    with pytest.raises(ValueError, match="next-sentence"):
        BertConfig(variant="roberta", head="next-sentence")
