"""The torch backends: the reference model rebuilt from the artifact's reference weights.

`torch` (CPU, fp32) is the ground truth parity compares against, and a baseline in benchmarks. The others run the same
model at the artifact's precision under the export's contract (`exporter.precision.apply_precision`: matmuls low;
LayerNorm, embeddings and heads fp32), and parity judges them with that precision's tolerance. `precision=` overrides
it on any of them (CPU torch runs fp16 and bf16 matmuls, so the contract is testable without a GPU).
- `torch-cuda` runs on the GPU (inputs go up, fetched outputs come back as numpy, state stays as CUDA tensors);
- `torch-cuda-triton` runs the fused ops' Triton kernels, switched on only inside its own calls
  (`plugins.registry.triton_kernels`), so other sessions in the process keep the eager ops;
- `torch-compile` and `torch-cuda-compile` run the model through torch.compile (see compiled.py); the CUDA one with
  the Triton kernels, and for GPT decode a static KV cache whose one-token step is a CUDA graph per batch size
  (static_cache.py; `static_cache=` and `cuda_graphs=` choose, on every torch backend that can), and for encoders
  calls padded to shape buckets, each bucket a CUDA graph (buckets.py; `buckets=` alone pads on any torch backend).
State stays as torch tensors on the model's device. No setting outlives a call: `threads` applies to this backend's
calls only.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from ...artifact.dtypes import PRECISIONS
from ...errors import ArtifactError, BackendError
from ...exporter.precision import apply_precision
from ...families import family
from ..generate import context_limit
from .base import State
from .buffers import to_numpy
from .segments import SegmentGraphs
from .static_cache import CacheState, StaticDecoder


def reference_model(artifact) -> torch.nn.Module:
    from safetensors.torch import load_model

    path = artifact.reference_path
    if path is None:
        raise ArtifactError(
            f"{artifact.path} was exported without reference weights",
            hint="re-export without --no-reference, or compare against the source checkpoint",
        )
    model = family(artifact.family).build(artifact.config)
    load_model(model, path, strict=True)  # restores tied parameters that the file stores once
    return model.eval()


@contextlib.contextmanager
def threads_for_call(threads: int | None) -> Iterator[None]:
    """torch's intra-op thread count set for one call and restored after: torch only has a process-wide one."""
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# (device, Triton kernels, compiled) -> the registry name of that variant
VARIANTS = {
    ("cpu", False, False): "torch",
    ("cpu", False, True): "torch-compile",
    ("cuda", False, False): "torch-cuda",
    ("cuda", True, False): "torch-cuda-triton",
    ("cuda", True, True): "torch-cuda-compile",
}


