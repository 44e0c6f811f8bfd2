"""Device-buffer bookkeeping of the tensorrt backend, apart from TensorRT and CUDA so that it runs (and is tested) on
CPU torch tensors: dtype maps, binding addresses, shape keys, the engine-profile check, the ping-pong state slots and
the CUDA-graph cache. torch is imported by the functions that make or read a buffer, never at import: the runtime
imports no torch unless a backend that binds torch tensors is created.

Ping-pong: a CUDA graph replays the addresses it was captured with, so steps that may replay one keep their state in
fixed buffers, two per state tensor. A step reads its state from one slot and writes the new state into the other, so
no output aliases an input of the same step. Each slot counts its writes and a SlotState remembers the count it was
written at: a State whose slot has been written again since is refused with an InputError, never read as garbage.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...artifact.dtypes import from_trt
from ...errors import ArtifactError, BackendError, InputError
from .base import State

# torch's types by name only: torch is imported by the functions that make or read a buffer, never with this module.
Tensor = Any  # torch.Tensor
DType = Any  # torch.dtype
Device = Any  # torch.device
Module = Any  # torch.nn.Module


def torch_dtype(trt_name: str) -> DType:
    """The torch dtype of a TensorRT DataType given by name (`engine.get_tensor_dtype(n).name`)."""
    import torch

    try:
        return getattr(torch, from_trt(trt_name).name)
    except ArtifactError:
        raise BackendError(f"the engine has a tensor of type {trt_name}, which the tensorrt backend cannot bind",
                           hint="export the model in fp32, fp16 or bf16") from None


def to_device(array: np.ndarray, dtype: DType, device) -> Tensor:
    import torch

    return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=dtype)


def to_numpy(tensor: Tensor) -> np.ndarray:
    """A host copy, ordered after the current stream's work; bf16 comes back as fp32 (numpy has no bfloat16)."""
    import torch

    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.detach().cpu().numpy()


def address(tensor: Tensor, placeholder: Tensor) -> int:
    """The address to bind: TensorRT wants a valid one even for a tensor with no elements (a first step's empty past),
    for which torch's data_ptr() is 0."""
    return tensor.data_ptr() if tensor.numel() else placeholder.data_ptr()


def shape_key(shapes: Mapping[str, Sequence[int]]) -> tuple:
    """A hashable key of every input's shape, independent of the mapping's order."""
    return tuple(sorted((name, tuple(int(d) for d in shape)) for name, shape in shapes.items()))


def profile_problems(profile: Mapping[str, Mapping[str, Sequence[int]]], shapes: Mapping[str, Sequence[int]]) -> list[str]:
    """What falls outside the engine's optimisation profile ({input: {"min", "max"}}, as the engine record stores it).
    The manifest's limits are checked before; an engine may have been built for a narrower range."""
    problems = []
    for name, shape in shapes.items():
        corners = profile.get(name)
        if corners is None:
            continue
        for axis, (size, lo, hi) in enumerate(zip(shape, corners["min"], corners["max"], strict=True)):
            if not lo <= size <= hi:
                problems.append(f"{name} axis {axis} is {size}, outside the engine's {lo}..{hi}")
    return problems


@dataclass
class SlotState(State):
    """A State whose tensors are views of a PingPong slot; valid while the slot still holds what its step wrote."""

    pool: Any = None
    slot: int = 0
    generation: int = 0


class PingPong:
    """Two fixed slots of state buffers; see the module docstring. Buffers grow (doubling) when a larger state comes,
    which bumps `epoch`: graphs captured before hold the old addresses and must be dropped."""

    def __init__(self, device):
        self.device = device
        self.buffers: list[dict[str, Tensor]] = [{}, {}]  # per slot: state input name -> flat buffer
        self.generation = [0, 0]  # writes per slot
        self.epoch = 0

    def slot_of(self, state: State) -> int | None:
        """The slot a State lives in; None for tensors from elsewhere (empty_state, state_from_numpy, another pool)."""
        if not isinstance(state, SlotState) or state.pool is not self:
            return None
        if state.generation != self.generation[state.slot]:
            raise InputError(
                "this state's device buffers were overwritten by a later step: with cuda_graphs=True the tensorrt "
                "backend keeps state in two fixed buffers that the steps alternate between",
                hint="step from the latest state, or keep a copy with state_to_numpy and state_from_numpy")
        return state.slot

    @staticmethod
    def target(source: int | None) -> int:
        """The slot a step writes when its state comes from `source`: the other one."""
        return 0 if source is None else 1 - source

    def claim(self, slot: int, specs: Mapping[str, tuple[Sequence[int], DType]]) -> dict[str, Tensor]:
        """Views of `slot` shaped for the state a step is about to write there ({name: (shape, dtype)}). What the slot
        held is given up: its SlotStates turn stale."""
        import torch

        views = {}
        for name, (shape, dtype) in specs.items():
            numel = math.prod(shape)
            buf = self.buffers[slot].get(name)
            if buf is None or buf.dtype != dtype or buf.numel() < numel:
                grown = 2 * buf.numel() if buf is not None and buf.dtype == dtype else 0
                buf = torch.empty(max(numel, grown, 1), dtype=dtype, device=self.device)
                self.buffers[slot][name] = buf
                self.epoch += 1
            views[name] = buf[:numel].view(tuple(shape))
        self.generation[slot] += 1
        return views

    def state(self, slot: int, views: dict[str, Tensor], sizes: dict[str, int], backend: str) -> SlotState:
        return SlotState(views, dict(sizes), backend, pool=self, slot=slot, generation=self.generation[slot])


class GraphCache:
    """CUDA graphs by key (input shapes and the slot the state comes from). A key is captured the second time it is
    seen and replayed after that, so shapes that never repeat (a GPT decode, whose past grows every step) cost no
    capture. At most `capacity` graphs are kept, least recently used dropped first; `epoch` follows PingPong's."""

    def __init__(self, capacity: int = 8):
        if capacity < 1:
            raise BackendError(f"the graph cache needs a capacity of at least 1, got {capacity}")
        self.capacity = capacity
        self.graphs: OrderedDict[Hashable, Any] = OrderedDict()
        self.seen: OrderedDict[Hashable, int] = OrderedDict()
        self.refused: set = set()  # keys whose capture failed: they run eagerly
        self.epoch = 0

    def get(self, key: Hashable, epoch: int):
        """The graph of `key`, or None; every graph is dropped when the buffers moved (epoch changed)."""
        if epoch != self.epoch:
            self.graphs.clear()
            self.epoch = epoch
        entry = self.graphs.get(key)
        if entry is not None:
            self.graphs.move_to_end(key)
        return entry

    def sighted(self, key: Hashable) -> bool:
        """Count a run of `key` without a graph; True when it is time to capture one."""
        count = self.seen.pop(key, 0) + 1
        self.seen[key] = count
        while len(self.seen) > 4 * self.capacity:  # bounded: a long decode sees a new key every step
            self.seen.popitem(last=False)
        return count >= 2 and key not in self.refused

    def add(self, key: Hashable, entry) -> None:
        self.graphs[key] = entry
        while len(self.graphs) > self.capacity:
            self.graphs.popitem(last=False)

    def refuse(self, key: Hashable) -> None:
        self.refused.add(key)
