"""The T5 reference model against transformers itself (v1.0 and gated v1.1 configs, the encoder alone, an untied
head), its relative-position buckets, and cached decoder steps against the whole forward."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file

from trtformer.families import load_checkpoint, preset
from trtformer.families.seq2seq import to_kwargs
from trtformer.models.t5 import RelativePositionBias

SMALL = dict(vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
             relative_attention_num_buckets=16, relative_attention_max_distance=20)  # fmt: skip

CASES = [
    (T.T5ForConditionalGeneration, "generation", {}),
    (T.T5ForConditionalGeneration, "generation", {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}),
    (T.T5Model, "generation", {"feed_forward_proj": "gated-silu"}),
    (T.T5EncoderModel, "encoder", {}),
]


def source(batch: int = 3, length: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows longer than relative_attention_max_distance, so the far buckets are used too."""
    torch.manual_seed(1)
    ids = torch.randint(2, 99, (batch, length))
    mask = torch.ones_like(ids)
    for row, real in enumerate([length, length - 4, length - 11][:batch]):
        mask[row, real:] = 0
        ids[row, real:] = 0
    return ids, mask


@pytest.fixture(scope="module", params=CASES, ids=["t5-relu", "t5-gated-gelu", "T5Model", "T5EncoderModel"])
def pair(request, tmp_path_factory):
    cls, head, extra = request.param
    torch.manual_seed(0)
    hf = cls(T.T5Config(**SMALL, **extra)).eval()
    path = tmp_path_factory.mktemp(cls.__name__)
    hf.save_pretrained(path)
    return hf, load_checkpoint(path).model, head


def test_every_parameter_is_transformers_own(pair):
    hf, ours, head = pair
    assert ours.config.head == head
    theirs, mine = hf.state_dict(), ours.state_dict()
    for name, value in mine.items():
        assert torch.equal(value, theirs[name]), name
    assert {k for k in set(theirs) - set(mine) if not k.endswith("embed_tokens.weight")} <= {"lm_head.weight"}


def test_outputs_match_transformers(pair):
    hf, ours, head = pair
    ids, mask = source()
    real = mask.bool()
    with torch.no_grad():
        if head == "encoder":
            want, got = hf(input_ids=ids, attention_mask=mask), ours(ids, mask)
            assert (got["last_hidden_state"] - want.last_hidden_state)[real].abs().max() <= 1e-5
            return
        target = torch.randint(0, 99, (3, 7))
        want = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=target)
        got = ours(ids, mask, target)
        if isinstance(hf, T.T5Model):  # no LM head: what the tied, rescaled head makes of the decoder's states
            want_logits = torch.nn.functional.linear(want.last_hidden_state * 32**-0.5, hf.shared.weight)
        else:
            want_logits = want.logits
        assert ours.config.scale_decoder_outputs == hf.config.scale_decoder_outputs
        assert (got["logits"] - want_logits).abs().max() <= 1e-4
        assert (got["encoder_hidden_states"] - want.encoder_last_hidden_state)[real].abs().max() <= 1e-5


def test_an_untied_head_is_read_from_the_checkpoint(tmp_path):
    """Checkpoints written before transformers 5 (v1.1, flan) keep their own lm_head and do not rescale."""
    torch.manual_seed(0)
    hf = T.T5ForConditionalGeneration(T.T5Config(**SMALL, feed_forward_proj="gated-gelu")).eval()
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    cfg.pop("scale_decoder_outputs", None)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    weights = load_file(tmp_path / "model.safetensors")
    head = torch.randn(99, 32)
    save_file({**weights, "lm_head.weight": head}, tmp_path / "model.safetensors")
    ours = load_checkpoint(tmp_path).model
    assert not ours.config.tie_word_embeddings and not ours.config.scale_decoder_outputs
    ids, mask = source()
    target = torch.randint(0, 99, (3, 5))
    with torch.no_grad():
        states = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=target, output_hidden_states=True).decoder_hidden_states[-1]
        got = ours(ids, mask, target)["logits"]
    assert (got - states @ head.T).abs().max() <= 1e-4


@pytest.mark.parametrize("bidirectional", [True, False])
def test_position_buckets_match_transformers(bidirectional):
    cfg = preset("tiny-t5").model.config
    bias = RelativePositionBias(cfg, bidirectional)
    positions = torch.arange(300)
    relative = positions[None, :] - positions[:, None]
    want = T.models.t5.modeling_t5.T5Attention._relative_position_bucket(
        relative, bidirectional=bidirectional, num_buckets=cfg.relative_attention_num_buckets,
        max_distance=cfg.relative_attention_max_distance)  # fmt: skip
    bias.weight.data = torch.arange(cfg.relative_attention_num_buckets).float()[:, None].repeat(1, cfg.num_heads)
    got = bias(positions, positions)[0, 0].long()  # each bucket's bias is its own number
    assert torch.equal(got, want)


def test_decoder_steps_with_the_cache_equal_the_whole_forward():
    model = preset("tiny-t5-gated").model
    ids, mask = source(2, 12)
    target = torch.randint(0, 512, (2, 6))
    with torch.no_grad():
        full = model(ids, mask, target)
        encoded = model(ids, mask)
        cross = {k: v for k, v in encoded.items() if k.startswith("cross.")}
        past = {f"past.{i}.{p}": torch.zeros(2, 4, 0, 16) for i in range(2) for p in ("key", "value")}
        logits = []
        for t in range(target.shape[1]):
            out = model(**to_kwargs({"decoder_input_ids": target[:, t : t + 1], "encoder_attention_mask": mask, **past, **cross}))
            logits.append(out["logits"])
            past = {k.replace("present", "past"): v for k, v in out.items() if k.startswith("present.")}
    assert (torch.cat(logits, 1) - full["logits"]).abs().max() <= 1e-5
