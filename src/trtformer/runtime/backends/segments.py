"""Transformer-XL segments over a full memory as CUDA graphs, on the torch backends.

The memory grows by a segment per call until it holds mem_len rows; from then on every segment of one (batch, seg)
has the same shapes: mems [mem_len, batch, d_model] in, new mems of the same shape out. So the memory is a fixed-
capacity buffer per (batch, seg): one graph (graphs.Captured) reads the ids and the memory buffers, runs the model and
copies each layer's new memory back over its buffer inside the graph, and a replay is the whole segment in one launch.
The segments before the memory is full (the first mem_len / seg of a stream) run as they are.

The Session's state contract holds: a State's tensors are the memory buffers, with the manifest's shape
[mem_len, batch, d_model]. The next replay writes over them, so only the latest State of a graph is valid: stepping
from an older one, or fetching it, is an InputError (static_cache.BufferOwner.check). A State from elsewhere (the
growing segments, state_from_numpy, another graph) is copied into the buffers, once.
"""

from __future__ import annotations

from collections.abc import Callable

from ...errors import BackendError
from .base import State
from .buffers import Device, Tensor
from .graphs import Captured
from .static_cache import BufferOwner, CacheState


class MemoryGraph(BufferOwner):
    """One (batch, seg): the captured segment and the generation of its memory buffers."""

    stale = "this state is not the latest of its segment graph: a later segment has written its memory buffers over"

    def __init__(self, forward: Callable[[dict[str, Tensor]], dict[str, Tensor]], feeds: dict[str, Tensor],
                 state: State, pairs: dict[str, str], pool, check: bool = True):
        self.pairs = pairs
        self.generation = 0
        inputs = {**{n: t.clone() for n, t in feeds.items()}, **{n: state.values[n].clone() for n in pairs}}

        def write_back(inputs: dict[str, Tensor], outputs: dict[str, Tensor]) -> None:
            for name, output in pairs.items():
                inputs[name].copy_(outputs[output])

        self.captured = Captured(forward, inputs, pool, after=write_back, check=check)

    def step(self, feeds: dict[str, Tensor], state: State, sizes: dict[str, int], backend: str) -> tuple[dict[str, Tensor], CacheState]:
        if isinstance(state, CacheState) and state.cache is self:
            self.check(state)  # its values are the buffers themselves: replay copies nothing
        out = self.captured.replay({**feeds, **{n: state.values[n] for n in self.pairs}})
        self.generation += 1
        memory = {n: self.captured.inputs[n] for n in self.pairs}
        return out, CacheState(memory, dict(sizes), backend, cache=self, generation=self.generation)


class SegmentGraphs:
    """The full-memory segments of a Transformer-XL graph, one MemoryGraph per (batch, seg)."""

    def __init__(self, graph, forward: Callable[[dict[str, Tensor]], dict[str, Tensor]], device: Device, backend: str,
                 check: bool = True):
        import torch

        if graph.state_kinds != {"memory"}:
            raise BackendError(f"segment graphs are for models with segment memory; graph {graph.name!r} has state "
                               f"{', '.join(sorted(graph.state_kinds)) or 'none'}")  # fmt: skip
        self.ids = graph.role_input("ids").name
        self.pairs = {p.input: p.output for p in graph.state}
        pair = graph.state[0]
        self.axis, self.capacity = pair.axis, graph.dims[graph.state_dim(pair)].max  # mem_len
        self.forward, self.backend = forward, backend
        self.check = check  # captures run under no_host_reads (not a compiled forward: fullgraph refuses host reads)
        self.graphs: dict[tuple[int, int], MemoryGraph] = {}
        # One memory pool for every graph; on CPU, graphs.Captured's stand-in (for tests: the backends refuse CUDA graphs
        # on a CPU device).
        self.pool = torch.cuda.graph_pool_handle() if device.type == "cuda" else None

    def step(self, feeds: dict[str, Tensor], state: State | None, sizes: dict[str, int]) -> tuple[dict[str, Tensor], State] | None:
        """The segment as a replay when the memory is full; None (run it as it is) otherwise."""
        if isinstance(state, CacheState):
            state.cache.check(state)  # a stale buffer state is refused on every path
        if state is None or not state.values:
            return None
        rows = int(next(iter(state.values.values())).shape[self.axis])
        if rows != self.capacity:
            return None
        ids = feeds[self.ids]
        key = (int(ids.shape[0]), int(ids.shape[1]))
        if key not in self.graphs:
            self.graphs[key] = MemoryGraph(self.forward, feeds, state, self.pairs, self.pool, self.check)
        return self.graphs[key].step(feeds, state, sizes, self.backend)
