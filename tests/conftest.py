"""Shared fixtures: tiny Hugging Face checkpoints saved to disk and artifacts exported from them (once per run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY = dict(vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4)


def save_hf(model, directory: Path) -> Path:
    model.save_pretrained(directory)
    return directory


def train_tokenizer(directory: Path, vocab_size: int) -> None:
    """A byte-level BPE tokenizer trained offline on a few sentences, saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = ["the quick brown fox jumps over the lazy dog", "transformers export to onnx and tensorrt", "hello world"] * 20
    tok.train_from_iterator(text, trainer)
    tok.save(str(directory / "tokenizer.json"))


@pytest.fixture(scope="session")
def hf_gpt2_dir(tmp_path_factory) -> Path:
    """A tiny GPT-2 LM with a larger init range, so greedy decoding produces varied tokens."""
    import transformers as T

    torch.manual_seed(0)
    cfg = T.GPT2Config(**TINY, initializer_range=0.3, bos_token_id=0, eos_token_id=0)
    d = save_hf(T.GPT2LMHeadModel(cfg).eval(), tmp_path_factory.mktemp("hf-gpt2"))
    train_tokenizer(d, TINY["vocab_size"])
    return d


@pytest.fixture(scope="session")
def hf_openai_gpt_dir(tmp_path_factory) -> Path:
    import transformers as T

    torch.manual_seed(1)
    cfg = T.OpenAIGPTConfig(**TINY, initializer_range=0.3)
    return save_hf(T.OpenAIGPTLMHeadModel(cfg).eval(), tmp_path_factory.mktemp("hf-openai-gpt"))


def _export(tmp_path_factory, source, name, **kw) -> Path:
    import trtformer

    return trtformer.export(source, tmp_path_factory.mktemp("artifacts") / name, **kw)


@pytest.fixture(scope="session")
def gpt2_artifact(tmp_path_factory, hf_gpt2_dir) -> Path:
    return _export(tmp_path_factory, hf_gpt2_dir, "gpt2")


@pytest.fixture(scope="session")
def gpt2_fp16_artifact(tmp_path_factory, hf_gpt2_dir) -> Path:
    return _export(tmp_path_factory, hf_gpt2_dir, "gpt2-fp16", precision="fp16")


@pytest.fixture(scope="session")
def openai_gpt_artifact(tmp_path_factory, hf_openai_gpt_dir) -> Path:
    return _export(tmp_path_factory, hf_openai_gpt_dir, "openai-gpt")


@pytest.fixture
def artifact_copy(tmp_path, gpt2_artifact) -> Path:
    """A private copy of the GPT-2 artifact, for tests that damage it."""
    import shutil

    return Path(shutil.copytree(gpt2_artifact, tmp_path / "copy"))


@pytest.fixture(scope="session")
def preset_artifact(tmp_path_factory):
    """export(preset, **options) once per test run: tests that only read an artifact share it."""
    made: dict[tuple, Path] = {}

    def get(preset: str, **options) -> Path:
        key = (preset, *sorted(options.items()))
        if key not in made:
            name = "-".join([preset, *(f"{k}-{v}" for k, v in sorted(options.items()))])
            made[key] = _export(tmp_path_factory, preset, name, **options)
        return made[key]

    return get
