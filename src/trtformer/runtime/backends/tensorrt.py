"""The tensorrt backend: an engine of one artifact graph (full TensorRT or TensorRT-RTX) run on a CUDA GPU.

The engine is the one `trtformer build` stored in the artifact for the graph, checked against the artifact, the
installed flavor and this GPU's compute capability before it is deserialized. Device buffers are torch CUDA tensors
and every call runs on the backend's own torch CUDA stream (set_input_shape, set_tensor_address, execute_async_v3).
Fetched outputs come back as numpy; state outputs stay on the device and are bound as the next step's inputs, never
through the host.

Without CUDA graphs each step writes its state into new tensors (torch's caching allocator recycles them), so an old
State stays valid. With `cuda_graphs=True`, steps write state into two fixed ping-pong slots, and a step whose shapes
and source slot were seen before replays a captured graph (see buffers.py); a State overwritten since is refused.
Importing this module imports neither TensorRT flavor nor torch, nor initialises CUDA: that happens when the backend is
created (its device buffers are torch CUDA tensors), so a service that runs other backends never loads torch. It
shares trtformer.trt with the builder and reads engines through engines.loader; the builder itself is never imported.
`close()` (or leaving a `with` block) frees the context, engine, runtime and buffers at once, not at garbage collection.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...artifact import Artifact
from ...engines.loader import read_engine
from ...errors import BackendError, EngineError, InputError
from ...trt import flavors
from ...trt.logger import make_logger
from ...trt.plugins import register_plugins
from .base import State
from .buffers import (
    GraphCache,
    PingPong,
    Tensor,
    address,
    profile_problems,
    shape_key,
    to_device,
    to_numpy,
    torch_dtype,
)

log = logging.getLogger(__name__)


@dataclass
class Graph:
    """A captured step: the graph and the static buffers it reads (stateless inputs) and writes (other outputs)."""

    graph: Any  # torch.cuda.CUDAGraph
    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, artifact: Artifact, *, graph: str | None = None, flavor: str = "auto", engine: str | None = None,
                 cuda_graphs: bool = False, max_graphs: int = 8, device_id: int = 0):  # fmt: skip
        import torch

        self._torch = torch
        self._closed = False
        spec = artifact.graph(graph)
        kit = flavors.load(flavor)
        stored = read_engine(artifact, graph=spec.name, flavor=kit.name, engine=engine,
                             compute_capability=flavors.device_capability(device_id))  # fmt: skip
        if not torch.cuda.is_available():
            raise BackendError(f"the tensorrt backend runs {stored.name} on a CUDA GPU, and torch {torch.__version__} sees none",
                               hint="run on a machine with an NVIDIA GPU and a CUDA build of torch")
        if kit.plugin_layers:  # deserializing looks the plugins up; TensorRT-RTX engines inlined the local functions
            register_plugins(artifact.manifest)
        self.kit, self.engine_name = kit, stored.name
        self.device = torch.device("cuda", device_id)
        self.stream = torch.cuda.Stream(self.device)
        self.logger = make_logger(kit.trt)  # the process's logger for this flavor (TensorRT keeps the first one)
        self._since = self.logger.mark()  # errors logged before are not this backend's
        with torch.cuda.device(self.device):  # TensorRT allocates on the current device
            self.runtime = kit.trt.Runtime(self.logger)
            self.engine = self.runtime.deserialize_cuda_engine(stored.data)
            if self.engine is None:
                raise EngineError(f"{kit.label} cannot deserialize {stored.name}: {self._errors()}")
            self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineError(f"{kit.label} cannot create an execution context for {stored.name}: {self._errors()}")
        io = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in io if self.engine.get_tensor_mode(n) == kit.trt.TensorIOMode.INPUT]
        self.outputs = [n for n in io if n not in inputs]
        want_in, want_out = set(spec.input_names), set(spec.output_names)
        if set(inputs) != want_in or set(self.outputs) != want_out:
            raise EngineError(f"{stored.name} has inputs {inputs} and outputs {self.outputs}, the manifest "
                              f"{sorted(want_in)} and {sorted(want_out)}")
        self.dtypes = {n: torch_dtype(self.engine.get_tensor_dtype(n).name) for n in io}
        self.profile = stored.record.profiles[0]["inputs"]
        self.output_names = spec.output_names
        self.state_pairs = {p.input: p.output for p in spec.state}
        self.placeholder = torch.empty(256, dtype=torch.uint8, device=self.device)  # bound for empty tensors
        self.pool = PingPong(self.device) if cuda_graphs else None
        self.graphs = GraphCache(max_graphs) if cuda_graphs else None
        log.info("tensorrt backend: %s on %s (%s)%s", stored.name, torch.cuda.get_device_name(self.device), kit.label,
                 ", CUDA graphs" if cuda_graphs else "")

    def _errors(self) -> str:
        return self.logger.last_errors(since=self._since)

    def _mark(self) -> None:
        """Errors logged from now on are the next call's (the logger is shared by every backend of the process)."""
        self._since = self.logger.mark()

    # --- lifetime ----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the CUDA graphs, state slots, context, engine and runtime now, in that order (a context before its
        engine, an engine before its runtime). Idempotent; later calls raise BackendError."""
        if self._closed:
            return
        self._closed = True
        if getattr(self, "stream", None) is not None:
            self.stream.synchronize()  # nothing enqueued may outlive the buffers it uses
        for name in ("graphs", "pool", "placeholder", "context", "engine", "runtime", "stream"):
            setattr(self, name, None)  # dropped in this order: each held object goes before what it depends on

    def __enter__(self) -> TensorRTBackend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _open(self) -> None:
        if self._closed:
            raise BackendError(f"this tensorrt backend ({self.engine_name}) is closed",
                               hint="load the artifact again for a new session")

    # --- binding -----------------------------------------------------------------------------------------

    def _set_shapes(self, shapes: Mapping[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
        """Set every input's shape on the context; return every output's shape."""
        self._mark()
        problems = profile_problems(self.profile, shapes)
        if problems:
            raise InputError(f"{self.engine_name} was built for other shapes: {'; '.join(problems)}",
                             hint="rebuild the engine with a wider profile, e.g. `trtformer build ARTIFACT --profile batch=1:4:64`")
        for name, shape in shapes.items():
            if not self.context.set_input_shape(name, tuple(shape)):
                raise InputError(f"{self.kit.label} refused {name} of shape {tuple(shape)}: {self._errors()}")
        out = {n: tuple(self.context.get_tensor_shape(n)) for n in self.outputs}
        unknown = [n for n, shape in out.items() if min(shape, default=0) < 0]
        if unknown:  # data-dependent output shapes would need an output allocator; trtformer's graphs have none
            raise BackendError(f"{self.kit.label} cannot tell the shapes of {unknown} before running: {self._errors()}")
        return out

    def _execute(self, tensors: Mapping[str, Tensor]) -> None:
        """Bind every input and output (shapes already set) and enqueue on the backend's stream."""
        self._mark()
        for name, tensor in tensors.items():
            self.context.set_tensor_address(name, address(tensor, self.placeholder))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise BackendError(f"{self.kit.label} failed to run {self.engine_name}: {self._errors()}")

    def _upload(self, feeds: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
        return {n: to_device(a, self.dtypes[n], self.device) for n, a in feeds.items()}

    def _empty(self, shapes: Mapping[str, Sequence[int]], names: Sequence[str]) -> dict[str, Tensor]:
        return {n: self._torch.empty(tuple(shapes[n]), dtype=self.dtypes[n], device=self.device) for n in names}

    def _forward(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """One eager forward into new output tensors."""
        out_shapes = self._set_shapes({n: t.shape for n, t in inputs.items()})
        outputs = self._empty(out_shapes, self.outputs)
        self._execute({**inputs, **outputs})
        return outputs

    # --- protocol ----------------------------------------------------------------------------------------

    def run(self, feeds: Mapping[str, np.ndarray], fetch: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        self._open()
        with self._torch.cuda.stream(self.stream):
            outputs = self._forward(self._upload(feeds))
            return {n: to_numpy(outputs[n]) for n in (fetch or self.output_names)}

    def empty_state(self, shapes, dtypes, sizes) -> State:
        self._open()
        with self._torch.cuda.stream(self.stream):
            return State({n: self._torch.zeros(tuple(shapes[n]), dtype=self.dtypes[n], device=self.device) for n in shapes},
                         dict(sizes), self.name)

    def state_from_numpy(self, arrays, sizes) -> State:
        self._open()
        with self._torch.cuda.stream(self.stream):
            return State(self._upload(arrays), dict(sizes), self.name)

    def state_to_numpy(self, state: State) -> dict[str, np.ndarray]:
        self._open()
        if self.pool is not None:
            self.pool.slot_of(state)  # refuses an overwritten state
        with self._torch.cuda.stream(self.stream):
            return {n: to_numpy(v) for n, v in state.values.items()}

    def step(self, feeds, state: State, fetch, new_sizes) -> tuple[dict[str, np.ndarray], State]:
        self._open()
        with self._torch.cuda.stream(self.stream):
            if self.pool is None:
                outputs = self._forward({**self._upload(feeds), **state.values})
                new = State({n: outputs[self.state_pairs[n]] for n in state.values}, new_sizes, self.name)
                return {n: to_numpy(outputs[n]) for n in fetch}, new
            return self._step_in_slots(feeds, state, fetch, new_sizes)

    # --- fixed buffers and CUDA graphs ---------------------------------------------------------------------

    def _step_in_slots(self, feeds, state: State, fetch, new_sizes) -> tuple[dict[str, np.ndarray], State]:
        source = self.pool.slot_of(state)
        target = self.pool.target(source)
        shapes = {**{n: a.shape for n, a in feeds.items()}, **{n: v.shape for n, v in state.values.items()}}
        out_shapes = self._set_shapes(shapes)
        pairs = {n: self.state_pairs[n] for n in state.values}
        new_state = self.pool.claim(target, {n: (out_shapes[o], self.dtypes[o]) for n, o in pairs.items()})
        state_outputs = {pairs[n]: v for n, v in new_state.items()}
        # The slot is part of the key: a graph reads the addresses of the slot it was captured from.
        key = (shape_key(shapes), source)
        graph = self.graphs.get(key, self.pool.epoch) if source is not None else None
        if graph is not None:
            for name, array in feeds.items():
                graph.inputs[name].copy_(self._torch.from_numpy(np.ascontiguousarray(array)))
            graph.graph.replay()
            outputs = graph.outputs
        else:
            inputs = self._upload(feeds)
            outputs = self._empty(out_shapes, [n for n in self.outputs if n not in state_outputs])
            self._execute({**inputs, **state.values, **outputs, **state_outputs})
            if source is not None and self.graphs.sighted(key):
                self._capture(key, inputs, outputs)
        fetched = {n: to_numpy(outputs[n]) for n in fetch}
        return fetched, self.pool.state(target, new_state, new_sizes, self.name)

    def _capture(self, key, inputs: dict[str, Tensor], outputs: dict[str, Tensor]) -> None:
        """Capture the enqueue just run eagerly (same shapes and addresses, as TensorRT asks before a capture); its
        buffers become the graph's. A failed capture leaves the key to run eagerly from then on.

        TensorRT-RTX (>= 1.2) says beforehand whether a context can be captured (`is_stream_capturable`: engines
        built without REQUIRE_USER_ALLOCATION cannot); full TensorRT has no such query, so there the capture is tried
        and a failure caught."""
        self._mark()
        capturable = getattr(self.context, "is_stream_capturable", None)
        if capturable is not None and not capturable(self.stream.cuda_stream):
            self.graphs.refuse(key)
            log.warning("%s cannot be captured in a CUDA graph on this stream (%s); running it eagerly",
                        self.engine_name, self._errors())
            return
        graph = self._torch.cuda.CUDAGraph()
        try:
            with self._torch.cuda.graph(graph, stream=self.stream):
                ok = self.context.execute_async_v3(self.stream.cuda_stream)
        except RuntimeError as exc:
            ok = False
            log.debug("CUDA graph capture failed", exc_info=exc)
        if not ok:
            self.graphs.refuse(key)
            log.warning("capturing %s in a CUDA graph failed (%s); running these shapes eagerly", self.engine_name, self._errors())
            return
        self.graphs.add(key, Graph(graph, inputs, outputs))
