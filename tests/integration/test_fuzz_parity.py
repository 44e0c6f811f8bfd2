"""Property-based parity: ONNX Runtime against the torch reference on inputs hypothesis draws (batch, lengths, padding,
global tokens, state carried in), for every family, beyond the fixed cases `trtformer parity` generates."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trtformer
from trtformer.artifact.examples import padding_mask
from trtformer.parity import TOLERANCES, compare, valid_positions

FUZZ = settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
TOL = TOLERANCES["fp32"]


@pytest.fixture(scope="module")
def pairs(request):
    """(ort-cpu, torch) sessions per preset, closed at the end of the module."""
    opened = {}

    def get(preset: str):
        if preset not in opened:
            path = request.getfixturevalue("preset_artifact")(preset)
            opened[preset] = (trtformer.load(path, backend="ort-cpu"), trtformer.load(path, backend="torch"))
        return opened[preset]

    yield get
    for pair in opened.values():
        for s in pair:
            s.close()


def assert_match(session, got: dict, want: dict, mask) -> None:
    for name in got:
        c = compare("fuzz", name, got[name], want[name], TOL, valid_positions(session, name, got[name], mask))
        assert c.passed, c


@given(batch=st.integers(1, 3), past=st.integers(0, 12), seq=st.integers(1, 6), seed=st.integers(0, 2**16))
@FUZZ
def test_gpt_decode_from_any_past_matches_recomputation(pairs, batch, past, seq, seed):
    ort, ref = pairs("tiny-gpt2")
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 512, (batch, past + seq)).astype(np.int64)
    mask = padding_mask((batch, past + seq), rng, "left") if past + seq > 1 else np.ones((batch, 1), np.int64)
    mask[:, -1] = 1
    state = None
    if past:
        _, state = ort.step({"input_ids": ids[:, :past], "attention_mask": mask[:, :past]})
    got, _ = ort.step({"input_ids": ids[:, past:], "attention_mask": mask}, state)
    want, _ = ref.step({"input_ids": ids, "attention_mask": mask})
    assert_match(ort, {"logits": got["logits"]}, {"logits": want["logits"][:, past:]}, mask[:, past:])


@given(batch=st.integers(1, 4), seq=st.integers(1, 40), pad=st.booleans(), seed=st.integers(0, 2**16))
@FUZZ
def test_bert_forward_matches(pairs, batch, seq, pad, seed):
    ort, ref = pairs("tiny-bert")
    rng = np.random.default_rng(seed)
    feeds = {"input_ids": rng.integers(0, 512, (batch, seq)).astype(np.int64),
             "attention_mask": padding_mask((batch, seq), rng, "right") if pad else np.ones((batch, seq), np.int64),
             "token_type_ids": rng.integers(0, 2, (batch, seq)).astype(np.int64)}  # fmt: skip
    assert_match(ort, ort.run(feeds), ref.run(feeds), feeds["attention_mask"])


@given(batch=st.integers(1, 3), seq=st.integers(1, 70), pad=st.booleans(), n_global=st.integers(0, 4), seed=st.integers(0, 2**16))
@FUZZ
def test_longformer_forward_with_any_global_tokens_matches(pairs, batch, seq, pad, n_global, seed):
    ort, ref = pairs("tiny-longformer")
    rng = np.random.default_rng(seed)
    mask = padding_mask((batch, seq), rng, "right") if pad else np.ones((batch, seq), np.int64)
    glob = np.zeros_like(mask)
    for row in range(batch):
        real = np.flatnonzero(mask[row])
        glob[row, rng.choice(real, size=min(n_global, len(real)), replace=False)] = 1
    feeds = {"input_ids": rng.integers(0, 512, (batch, seq)).astype(np.int64), "attention_mask": mask,
             "global_attention_mask": glob}  # fmt: skip
    assert_match(ort, ort.run(feeds), ref.run(feeds), mask)


@given(batch=st.integers(1, 2), segments=st.lists(st.integers(1, 10), min_size=1, max_size=4), seed=st.integers(0, 2**16))
@FUZZ
def test_transfo_xl_memory_over_any_segments_matches(pairs, batch, segments, seed):
    from trtformer.runtime.stream import Stream

    ort, ref = pairs("tiny-transfo-xl")
    rng = np.random.default_rng(seed)
    streams = Stream(ort, batch), Stream(ref, batch)
    for length in segments:
        ids = rng.integers(0, 512, (batch, length)).astype(np.int64)
        got, want = (s.feed(ids) for s in streams)
        assert_match(ort, {"log_probs": got}, {"log_probs": want}, None)
    assert streams[0].memory_length == streams[1].memory_length == min(16, sum(segments))
    for name, array in streams[0].memory().items():
        assert compare("memory", name, array, streams[1].memory()[name], TOL).passed
