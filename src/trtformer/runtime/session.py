"""A Session: one graph of an artifact on a backend, with every input validated before the backend sees it.

The session reads the graph's typed records (inputs, outputs, state pairs, dims, limits) and never a dict key of
the manifest. It owns its backend: `close()` (or leaving a `with` block) frees the backend's sessions, engines,
streams and buffers at once instead of whenever the garbage collector runs. A State it hands out carries the
artifact and graph it belongs to, and a step refuses a State from another one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..artifact import Artifact, GraphSpec, shapes
from ..artifact.dtypes import dtype
from ..errors import BackendError, InputError
from . import backends
from .backends.base import State


class Session:
    def __init__(self, artifact: Artifact, backend, graph: GraphSpec | None = None):
        self.artifact = artifact
        self.backend = backend
        self.graph = graph if graph is not None else artifact.graph()
        self.inputs = {t.name: t for t in self.graph.inputs}
        self.outputs = {t.name: t for t in self.graph.outputs}
        self.state_pairs = self.graph.state_inputs
        self.output_to_state = {p.output: p.input for p in self.graph.state}
        # Which states this session accepts: those of the same graph of the same exported model.
        plain = artifact.manifest.files.get(self.graph.models.get("plain", ""))
        self.origin = (self.graph.name, plain.sha256 if plain else str(artifact.path))
        self.closed = False

    @classmethod
    def open(cls, path: str | Path | Artifact, backend: str = "ort-cpu", graph: str | None = None, verify: bool = True,
             **options) -> Session:
        """Open graph `graph` (the artifact's only one by default) of the artifact at `path` on `backend`."""
        artifact = path if isinstance(path, Artifact) else Artifact.load(path, verify=verify)
        spec = artifact.graph(graph)
        return cls(artifact, backends.create(backend, artifact, graph=spec.name, **options), spec)

    def close(self) -> None:
        """Free the backend's resources now; the session refuses calls afterwards. Idempotent."""
        if not self.closed:
            self.closed = True
            self.backend.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise BackendError(f"this session of {self.artifact.path} on {self.name} is closed")

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
                raise InputError(f"{name} must be a numpy array, got {type(array).__name__}",
                                 hint=f"pass np.asarray(..., dtype=np.{dtype(spec.dtype).host})")
            if array.dtype != np.dtype(dtype(spec.dtype).host):
                raise InputError(f"{name} must be {spec.dtype}, got {array.dtype}")
            if array.ndim != spec.rank:
                raise InputError(f"{name} must have rank {spec.rank} {list(spec.shape)}, got shape {array.shape}")
            problems = shapes.bind(spec.shape, array.shape, sizes)
            if problems:
                raise InputError(f"{name} has shape {array.shape}, expected {list(spec.shape)}: {'; '.join(problems)}")
        for name in expect:  # sums such as "past + seq" once every symbol is bound
            spec, array = self.inputs[name], feeds[name]
            problems = shapes.check(spec.shape, array.shape, sizes)
            if problems:
                raise InputError(f"{name} has shape {array.shape}, expected {list(spec.shape)} with {sizes}: {'; '.join(problems)}")
        for expr, limit in self.graph.limits.items():
            value = shapes.evaluate(expr, sizes)
            if value is not None and value > limit:
                raise InputError(f"{expr} = {value} exceeds the model's context of {limit} positions",
                                 hint="shorten the prompt or the number of new tokens" if self.has_state
                                 else f"shorten the sequences to at most {limit} tokens")  # fmt: skip
        for dim, info in self.graph.dims.items():
            value = sizes.get(dim)
            if value is None:
                continue
            if value < info.min or (info.max is not None and value > info.max):
                raise InputError(f"{dim} = {value} is outside [{info.min}, {info.max}] ({info.description})")
        for name in expect:
            rng = self.inputs[name].value_range
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
        self._check_open()
        feeds = self._as_dict(feeds)
        self.validate(feeds)
        fetch = self._check_fetch(fetch)
        return self.backend.run(feeds, fetch)

    def empty_state_sizes(self) -> dict[str, int]:
        """The state's growing dims (past, memory) at the first step: all 0."""
        return self.graph.empty_state_sizes()

    def new_state(self, batch: int) -> State:
        """Zero-length state (past = 0, memory = 0) for `batch` sequences, on the backend's device."""
        self._check_open()
        batch_dim = next(iter(self.state_pairs.values()), None)
        sizes = {**self.empty_state_sizes()}
        if batch_dim is not None:  # the batch symbol is the one the state tensors share besides the grown axis
            for d in self.inputs[batch_dim.input].shape:
                if shapes.is_symbol(d) and d not in sizes:
                    sizes[d] = batch
        shp = {n: shapes.resolve_shape(self.inputs[n].shape, sizes) for n in self.state_pairs}
        return self._stamp(self.backend.empty_state(shp, {n: self.inputs[n].dtype for n in self.state_pairs}, sizes))

    def state_from_numpy(self, arrays: Mapping[str, np.ndarray]) -> State:
        self._check_open()
        arrays = self._as_dict(arrays, "the state")
        missing = sorted(set(self.state_pairs) - set(arrays))
        if missing:
            raise InputError(f"state lacks {missing}")
        sizes = self.validate(dict(arrays), expect=list(self.state_pairs))
        return self._stamp(self.backend.state_from_numpy(arrays, sizes))

    def state_to_numpy(self, state: State) -> dict[str, np.ndarray]:
        self._check_open()
        self._check_state(state)
        return self.backend.state_to_numpy(state)

    def _stamp(self, state: State) -> State:
        state.origin = self.origin
        return state

    def _check_state(self, state) -> None:
        if not isinstance(state, State):
            raise InputError(f"state must be a State from this session's step() or new_state(), got {type(state).__name__}",
                             hint="convert arrays with session.state_from_numpy(...)")
        if state.backend != self.backend.name:
            raise InputError(f"the state belongs to backend {state.backend!r}, this session runs {self.backend.name!r}")
        if state.origin != self.origin:
            raise InputError(f"the state comes from another artifact or graph ({state.origin[0] if state.origin else 'unknown'}); "
                             f"this session runs graph {self.graph.name!r} of {self.artifact.path}",
                             hint="carry each state only into the session of the model that produced it")  # fmt: skip

    @staticmethod
    def _as_dict(feeds, what: str = "the inputs") -> dict:
        if not isinstance(feeds, Mapping):
            raise InputError(f"{what} must be a mapping of names to numpy arrays, got {type(feeds).__name__}")
        return dict(feeds)

    def step(self, feeds: Mapping[str, np.ndarray], state: State | None = None, fetch: Sequence[str] | None = None) -> tuple[dict[str, np.ndarray], State]:
        """A forward that takes its state inputs from `state` and returns the new state beside the outputs."""
        self._check_open()
        if not self.has_state:
            raise InputError("this model has no state; use run()")
        feeds = self._as_dict(feeds)
        if state is None:
            first = next(iter(feeds.values()), None)
            state = self.new_state(int(first.shape[0]) if isinstance(first, np.ndarray) and first.ndim else 1)
        self._check_state(state)
        sizes = self.validate(feeds, sizes=state.sizes, expect=self.stateless_inputs)
        new_sizes = dict(state.sizes)
        for pair in self.state_pairs.values():
            grown = self.outputs[pair.output].shape[pair.axis]
            new_sizes[self.graph.state_dim(pair)] = shapes.evaluate(grown, sizes)
        fetch = [n for n in self._check_fetch(fetch) if n not in self.output_to_state]
        out, new_state = self.backend.step(feeds, state, fetch, new_sizes)
        return out, self._stamp(new_state)

    def _check_fetch(self, fetch: Sequence[str] | None) -> list[str]:
        if fetch is None:
            return list(self.outputs)
        if isinstance(fetch, str):
            raise InputError(f"fetch must be a list of output names, got the string {fetch!r}", hint=f"fetch=[{fetch!r}]")
        unknown = [n for n in fetch if n not in self.outputs]
        if unknown:
            raise InputError(f"unknown outputs {unknown}; the model has {list(self.outputs)}")
        return list(fetch)
