"""Sampling filters and left padding, on plain arrays."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from trtformer.artifact.examples import pad_rows
from trtformer.runtime.generate import filter_logits


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 20), st.integers(0, 10_000))
def test_top_k_keeps_exactly_the_k_largest(k, seed):
    logits = np.random.default_rng(seed).normal(size=(3, 20))
    kept = np.isfinite(filter_logits(logits, k, 1.0))
    assert (kept.sum(-1) == k).all()
    for row in range(3):
        assert set(np.flatnonzero(kept[row])) == set(np.argsort(-logits[row])[:k])


@settings(max_examples=50, deadline=None)
@given(st.floats(0.05, 0.99), st.integers(0, 10_000))
def test_top_p_keeps_the_smallest_prefix_reaching_p(p, seed):
    logits = np.random.default_rng(seed).normal(size=(2, 30)) * 3
    kept = np.isfinite(filter_logits(logits, 0, p))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for row in range(2):
        mass = probs[row][kept[row]].sum()
        assert mass >= p - 1e-9
        # dropping the least likely kept token would fall below p
        assert mass - probs[row][kept[row]].min() < p + 1e-9


def test_pad_rows_aligns_rows_on_the_padding_side():
    ids, mask = pad_rows([[1, 2, 3], [4]], "left", pad_id=9)
    np.testing.assert_array_equal(ids, [[1, 2, 3], [9, 9, 4]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1]])
    ids, mask = pad_rows([[1, 2, 3], [4]], "right", pad_id=9, length=4)
    np.testing.assert_array_equal(ids, [[1, 2, 3, 9], [4, 9, 9, 9]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [1, 0, 0, 0]])
