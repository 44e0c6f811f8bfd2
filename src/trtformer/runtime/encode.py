"""Encoders (BERT family, Longformer) over ragged batches: padding, masks, batching, named outputs.

`encode` takes sequences of different lengths, runs them in batches of `batch_size` (each padded to its own
longest sequence, on the side the model pads), and returns every output of the model under its manifest
name. Outputs with a sequence axis come back padded to the longest sequence overall, with zeros at padding
positions, beside the `attention_mask` that says which positions are real.

Longformer's `global_attention_mask` comes from the caller (rows of 0/1 like input_ids, or positions through
`global_mask_rows`) or, by default, from the head's convention as in transformers: the first token for sequence
classification, the question (the tokens before the first sep token) for question answering, none otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..artifact import shapes
from ..artifact.examples import pad_rows
from ..errors import InputError
from .ids import id_rows
from .session import Session

log = logging.getLogger(__name__)


@dataclass
class EncodeResult:
    outputs: dict[str, np.ndarray]  # manifest output name -> array over all sequences
    attention_mask: np.ndarray  # [n, longest]: 1 where outputs with a sequence axis hold a real token
    lengths: list[int]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]


def _paired_rows(session: Session, role: str, name: str, value, rows: list[list[int]]) -> list[list[int]] | None:
    """Per-token rows that go with input_ids (token_type_ids, global_attention_mask): same count, same lengths."""
    if value is None:
        return None
    paired = id_rows(name, value)
    if session.graph.role_input(role) is None:
        raise InputError(f"this model takes no {name}")
    bad = [i for i, (a, b) in enumerate(zip(rows, paired, strict=False)) if len(a) != len(b)]
    if len(paired) != len(rows) or bad:
        raise InputError(f"{name} must match input_ids row for row; row {bad[0] if bad else min(len(paired), len(rows))} differs")
    return paired


def global_mask_rows(rows, positions) -> list[list[int]]:
    """A global_attention_mask for `rows` from token positions: one list for every row, or one list per row."""
    rows = id_rows("input_ids", rows)
    per_row = positions if positions and isinstance(positions[0], Sequence | np.ndarray) else [positions] * len(rows)
    per_row = id_rows("global token positions", per_row)
    if len(per_row) != len(rows):
        raise InputError(f"global token positions given for {len(per_row)} sequences, there are {len(rows)}")
    out = []
    for i, (row, where) in enumerate(zip(rows, per_row, strict=True)):
        mask = [0] * len(row)
        for p in where:
            if not 0 <= p < len(row):
                raise InputError(f"global token position {p} is outside sequence {i} ({len(row)} tokens)")
            mask[p] = 1
        out.append(mask)
    return out


def default_global_mask(config: dict, ids: np.ndarray) -> np.ndarray:
    """transformers' default global tokens for the head (as the reference model's default_global_mask)."""
    glob = np.zeros_like(ids)
    if config.get("head") == "sequence-classification":
        glob[:, 0] = 1
    elif config.get("head") == "question-answering":
        glob = (np.cumsum(ids == config["sep_token_id"], axis=-1) == 0).astype(ids.dtype)
    return glob


def encode(
    session: Session,
    input_ids,
    token_type_ids=None,
    batch_size: int = 32,
    fetch: Sequence[str] | None = None,
    global_attention_mask=None,
) -> EncodeResult:
    """Run a stateless encoder over `input_ids` (a list of token-id lists of any lengths, or a 2-D array).

    token_type_ids and global_attention_mask (Longformer) go row for row with input_ids; without a global mask
    a Longformer gets its head's default (see the module docstring)."""
    if session.has_state:
        raise InputError("encode runs stateless encoders; this model carries state (use generate or a stream)")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    rows = id_rows("input_ids", input_ids)
    if not rows:
        raise InputError("input_ids is empty: give at least one sequence")
    empty = [i for i, r in enumerate(rows) if not r]
    if empty:
        raise InputError(f"input_ids[{empty[0]}] is empty: every sequence needs at least one token")
    graph = session.graph
    types = _paired_rows(session, "token-types", "token_type_ids", token_type_ids, rows)
    glob = _paired_rows(session, "global-mask", "global_attention_mask", global_attention_mask, rows)
    side = graph.padding_side
    ids_in, mask_in = graph.role_input("ids"), graph.role_input("padding-mask")
    if ids_in is None or mask_in is None:
        raise InputError("encode needs a model with token ids and a padding mask; call Session.run for this one")
    types_in, glob_in = graph.role_input("token-types"), graph.role_input("global-mask")
    pad_id = int(session.config.get("pad_token_id") or 0)
    longest = max(len(r) for r in rows)
    fetch = list(fetch) if fetch is not None else list(session.outputs)
    results: dict[str, list[np.ndarray]] = {n: [] for n in fetch}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        ids, mask = pad_rows(chunk, side, pad_id)
        feeds = {ids_in.name: ids, mask_in.name: mask}
        if types_in is not None:
            feeds[types_in.name] = pad_rows(types[start : start + batch_size], side, 0)[0] if types else np.zeros_like(ids)
        if glob_in is not None:
            feeds[glob_in.name] = (pad_rows(glob[start : start + batch_size], side, 0)[0] if glob
                                   else default_global_mask(session.config, ids) * mask)
        extra = [n for n in session.stateless_inputs if n not in feeds]
        if extra:
            raise InputError(f"encode cannot fill the inputs {extra}; call Session.run with them")
        log.debug("encode: batch %d-%d, length %d", start, start + len(chunk), ids.shape[1])
        out = session.run(feeds, fetch)
        for name in fetch:
            results[name].append(_to_length(out[name], graph.sequence_axis(session.outputs[name]), mask, longest, side))
    _, mask_all = pad_rows(rows, side, pad_id, longest)
    return EncodeResult({n: np.concatenate(v, axis=0) for n, v in results.items()}, mask_all, [len(r) for r in rows])


def _to_length(array: np.ndarray, axis: int | None, mask: np.ndarray, longest: int, side: str) -> np.ndarray:
    """Zero the padding positions of an output with a sequence axis and pad that axis to `longest`."""
    if axis is None:
        return array
    keep = shapes.along_axis(mask.astype(bool), axis, array.ndim)
    array = np.where(keep, array, np.zeros((), array.dtype))
    widths = [(0, 0)] * array.ndim
    widths[axis] = (longest - array.shape[axis], 0) if side == "left" else (0, longest - array.shape[axis])
    return np.pad(array, widths)
