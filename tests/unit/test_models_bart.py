"""The BART reference model against transformers itself (every head, padding), and the decoder step the export relies
on: cached steps equal the whole forward recomputed."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from trtformer.families import load_checkpoint, preset
from trtformer.families.seq2seq import to_kwargs

SMALL = dict(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=2,
             encoder_ffn_dim=48, decoder_ffn_dim=40, max_position_embeddings=40, init_std=0.2)  # fmt: skip

CASES = [
    (T.BartForConditionalGeneration, "generation", {}),
    (T.BartModel, "generation", {"scale_embedding": True, "activation_function": "relu"}),
    (T.BartForSequenceClassification, "sequence-classification", {"num_labels": 3}),
    (T.BartForQuestionAnswering, "question-answering", {}),
]


def source(batch: int = 3, length: int = 9, eos: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded rows that end in eos, as a tokenizer makes them."""
    torch.manual_seed(1)
    ids = torch.randint(3, 99, (batch, length))
    mask = torch.ones_like(ids)
    for row, real in enumerate([length, length - 3, length - 5][:batch]):
        ids[row, real - 1] = eos
        ids[row, real:] = 1
        mask[row, real:] = 0
    return ids, mask


@pytest.fixture(scope="module", params=CASES, ids=[c[0].__name__ for c in CASES])
def pair(request, tmp_path_factory):
    cls, head, extra = request.param
    torch.manual_seed(0)
    hf = cls(T.BartConfig(**SMALL, **extra)).eval()
    if isinstance(hf, T.BartForConditionalGeneration):
        torch.nn.init.normal_(hf.final_logits_bias)  # a buffer transformers leaves at zero: check that it is read
    path = tmp_path_factory.mktemp(cls.__name__)
    hf.save_pretrained(path)
    return hf, load_checkpoint(path).model, head


def test_every_parameter_is_transformers_own(pair):
    hf, ours, head = pair
    assert ours.config.head == head
    theirs = {k.removeprefix("model."): v for k, v in hf.state_dict().items()}
    mine = ours.state_dict()
    if isinstance(hf, T.BartModel):  # no LM head: the tied one reads `shared` with a zero bias
        theirs["final_logits_bias"] = torch.zeros(1, hf.config.vocab_size)
    for name, value in mine.items():
        assert torch.equal(value, theirs[name]), name
    tied = {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"}
    assert set(theirs) - set(mine) <= tied
    for name in tied & set(theirs):
        assert torch.equal(theirs[name], mine["shared.weight"])


def test_outputs_match_transformers(pair):
    hf, ours, head = pair
    ids, mask = source()
    with torch.no_grad():
        if head == "generation":
            target = torch.randint(3, 99, (3, 6))
            want = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=target)
            got = ours(ids, mask, target)
            encoder_states = want.encoder_last_hidden_state
            if isinstance(hf, T.BartModel):  # no LM head: compare the hidden states the tied head would read
                want_logits = torch.nn.functional.linear(want.last_hidden_state, hf.shared.weight)
            else:
                want_logits = want.logits
            assert (got["logits"] - want_logits).abs().max() <= 1e-4
            real = mask.bool()
            assert (got["encoder_hidden_states"] - encoder_states)[real].abs().max() <= 1e-5
        elif head == "sequence-classification":
            want, got = hf(input_ids=ids, attention_mask=mask), ours(ids, mask)
            assert (got["logits"] - want.logits).abs().max() <= 1e-5
        else:
            want, got = hf(input_ids=ids, attention_mask=mask), ours(ids, mask)
            for name in ("start_logits", "end_logits"):
                assert (got[name] - getattr(want, name)).abs().max() <= 1e-5


def test_decoder_steps_with_the_cache_equal_the_whole_forward():
    model = preset("tiny-bart").model
    ids, mask = source(2, 11)
    target = torch.randint(3, 512, (2, 7))
    with torch.no_grad():
        full = model(ids, mask, target)
        encoded = model(ids, mask)  # the encoder graph: hidden states and the cross keys/values, once
        cross = {k: v for k, v in encoded.items() if k.startswith("cross.")}
        past = {}
        logits = []
        for t in range(target.shape[1]):
            named = {"decoder_input_ids": target[:, t : t + 1], "encoder_attention_mask": mask, **past, **cross}
            if not past:
                named.update({f"past.{i}.{p}": torch.zeros(2, 4, 0, 16) for i in range(2) for p in ("key", "value")})
            out = model(**to_kwargs(named))
            logits.append(out["logits"])
            past = {k.replace("present", "past"): v for k, v in out.items() if k.startswith("present.")}
            assert past["past.1.value"].shape == (2, 4, t + 1, 16)
    assert (torch.cat(logits, 1) - full["logits"]).abs().max() <= 1e-5
    assert torch.equal(encoded["encoder_hidden_states"], full["encoder_hidden_states"])
