"""The backend protocol: named arrays in, named arrays out, and state that stays where the backend keeps it.

Backends are created by name through the registry (`backends.create(name, artifact, graph=..., **options)`) for one
graph of an artifact, read its typed records, and change no process-wide setting. A backend never validates user input (the Session does that once, for every backend) and never converts
state to numpy between steps: `step` keeps the state outputs as backend-native values (OrtValues, torch
tensors, device buffers) and binds them as the next call's state inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass
class State:
    """State tensors owned by a backend, plus the sizes of the dims they carry (batch, past, ...)."""

    values: dict[str, Any]  # state input name -> backend-native tensor
    sizes: dict[str, int] = field(default_factory=dict)
    backend: str = ""
    origin: tuple | None = None  # (graph, model sha256) of the session that made it; set by the Session


class Backend(Protocol):
    name: str

    def run(self, feeds: Mapping[str, np.ndarray], fetch: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """One forward with every input given as numpy; returns the fetched outputs (all by default)."""
        ...

    def step(
        self, feeds: Mapping[str, np.ndarray], state: State, fetch: Sequence[str], new_sizes: dict[str, int]
    ) -> tuple[dict[str, np.ndarray], State]:
        """A forward whose state inputs come from `state`; state outputs become the returned State."""
        ...

    def empty_state(self, shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, str], sizes: dict[str, int]) -> State:
        ...

    def state_from_numpy(self, arrays: Mapping[str, np.ndarray], sizes: dict[str, int]) -> State:
        ...

    def state_to_numpy(self, state: State) -> dict[str, np.ndarray]:
        ...

    def close(self) -> None:
        """Free sessions, engines, streams and buffers now (idempotent); later calls raise BackendError."""
        ...
