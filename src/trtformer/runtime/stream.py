"""Streaming a long token sequence through a model with segment memory (Transformer-XL), on any backend.

A Stream feeds [batch, seg] segments through a Session and carries the memory as the Session's state, so it
stays where the backend keeps it (OrtValues bound through IO binding, torch tensors) and only the head output
comes back as numpy. The rows of a batch are independent streams that advance together: Transformer-XL never
attends across rows. `log_likelihood` scores every next token of a sequence, segment by segment.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .backends.base import State

# Head outputs that already are log-probabilities (Transformer-XL's adaptive softmax); others are logits.
LOG_PROB_OUTPUTS = ("log_probs",)


class Stream:
    """Segments in, head outputs out, the memory carried between calls; `reset` starts every row afresh."""

    def __init__(self, session, batch: int = 1):
        kinds = session.graph.state_kinds
        if kinds != {"memory"}:
            raise InputError(f"streaming needs a model with segment memory (Transformer-XL); {session.artifact.path} "
                             f"has {'state of kind ' + ', '.join(sorted(kinds)) if kinds else 'no state'}")  # fmt: skip
        if batch < 1:
            raise InputError(f"a stream needs batch >= 1, got {batch}")
        heads = [n for n in session.outputs if n not in session.output_to_state]
        if len(heads) != 1:
            raise InputError(f"streaming needs one head output besides the memory; the model has {heads}")
        self.session = session
        self.batch = batch
        self.head = heads[0]
        pair = next(iter(session.state_pairs.values()))
        self.memory_dim = session.graph.state_dim(pair)
        self.ids_name = session.graph.role_input("ids").name
        self.state: State | None = None
        self.segments = 0
        self.tokens = 0  # per row

    @property
    def memory_length(self) -> int:
        """Rows of memory carried into the next segment (0 before the first)."""
        return 0 if self.state is None else self.state.sizes[self.memory_dim]

    @property
    def memory_limit(self) -> int | None:
        """The most memory rows the model keeps (its mem_len); None when the manifest does not bound it."""
        dim = self.session.graph.dims.get(self.memory_dim)
        return None if dim is None else dim.max

    def reset(self) -> None:
        """Forget the memory: the next segment is the first of new sequences."""
        self.state = None
        self.segments = self.tokens = 0

    def feed(self, ids) -> np.ndarray:
        """One segment, [batch, seg] token ids ([seg] for a batch of 1) -> the head output [batch, seg, vocab]."""
        ids = np.asarray(ids)
        if ids.ndim == 1 and self.batch == 1:
            ids = ids[None, :]
        if ids.dtype.kind in "iu":
            ids = ids.astype(np.int64, copy=False)
        if ids.ndim != 2 or ids.shape[0] != self.batch:
            raise InputError(f"a segment must be [batch={self.batch}, seg] token ids, got shape {ids.shape}")
        out, self.state = self.session.step({self.ids_name: ids}, self.state, fetch=[self.head])
        self.segments += 1
        self.tokens += ids.shape[1]
        return out[self.head]

    def log_probs(self, out: np.ndarray) -> np.ndarray:
        """The head output as log-probabilities (float64): log_softmax for logits, as is for log_probs."""
        out = out.astype(np.float64)
        if self.head in LOG_PROB_OUTPUTS:
            return out
        peak = out.max(-1, keepdims=True)
        return out - peak - np.log(np.exp(out - peak).sum(-1, keepdims=True))

    def memory(self) -> dict[str, np.ndarray]:
        """A numpy copy of the memory now carried, by state input name (for inspection; feeding keeps it on the backend)."""
        return {} if self.state is None else self.session.state_to_numpy(self.state)


@dataclass
class Likelihood:
    """The next-token log-likelihood of a sequence (or of each row of a batch, pooled)."""

    tokens: int  # tokens given, per row
    scored: int  # predictions scored, all rows together
    segments: int
    segment_length: int
    total_log_prob: float  # natural log
    seconds: list[float] = field(default_factory=list)  # per segment

    @property
    def nll(self) -> float:
        """Mean negative log-likelihood per scored token, in nats."""
        return -self.total_log_prob / self.scored

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll)

    @property
    def ms_per_segment(self) -> float:
        return 1e3 * sum(self.seconds) / len(self.seconds)


def log_likelihood(session, tokens: Sequence[int] | Sequence[Sequence[int]] | np.ndarray, seg_len: int | None = None) -> Likelihood:
    """Score every token after the first given all before it: the sequence (or each row of [batch, n]) goes in
    segments of `seg_len` (default: as long as the memory, as the paper trains), the memory carried between
    them, and each position's log-probability of the next token is summed. The last token is only a target,
    so n - 1 tokens are fed and scored per row."""
    ids = np.asarray(tokens)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise InputError(f"tokens must be integer ids, [n] or [batch, n]; got {ids.dtype} of shape {ids.shape}")
    if ids.shape[1] < 2:
        raise InputError(f"scoring needs at least 2 tokens per row, got {ids.shape[1]}")
    stream = Stream(session, batch=ids.shape[0])
    seg_len = seg_len if seg_len is not None else stream.memory_limit or 128
    if seg_len < 1:
        raise InputError(f"the segment length must be >= 1, got {seg_len}")
    # The last token is never fed, so the Session cannot check it: check the range here, for every token.
    lo, hi = stream.session.inputs[stream.ids_name].value_range or (0, np.iinfo(np.int64).max)
    bad = np.argwhere((ids < lo) | (ids > hi))
    if bad.size:
        row, pos = (int(i) for i in bad[0])
        where = f"position {pos}" + (f" of row {row}" if ids.shape[0] > 1 else "")
        raise InputError(f"token {int(ids[row, pos])} at {where} is outside the vocabulary [{lo}, {hi}]")
    ids = ids.astype(np.int64, copy=False)
    total, seconds = 0.0, []
    for start in range(0, ids.shape[1] - 1, seg_len):
        segment = ids[:, start : min(start + seg_len, ids.shape[1] - 1)]  # [batch, seg]
        targets = ids[:, start + 1 : start + 1 + segment.shape[1]]  # the next token of each position
        t0 = time.perf_counter()
        out = stream.feed(segment)
        seconds.append(time.perf_counter() - t0)
        log_probs = stream.log_probs(out)  # [batch, seg, vocab]
        total += float(np.take_along_axis(log_probs, targets[..., None], axis=-1).sum())
    scored = ids.shape[0] * (ids.shape[1] - 1)
    return Likelihood(ids.shape[1], scored, len(seconds), seg_len, total, seconds)
