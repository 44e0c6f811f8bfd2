"""Example inputs for a graph, from its input roles: the one generator behind export tracing, parity cases and
benchmarks, so none of them matches on input names or knows a family.

Integer inputs draw from their value range; a padding mask is all ones, or with `pad` every row but the first
loses a random number of positions on the graph's padding side; global tokens follow the pattern parity needs
(first token, none, a few elsewhere); a choice index points at a real position; float inputs (state, features)
are standard normal. numpy has no bfloat16, so bf16 tensors come as float32 for the caller to cast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from . import shapes
from .dtypes import dtype
from .records import GraphSpec


def example_sizes(graph: GraphSpec, batch: int, length: int, state: int = 0) -> dict[str, int]:
    """Sizes for every dim of `graph`: `batch` rows of `length` new positions over `state` carried ones; every
    other dim (GPT's choices) at its typical size."""
    sizes: dict[str, int] = {}
    ids = graph.role_input("ids")
    if ids is not None and shapes.is_symbol(ids.shape[0]):
        sizes[ids.shape[0]] = batch
    if graph.sequence_dim is not None:
        sizes[graph.sequence_dim] = length
    sizes.update({d: state for d in graph.empty_state_sizes() if isinstance(d, str)})
    for name, dim in graph.dims.items():
        sizes.setdefault(name, max(dim.opt, dim.min))
    return sizes


def example_feeds(
    graph: GraphSpec,
    sizes: Mapping[str, int],
    rng: np.random.Generator,
    *,
    names: Sequence[str] | None = None,
    pad: bool = False,
    given: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Arrays for the inputs `names` (all by default) at `sizes`; `given` arrays are taken as they are."""
    feeds = dict(given or {})
    wanted = list(names) if names is not None else graph.input_names
    # In input order, so that a graph's cases draw the same numbers from `rng` whoever asks for them; the padding
    # mask comes before the global tokens and choice indices placed among its real positions in every graph so far.
    for name in wanted:
        if name in feeds:
            continue
        spec = graph.input(name)
        shape = shapes.resolve_shape(spec.shape, sizes)
        mask = next((feeds[t.name] for t in graph.with_role("padding-mask") if t.name in feeds), None)
        feeds[name] = _example(spec, shape, rng, graph.padding_side, pad, mask).astype(dtype(spec.dtype).host, copy=False)
    return feeds


def _example(spec, shape: tuple[int, ...], rng: np.random.Generator, side: str, pad: bool, mask) -> np.ndarray:
    if spec.role == "padding-mask":
        return padding_mask(shape, rng, side) if pad else np.ones(shape, np.int64)
    if spec.role == "global-mask":
        real = mask if mask is not None and mask.shape == shape else np.ones(shape, np.int64)
        return global_tokens(real, rng)
    if spec.role == "choice-index":
        return rng.integers(0, max(1, _positions(mask, shape)), shape).astype(np.int64)
    if not dtype(spec.dtype).floating:
        lo, hi = spec.value_range or (0, 1)
        return rng.integers(lo, hi + 1, shape).astype(np.int64)
    return rng.standard_normal(shape).astype(np.float32)


def _positions(mask, shape) -> int:
    """How many positions a choice index may point at: the mask's last axis when known."""
    return mask.shape[-1] if mask is not None else shape[-1] + 1


def padding_mask(shape: tuple[int, ...], rng: np.random.Generator, side: str) -> np.ndarray:
    """A 0/1 mask whose rows after the first lose 1..n-1 positions on `side` (the last axis runs over positions)."""
    mask = np.ones(shape, np.int64)
    n = shape[-1]
    for row in range(1, shape[0]):
        if n < 2:
            break
        cut = int(rng.integers(1, n))
        mask[row, ..., slice(None, cut) if side == "left" else slice(n - cut, None)] = 0
    return mask


def global_tokens(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Global tokens among each row's real ones: row 0 the first (as classification), row 1 none, row 2 up to three
    elsewhere, later rows the first and up to three elsewhere (as a QA question and marked entities)."""
    glob = np.zeros_like(mask)
    for row in range(mask.shape[0]):
        real = np.flatnonzero(mask[row])
        if row != 2:
            glob[row, real[:1]] = row != 1
        if row >= 2 and len(real) > 1:
            glob[row, rng.choice(real[1:], size=min(3, len(real) - 1), replace=False)] = 1
    return glob


def pad_rows(rows: Sequence[Sequence[int]], side: str, pad_id: int, length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ragged token rows -> ([n, length] ids, [n, length] 0/1 mask), padded on `side` (left for decoders, so that
    new tokens line up at the end; right for encoders)."""
    length = length or max(len(r) for r in rows)
    ids = np.full((len(rows), length), pad_id, np.int64)
    mask = np.zeros((len(rows), length), np.int64)
    for i, row in enumerate(rows):
        if len(row):
            span = slice(length - len(row), length) if side == "left" else slice(0, len(row))
            ids[i, span] = row
            mask[i, span] = 1
    return ids, mask