class TorchBackend:
    def __init__(self, artifact, graph: str | None = None, model: torch.nn.Module | None = None, threads: int | None = None,
                 device: str = "cpu", triton: bool = False, compile: bool = False, precision: str | None = None,
                 static_cache: bool | None = None, cuda_graphs: bool | None = None, buckets: Sequence[int] | None = None):
        if device not in ("cpu", "cuda"):
            raise BackendError(f"the torch backend runs on cpu or cuda, not {device!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise BackendError(f"threads must be a positive integer, got {threads!r}")
        if triton and device != "cuda":
            raise BackendError("the Triton kernels run on CUDA tensors only", hint="use torch-cuda-triton")
        if (device, triton, compile) not in VARIANTS:
            raise BackendError("the compiled CUDA backend runs the fused ops' Triton kernels", hint="use torch-cuda-compile")
        self.name = VARIANTS[device, triton, compile]
        precision = precision if precision is not None else "fp32" if self.name == "torch" else artifact.manifest.precision
        if precision not in PRECISIONS:
            raise BackendError(f"unknown precision {precision!r}", hint=f"precisions: {', '.join(PRECISIONS)}")
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"{self.name} needs a CUDA GPU, and torch {torch.__version__} sees none",
                               hint="run on a machine with an NVIDIA GPU and a CUDA build of torch, or use the torch backend")
        self.kernels = contextlib.nullcontext
        if triton:
            from ...plugins.registry import load_triton_kernels, triton_kernels

            load_triton_kernels()  # a missing Triton is a DependencyError now, not at the first forward
            self.kernels = triton_kernels
        spec = artifact.graph(graph)
        fam = family(artifact.family)
        self.precision = precision
        self.device = torch.device(device)
        model = apply_precision(model if model is not None else reference_model(artifact), precision, fam.fp32_heads)
        self.model = model.to(self.device)
        # The dtype of each input at this backend's precision: the graph the exporter would write from this model.
        own = next(g for g in fam.export_graphs(self.model).graphs if g.name == spec.name)
        self.dtypes = {t.name: torch_dtype_of(t.dtype) for t in own.inputs}
        self.to_kwargs = fam.to_kwargs
        self.output_names = spec.output_names
        self.state_pairs = {p.input: p.output for p in spec.state}
        self.threads = threads
        # The Session checks ids against the manifest's range on the host; a model's own check would read them back
        # from the device every call (and break a CUDA graph capture), so it is skipped where the model allows.
        self.call_options = {"check_values": False} if "check_values" in inspect.signature(self.model.forward).parameters else {}
        self.compiled = None
        if compile:
            from .compiled import CompiledModel

            self.compiled = CompiledModel(self.model, self.device)
        # Fixed-shape paths, one per kind of graph (CUDA graphs need fixed shapes and addresses): GPT decode over a
        # static KV cache, Transformer-XL segments over a full memory, encoders padded to shape buckets.
        self.static = self.segments = self.buckets = None
        if "kv-cache" in spec.state_kinds or static_cache:
            self.static = self._static_decoder(spec, static_cache, cuda_graphs)
        elif "memory" in spec.state_kinds:
            self.segments = self._segment_graphs(spec, cuda_graphs)
        else:
            self.buckets = self._encoder_buckets(spec, buckets, cuda_graphs)
        if buckets is not None and self.buckets is None:
            raise BackendError(f"shape buckets are for encoder graphs; graph {spec.name!r} has state "
                               f"{', '.join(sorted(spec.state_kinds))}", hint="leave buckets unset")  # fmt: skip

    def _segment_graphs(self, spec, cuda_graphs: bool | None) -> SegmentGraphs | None:
        """Transformer-XL segments over a full memory as CUDA graphs (segments.py): on by default on torch-cuda-compile."""
        if cuda_graphs is None:
            cuda_graphs = self.name == "torch-cuda-compile"
        if not cuda_graphs:
            return None
        if self.device.type != "cuda":
            raise BackendError("CUDA graphs need a CUDA device", hint="use torch-cuda, torch-cuda-triton or torch-cuda-compile")
        return SegmentGraphs(spec, self._forward, self.device, self.name, check=self.compiled is None)

    def _encoder_buckets(self, spec, buckets: Sequence[int] | None, cuda_graphs: bool | None):
        """Encoder inputs padded to shape buckets, each bucket a CUDA graph with cuda_graphs (buckets.py): asked for,
        or by default on torch-cuda-compile for a graph that supports them (BERT-like, Longformer, seq2seq encoders)."""
        from .buckets import EncoderBuckets, unsupported

        default = cuda_graphs is None
        if default:
            cuda_graphs = self.name == "torch-cuda-compile" and unsupported(spec) is None
        if buckets is None and not cuda_graphs:
            return None
        pad_id = getattr(getattr(self.model, "config", None), "pad_token_id", None)
        made = EncoderBuckets(spec, self._forward, self.device, pad_id or 0, buckets, cuda_graphs=cuda_graphs,
                              backend=self.name, compiled=self.compiled is not None)  # fmt: skip
        if cuda_graphs:
            try:  # on the eager forward, which has the compiled one's ops: no compile needed to find a host read
                made.check(lambda tensors: self._forward(tensors, eager=True))
            except BackendError:
                if not default:
                    raise
                made.cuda_graphs = False  # a default never refuses the backend: uncaptured, as before
                return made if buckets is not None else None
        return made

    def _static_decoder(self, spec, static_cache: bool | None, cuda_graphs: bool | None) -> StaticDecoder | None:
        """The static KV cache when asked, or by default on torch-cuda-compile for a graph that supports it."""
        supported = "kv-cache" in spec.state_kinds and "cache_position" in inspect.signature(self.model.forward).parameters
        if cuda_graphs is None:
            cuda_graphs = self.name == "torch-cuda-compile" and supported and static_cache is not False
        if static_cache is None:
            static_cache = cuda_graphs
        if cuda_graphs and not static_cache:
            raise BackendError("cuda_graphs replays the decode step over the static KV cache", hint="leave static_cache on")
        if not static_cache:
            return None
        if not supported:
            raise BackendError(f"the {self.model.__class__.__name__} model of graph {spec.name!r} has no static KV cache "
                               "path (GPT decoders have one)", hint="leave static_cache and cuda_graphs off")  # fmt: skip
        state_dtype = self.dtypes[next(iter(self.state_pairs))]
        return StaticDecoder(spec, context_limit(spec), state_dtype, self.device, self._static_forward, self.name,
                             bool(cuda_graphs), check=self.compiled is None)

    @property
    def compiles(self) -> int:
        """Graphs torch.compile has compiled for this backend (0 when not compiled)."""
        return self.compiled.compiles if self.compiled is not None else 0

    def close(self) -> None:
        """Drop the model, the compiled graphs, the static caches and the captured graphs (CUDA memory goes back to
        torch's caching allocator); later calls raise BackendError."""
        self.model = self.compiled = self.static = self.segments = self.buckets = None

    def _tensors(self, arrays) -> dict[str, torch.Tensor]:
        """Inputs on the device at this backend's dtypes (float inputs: state, features)."""
        return {n: torch.from_numpy(np.ascontiguousarray(a)).to(device=self.device, dtype=self.dtypes.get(n)) for n, a in arrays.items()}

    def _forward(self, tensors: Mapping[str, torch.Tensor], eager: bool = False, **extra) -> dict[str, torch.Tensor]:
        """The model's outputs; compiled when the backend is, unless `eager`."""
        if self.model is None:
            raise BackendError(f"this {self.name} backend is closed")
        run = self.compiled if self.compiled is not None and not eager else self.model
        with torch.no_grad(), threads_for_call(self.threads), self.kernels():
            return run(**self.to_kwargs(dict(tensors)), **self.call_options, **extra)

    def _static_forward(self, tensors: dict[str, torch.Tensor], positions: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._forward(tensors, cache_position=positions)

    def run(self, feeds, fetch: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        fetch = fetch or self.output_names
        if self.buckets is not None:  # None once closed: _forward then says so
            return self.buckets.run(self._tensors(feeds), fetch)
        out = self._forward(self._tensors(feeds))
        return {n: to_numpy(out[n]) for n in fetch}

    def _static(self) -> StaticDecoder | None:
        if self.model is None:
            raise BackendError(f"this {self.name} backend is closed")
        return self.static

    def empty_state(self, shapes, dtypes, sizes) -> State:
        """Zero-length state at this backend's dtypes (the manifest's are the artifact's precision)."""
        static = self._static()
        if static is not None:
            return static.empty_state(shapes, sizes)
        return State({n: torch.zeros(shapes[n], dtype=self.dtypes[n], device=self.device) for n in shapes}, dict(sizes), self.name)

    def state_from_numpy(self, arrays, sizes) -> State:
        static = self._static()
        if static is not None:
            return static.state_from_tensors(self._tensors(arrays), sizes)
        return State(self._tensors(arrays), dict(sizes), self.name)

    def state_to_numpy(self, state: State) -> dict[str, np.ndarray]:
        if isinstance(state, CacheState):
            state.cache.check(state)  # views of a cache that a later step wrote over would read the newer state
        return {n: to_numpy(v) for n, v in state.values.items()}

    def step(self, feeds, state: State, fetch, new_sizes) -> tuple[dict[str, np.ndarray], State]:
        tensors = self._tensors(feeds)
        static = self._static()
        if static is not None:
            out, new_state = static.step(tensors, state, new_sizes)
            return {n: to_numpy(out[n]) for n in fetch}, new_state
        if self.segments is not None:
            replayed = self.segments.step(tensors, state, new_sizes)
            if replayed is not None:
                out, new_state = replayed
                return {n: to_numpy(out[n]) for n in fetch}, new_state
        tensors.update(state.values)
        out = self._forward(tensors)
        # Contiguous (free when it is already): a prefill's present state can be a strided view, and a compiled graph
        # guards on its inputs' strides, so one layout for every step is one graph for every decode step.
        new_values = {n: out[self.state_pairs[n]].contiguous() for n in state.values}
        return {n: to_numpy(out[n]) for n in fetch}, State(new_values, new_sizes, self.name)


def torch_dtype_of(name: str) -> torch.dtype | None:
    """The torch dtype of a manifest dtype name for floating inputs; None (keep the array's) for integers and bools."""
    return getattr(torch, name) if name in PRECISIONS.values() else None
