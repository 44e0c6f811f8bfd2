"""A static KV cache for GPT decode on the torch backends, and CUDA graphs over its decode step.

Per batch size the backend preallocates one cache per state input, [batch, heads, capacity, head_dim] with the
capacity of the model's context, plus the attention mask over that capacity. A step writes its keys and values in
place at its positions (the model's `cache_position` path): no concatenation, no growth, no reallocation, so a decode
step (one token) has the same shapes and addresses at every position, which is what a CUDA graph needs. With
`cuda_graphs` the decode step of each batch size is captured once (`torch.cuda.CUDAGraph`, inputs copied into static
tensors, the position read from the device) and replayed at every later position; prefill and other multi-token
steps run as they are.

The Session's state contract holds: a State's tensors are views of the cache with the manifest's shapes
([batch, heads, past + seq, head_dim]), so fetching a state gives what the concatenating path gives. Since the next
step writes into the same buffers, only the latest State of a batch size is valid: stepping from an older one, or
from another session's, is refused (InputError), as is a state after `new_state` or `state_from_numpy` reset that
batch size's cache. One decode per batch size per session at a time, then.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...errors import BackendError, InputError
from .base import State
from .buffers import Device, DType, Tensor
from .graphs import Captured

# A step's forward: (the flat inputs with the full caches under the state input names, the positions) -> outputs.
Forward = Callable[[dict[str, Tensor], Tensor], dict[str, Tensor]]
POSITION = "cache_position"  # the captured step's static input holding the position (a name no graph input has)


@dataclass
class CacheState(State):
    """A State whose tensors are views of buffers a BufferOwner keeps (a StaticKVCache, a Transformer-XL segment
    graph); valid while the owner has not been stepped or reset since."""

    cache: Any = None
    generation: int = 0


class BufferOwner:
    """Buffers that States view. Each step or reset that writes them bumps `generation`; a State of an older one is
    stale, and `check` refuses it (and a State of another owner) with `stale`, which says what wrote over it."""

    generation = 0
    stale = "this state's buffers were written over by a later step"

    def check(self, state: State) -> None:
        if not isinstance(state, CacheState) or state.cache is not self or state.generation != self.generation:
            raise InputError(f"{self.stale} (or it comes from another session)",
                             hint="step from the latest state, or keep a copy with state_to_numpy and state_from_numpy")


class StaticKVCache(BufferOwner):
    """One batch size's buffers: the caches (state input name -> [batch, heads, capacity, head_dim]), the attention
    mask over the capacity, and how many positions hold keys and values (`length`)."""

    stale = ("this state is not the latest of its batch size in this session's static KV cache: a later step, "
             "new_state or state_from_numpy has written over it")  # fmt: skip

    def __init__(self, shapes: Mapping[str, Sequence[int]], axis: int, capacity: int, dtype: DType, device):
        import torch
        self.axis = axis
        self.capacity = capacity
        self.buffers = {n: torch.zeros(_with(shape, axis, capacity), dtype=dtype, device=device) for n, shape in shapes.items()}
        self.batch = int(next(iter(shapes.values()))[0])
        self.mask = torch.zeros(self.batch, capacity, dtype=torch.int64, device=device)
        self.length = 0
        self.generation = 0

    def reset(self, past: Mapping[str, Tensor] | None = None) -> None:
        """Empty the cache, or hold `past` (name -> [batch, heads, past, head_dim]); older States turn stale. Zeroed so
        that no stale value, finite or not, sits under the masked keys."""
        length = int(next(iter(past.values())).shape[self.axis]) if past else 0
        if length > self.capacity:
            raise InputError(f"a past of {length} positions exceeds the static cache's capacity of {self.capacity}")
        for name, buf in self.buffers.items():
            buf.zero_()
            if past is not None:
                buf.narrow(self.axis, 0, length).copy_(past[name])
        self.mask.zero_()
        self.length = length
        self.generation += 1

    def state(self, sizes: dict[str, int], backend: str) -> CacheState:
        views = {n: buf.narrow(self.axis, 0, self.length) for n, buf in self.buffers.items()}
        return CacheState(views, dict(sizes), backend, cache=self, generation=self.generation)



def _with(shape: Sequence[int], axis: int, size: int) -> tuple[int, ...]:
    return tuple(size if i == axis else int(d) for i, d in enumerate(shape))


class CapturedStep:
    """A decode step (one token) of one batch size as a captured graph over the cache's buffers (graphs.Captured): the
    ids and the position go into static tensors before each replay, the outputs are read from static tensors after."""

    def __init__(self, forward: Forward, cache: StaticKVCache, feeds: dict[str, Tensor], ids: str, pool, check: bool = True):
        import torch

        position = torch.tensor([cache.length], dtype=torch.int64, device=feeds[ids].device)
        inputs = {**feeds, ids: feeds[ids].clone(), **cache.buffers, POSITION: position}
        self.ids = ids
        # Warm-ups re-run this very step: they write only the keys and values that every replay writes again.
        self.captured = Captured(lambda x: forward({n: t for n, t in x.items() if n != POSITION}, x[POSITION]), inputs, pool,
                                 check=check)

    def run(self, ids: Tensor, position: int) -> dict[str, Tensor]:
        self.captured.inputs[POSITION].fill_(position)  # a fill kernel: no host-to-device copy
        return self.captured.replay({self.ids: ids})


class StaticDecoder:
    """The static-cache steps of a GPT graph: one StaticKVCache (and with cuda_graphs one CapturedStep) per batch size."""

    def __init__(self, graph, capacity: int, dtype: DType, device: Device, forward: Forward,
                 backend: str, cuda_graphs: bool = False, check: bool = True):
        import torch
        if "kv-cache" not in graph.state_kinds or graph.role_input("padding-mask") is None:
            raise BackendError(f"a static KV cache is for decoder graphs with a KV cache and an attention mask; graph "
                               f"{graph.name!r} has state {sorted(graph.state_kinds) or 'none'}")  # fmt: skip
        if cuda_graphs and device.type != "cuda":
            raise BackendError("CUDA graphs need a CUDA device", hint="use torch-cuda, torch-cuda-triton or torch-cuda-compile")
        self.ids, self.mask = graph.role_input("ids").name, graph.role_input("padding-mask").name
        self.axis = next(p.axis for p in graph.state)
        self.capacity, self.dtype, self.device = capacity, dtype, device
        self.forward, self.backend, self.cuda_graphs = forward, backend, cuda_graphs
        self.check = check  # captures run under no_host_reads (not a compiled forward: fullgraph refuses host reads)
        self.caches: dict[int, StaticKVCache] = {}
        self.captured: dict[int, CapturedStep] = {}
        self.pool = torch.cuda.graph_pool_handle() if cuda_graphs else None  # one memory pool for every batch size

    def _cache(self, shapes: Mapping[str, Sequence[int]]) -> StaticKVCache:
        batch = int(next(iter(shapes.values()))[0])
        if batch not in self.caches:
            self.caches[batch] = StaticKVCache(shapes, self.axis, self.capacity, self.dtype, self.device)
        return self.caches[batch]

    def empty_state(self, shapes: Mapping[str, Sequence[int]], sizes: dict[str, int]) -> CacheState:
        cache = self._cache(shapes)
        cache.reset()
        return cache.state(sizes, self.backend)

    def state_from_tensors(self, past: Mapping[str, Tensor], sizes: dict[str, int]) -> CacheState:
        cache = self._cache({n: t.shape for n, t in past.items()})
        cache.reset({n: t.to(self.dtype) for n, t in past.items()})
        return cache.state(sizes, self.backend)

    def step(self, feeds: dict[str, Tensor], state: State, new_sizes: dict[str, int]) -> tuple[dict[str, Tensor], CacheState]:
        """One step from `state` (the latest of its cache): feeds are the stateless inputs on the device, the mask over
        past + seq. Returns the outputs (the present states among them are the whole caches) and the new State."""
        import torch
        cache = state.cache if isinstance(state, CacheState) else None
        if cache is None or self.caches.get(cache.batch) is not cache:
            raise InputError("this state does not come from this session's static KV cache",
                             hint="carry each state only into the session that produced it")  # fmt: skip
        cache.check(state)
        start, seq = cache.length, int(feeds[self.ids].shape[1])
        end = start + seq
        if end > cache.capacity:
            raise InputError(f"past + seq = {end} exceeds the static cache's capacity of {cache.capacity} positions")
        cache.mask[:, :end].copy_(feeds[self.mask])  # past the end it stays 0 until the next reset
        feeds = {**feeds, self.mask: cache.mask}
        if self.cuda_graphs and seq == 1:
            if cache.batch not in self.captured:
                self.captured[cache.batch] = CapturedStep(self.forward, cache, feeds, self.ids, self.pool, self.check)
            out = self.captured[cache.batch].run(feeds[self.ids], start)
        else:
            positions = torch.arange(start, end, device=self.device)  # [seq]
            out = self.forward({**feeds, **cache.buffers}, positions)
        cache.length = end
        cache.generation += 1
        return out, cache.state(new_sizes, self.backend)
