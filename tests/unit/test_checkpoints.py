"""Checkpoint loading: the file layouts transformers writes, and clear errors for the ones it cannot read."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T

from trtformer.errors import CheckpointError
from trtformer.families import load_checkpoint, load_model

SMALL = dict(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=4)


@pytest.fixture
def gpt2_dir(tmp_path):
    torch.manual_seed(0)
    model = T.GPT2LMHeadModel(T.GPT2Config(**SMALL)).eval()
    model.save_pretrained(tmp_path)
    return tmp_path, model


def logits_match(directory, hf_model):
    ids = torch.randint(0, 100, (1, 8))
    with torch.no_grad():
        return (load_checkpoint(directory).model(ids)["logits"] - hf_model(ids).logits).abs().max() <= 1e-5


def test_pytorch_model_bin(tmp_path, gpt2_dir):
    src, model = gpt2_dir
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((src / "config.json").read_text())
    torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    assert logits_match(tmp_path / "bin", model)


def test_sharded_safetensors(tmp_path):
    torch.manual_seed(0)
    model = T.GPT2LMHeadModel(T.GPT2Config(**SMALL)).eval()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert logits_match(tmp_path, model)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_unknown_preset_or_path():
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("tiny-gpt9")


def test_unknown_model_type(gpt2_dir):
    src, _ = gpt2_dir
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "llama"
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown model type 'llama'") as err:
        load_checkpoint(src)
    assert "gpt2" in err.value.hint


def test_missing_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path)


def test_missing_weights(gpt2_dir):
    src, _ = gpt2_dir
    (src / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="has no weights"):
        load_checkpoint(src)


def test_weights_that_do_not_fit_the_config(gpt2_dir):
    src, _ = gpt2_dir
    cfg = json.loads((src / "config.json").read_text())
    cfg["n_layer"] = 3
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"missing \['h\.2\."):
        load_checkpoint(src)


def test_unsupported_architecture(gpt2_dir):
    src, _ = gpt2_dir
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["GPT2ForQuestionAnswering"]
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="not supported"):
        load_checkpoint(src)
