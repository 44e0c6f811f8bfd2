"""ONNX Runtime backends (`ort-cpu`, `ort-cuda`) with IO binding.

State outputs are bound to device memory that ONNX Runtime allocates, and the resulting OrtValues are bound
as the next step's inputs: the KV cache never goes through numpy, and on CUDA never leaves the GPU.

bf16 artifacts are refused: numpy, through which ONNX Runtime's Python API feeds and fetches tensors, has no
bfloat16, and the CPU provider has no bf16 MatMul. They run on torch, torch-cuda and tensorrt.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from ...artifact.dtypes import dtype
from ...errors import BackendError, require
from .base import State

log = logging.getLogger(__name__)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class OrtBackend:
    def __init__(self, artifact, graph: str | None = None, device: str = "cpu", model: str = "default",
                 threads: int | None = None, device_id: int = 0):
        spec = artifact.graph(graph)
        lacking = sorted({t.dtype for t in (*spec.inputs, *spec.outputs) if dtype(t.dtype).numpy is None})
        if lacking:
            raise BackendError(f"ONNX Runtime backends cannot run this {', '.join(lacking)} artifact: numpy has no "
                               f"{lacking[0]} to feed or fetch it, and the CPU provider has no bf16 kernels",
                               hint="run it with --backend torch, torch-cuda or tensorrt, or export with --precision fp16")  # fmt: skip
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise BackendError(f"threads must be a positive integer, got {threads!r}")
        ort = require("onnxruntime", "ort-gpu" if device == "cuda" else "dev", "the ONNX Runtime backend")
        self.ort = ort
        self.name = f"ort-{device}"
        self.device = device
        self.device_id = device_id
        provider = PROVIDERS[device]
        if provider not in ort.get_available_providers():
            raise BackendError(
                f"{self.name} needs {provider}, which this onnxruntime build lacks (it has {ort.get_available_providers()})",
                hint="pip install onnxruntime-gpu (and a CUDA runtime) for ort-cuda" if device == "cuda" else "",
            )
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        providers = [(provider, {"device_id": device_id})] if device == "cuda" else [provider]
        path = artifact.model_path(model, spec.name)
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.state_pairs = {p.input: p.output for p in spec.state}

    def close(self) -> None:
        """Drop the InferenceSession (its memory arena goes with it); later calls raise BackendError."""
        self.session = _Closed(self.name)

    # --- plain runs --------------------------------------------------------------------------------------

    def run(self, feeds: Mapping[str, np.ndarray], fetch: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        fetch = list(fetch or self.output_names)
        if self.device == "cpu":
            return dict(zip(fetch, self.session.run(fetch, dict(feeds)), strict=True))
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in fetch:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        return dict(zip(fetch, binding.copy_outputs_to_cpu(), strict=True))

    # --- stateful steps ----------------------------------------------------------------------------------

    def _ortvalue(self, array: np.ndarray):
        return self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, self.device_id)

    def empty_state(self, shapes, dtypes, sizes) -> State:
        values = {n: self._ortvalue(np.zeros(shapes[n], dtype(dtypes[n]).numpy)) for n in shapes}
        return State(values, dict(sizes), self.name)

    def state_from_numpy(self, arrays, sizes) -> State:
        return State({n: self._ortvalue(a) for n, a in arrays.items()}, dict(sizes), self.name)

    def state_to_numpy(self, state: State) -> dict[str, np.ndarray]:
        return {n: v.numpy() for n, v in state.values.items()}

    def step(self, feeds, state: State, fetch, new_sizes) -> tuple[dict[str, np.ndarray], State]:
        binding = self.session.io_binding()
        for name, array in feeds.items():
            if self.device == "cpu":
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
            else:
                binding.bind_ortvalue_input(name, self._ortvalue(array))
        for name, value in state.values.items():
            binding.bind_ortvalue_input(name, value)
        state_inputs = list(state.values)
        wanted = list(fetch) + [self.state_pairs[n] for n in state_inputs]
        for name in wanted:
            binding.bind_output(name, self.device, self.device_id)
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        fetched = {n: v.numpy() for n, v in zip(fetch, values[: len(fetch)], strict=True)}
        new_state = State(dict(zip(state_inputs, values[len(fetch):], strict=True)), new_sizes, self.name)
        return fetched, new_state


class _Closed:
    """Stands in for a closed backend's InferenceSession: every use says the backend is closed."""

    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, attr):
        raise BackendError(f"this {self.name} backend is closed")
