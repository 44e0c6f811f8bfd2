"""A Session: an artifact on a backend, with every input validated before the backend sees it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import backends, shapes
from .artifact import Artifact
from .backends.base import State


class Session:
    def __init__(self, artifact: Artifact, backend):
        self.artifact = artifact
        self.backend = backend
        self.inputs = {t["name"]: t for t in artifact.inputs}
        self.outputs = {t["name"]: t for t in artifact.outputs}
        self.state_pairs = {s["input"]: s for s in artifact.state}
        self.output_to_state = {s["output"]: s["input"] for s in artifact.state}

    @classmethod
    def open(cls, path: str | Path, backend: str = "ort-cpu", verify: bool = True, **options) -> Session:
        artifact = Artifact.load(path, verify=verify)
        return cls(artifact, backends.create(backend, artifact, **options))

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def config(self) -> dict:
        return self.artifact.config

    @property
    def has_state(self) -> bool:
        return bool(self.state_pairs)

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    @property
    def stateless_inputs(self) -> list[str]:
        return [n for n in self.inputs if n not in self.state_pairs]

    # --- validation --------------------------------------------------------------------------------------

    def validate(self, feeds: Mapping[str, np.ndarray], sizes: dict[str, int] | None = None, expect: Sequence[str] | None = None) -> dict[str, int]:
        """Check names, dtypes, shapes, value ranges and limits; return the bound dim sizes.

        `sizes` carries dims already fixed by a state (batch, past); `expect` the names that must be fed.
        """
        expect = list(expect if expect is not None else self.inputs)
        unknown = sorted(set(feeds) - set(expect))
        missing = [n for n in expect if n not in feeds]
        if unknown or missing:
            raise InputError(f"inputs do not match the model: unknown {unknown}, missing {missing}; expected {expect}")
        sizes = dict(sizes or {})
        for name in expect:
            spec, array = self.inputs[name], feeds[name]
            if not isinstance(array, np.ndarray):
                raise InputError(f"{name} must be a numpy array, got {type(array).__name__}")
            if array.dtype != np.dtype(spec["dtype"]):
                raise InputError(f"{name} must be {spec['dtype']}, got {array.dtype}")
            if array.ndim != len(spec["shape"]):
                raise InputError(f"{name} must have rank {len(spec['shape'])} {spec['shape']}, got shape {array.shape}")
            problems = shapes.bind(spec["shape"], array.shape, sizes)
            if problems:
                raise InputError(f"{name} has shape {array.shape}, expected {spec['shape']}: {'; '.join(problems)}")
        for name in expect:  # sums such as "past + seq" once every symbol is bound
            spec, array = self.inputs[name], feeds[name]
            problems = shapes.check(spec["shape"], array.shape, sizes)
            if problems:
                raise InputError(f"{name} has shape {array.shape}, expected {spec['shape']} with {sizes}: {'; '.join(problems)}")
        for expr, limit in self.artifact.limits.items():
            value = shapes.evaluate(expr, sizes)
            if value is not None and value > limit:
                raise InputError(f"{expr} = {value} exceeds the model's context of {limit} positions",
                                 hint="shorten the prompt or the number of new tokens")
        for dim, info in self.artifact.dims.items():
            value = sizes.get(dim)
            if value is None:
                continue
            if value < info["min"] or (info["max"] is not None and value > info["max"]):
                raise InputError(f"{dim} = {value} is outside [{info['min']}, {info['max']}] ({info['description']})")
        for name in expect:
            rng = self.inputs[name].get("value_range")
            array = feeds[name]
            if rng is None or array.size == 0:
                continue
            lo, hi = rng
            bad = (array < lo) | (array > hi)
            if bad.any():
                where = tuple(int(i) for i in np.argwhere(bad)[0])
                raise InputError(f"{name} has {int(array[where])} at {where}, outside [{lo}, {hi}]")
        return sizes

    # --- running -----------------------------------------------------------------------------------------

    def run(self, feeds: Mapping[str, np.ndarray], fetch: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One forward with every input (state included) given as numpy."""
        feeds = dict(feeds)
        self.validate(feeds)
        fetch = self._check_fetch(fetch)
        return self.backend.run(feeds, fetch)

    def empty_state_sizes(self) -> dict[str, int]:
        """The state's growing dims (past, memory) at the first step: all 0."""
        return {self.inputs[p["input"]]["shape"][p["axis"]]: 0 for p in self.state_pairs.values()}

    def new_state(self, batch: int) -> State:
        """Zero-length state (past = 0, memory = 0) for `batch` sequences, on the backend's device."""
        sizes = {"batch": batch, **self.empty_state_sizes()}
        shp = {n: shapes.resolve_shape(self.inputs[n]["shape"], sizes) for n in self.state_pairs}
        return self.backend.empty_state(shp, {n: self.inputs[n]["dtype"] for n in self.state_pairs}, sizes)

    def state_from_numpy(self, arrays: Mapping[str, np.ndarray]) -> State:
        missing = sorted(set(self.state_pairs) - set(arrays))
        if missing:
            raise InputError(f"state lacks {missing}")
        sizes = self.validate(dict(arrays), expect=list(self.state_pairs))
        return self.backend.state_from_numpy(arrays, sizes)

    def state_to_numpy(self, state: State) -> dict[str, np.ndarray]:
        return self.backend.state_to_numpy(state)

    def step(self, feeds: Mapping[str, np.ndarray], state: State | None = None, fetch: Sequence[str] | None = None) -> tuple[dict[str, np.ndarray], State]:
        """A forward that takes its state inputs from `state` and returns the new state beside the outputs."""
        if not self.has_state:
            raise InputError("this model has no state; use run()")
        feeds = dict(feeds)
        if state is None:
            first = next(iter(feeds.values()), None)
            state = self.new_state(int(first.shape[0]) if first is not None and first.ndim else 1)
        if state.backend != self.backend.name:
            raise InputError(f"the state belongs to backend {state.backend!r}, this session runs {self.backend.name!r}")
        sizes = self.validate(feeds, sizes=state.sizes, expect=self.stateless_inputs)
        new_sizes = dict(state.sizes)
        for pair in self.state_pairs.values():
            grown = self.outputs[pair["output"]]["shape"][pair["axis"]]
            new_sizes[self.inputs[pair["input"]]["shape"][pair["axis"]]] = shapes.evaluate(grown, sizes)
        fetch = [n for n in self._check_fetch(fetch) if n not in self.output_to_state]
        return self.backend.step(feeds, state, fetch, new_sizes)

    def _check_fetch(self, fetch: Sequence[str] | None) -> list[str]:
        if fetch is None:
            return list(self.outputs)
        unknown = [n for n in fetch if n not in self.outputs]
        if unknown:
            raise InputError(f"unknown outputs {unknown}; the model has {list(self.outputs)}")
        return list(fetch)
