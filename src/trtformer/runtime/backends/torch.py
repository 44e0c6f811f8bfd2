"""The torch backends: the fp32 reference model rebuilt from the artifact's reference weights.

`torch` (CPU) is the ground truth parity compares against, and a baseline in benchmarks. `torch-cuda` runs the same
model on the GPU (inputs go up, fetched outputs come back as numpy, state stays as CUDA tensors);
`torch-cuda-triton` runs the fused ops' Triton kernels, switched on only inside its own calls
(`plugins.registry.triton_kernels`), so other sessions in the process keep the eager ops. State stays as torch
tensors on the model's device. No setting outlives a call: `threads` applies to this backend's calls only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch

from ...errors import ArtifactError, BackendError
from ...families import family
from .base import State


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


class TorchBackend:
    def __init__(self, artifact, graph: str | None = None, model: torch.nn.Module | None = None, threads: int | None = None,
                 device: str = "cpu", triton: bool = False):
        if device not in ("cpu", "cuda"):
            raise BackendError(f"the torch backend runs on cpu or cuda, not {device!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise BackendError(f"threads must be a positive integer, got {threads!r}")
        self.name = "torch" if device == "cpu" else "torch-cuda-triton" if triton else "torch-cuda"
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"{self.name} needs a CUDA GPU, and torch {torch.__version__} sees none",
                               hint="run on a machine with an NVIDIA GPU and a CUDA build of torch, or use the torch backend")
        self.kernels = contextlib.nullcontext
        if triton:
            if device != "cuda":
                raise BackendError("the Triton kernels run on CUDA tensors only", hint="use torch-cuda-triton")
            from ...plugins.registry import load_triton_kernels, triton_kernels

            load_triton_kernels()  # a missing Triton is a DependencyError now, not at the first forward
            self.kernels = triton_kernels
        spec = artifact.graph(graph)
        self.device = torch.device(device)
        model = model if model is not None else reference_model(artifact)
        self.model = model.to(self.device)
        self.to_kwargs = family(artifact.family).to_kwargs
        self.output_names = spec.output_names
        self.state_pairs = {p.input: p.output for p in spec.state}
        self.threads = threads

    def close(self) -> None:
        """Drop the model (and its CUDA memory, returned to torch's caching allocator); later calls raise BackendError."""
        self.model = None

    def _tensors(self, arrays) -> dict[str, torch.Tensor]:
        return {n: torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for n, a in arrays.items()}

    def _forward(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.model is None:
            raise BackendError(f"this {self.name} backend is closed")
        with torch.no_grad(), threads_for_call(self.threads), self.kernels():
            return self.model(**self.to_kwargs(dict(tensors)))

    def run(self, feeds, fetch: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        tensors = self._tensors(feeds)
        out = self._forward({n: t.float() if t.is_floating_point() else t for n, t in tensors.items()})
        return {n: out[n].cpu().numpy() for n in (fetch or self.output_names)}

    # The reference runs in fp32 whatever the artifact's precision, so its state is fp32 too.
    def empty_state(self, shapes, dtypes, sizes) -> State:
        return State({n: torch.zeros(shapes[n], dtype=torch.float32, device=self.device) for n in shapes}, dict(sizes), self.name)

    def state_from_numpy(self, arrays, sizes) -> State:
        return State(self._tensors({n: np.asarray(a, np.float32) for n, a in arrays.items()}), dict(sizes), self.name)

    def state_to_numpy(self, state: State) -> dict[str, np.ndarray]:
        return {n: v.cpu().numpy() for n, v in state.values.items()}

    def step(self, feeds, state: State, fetch, new_sizes) -> tuple[dict[str, np.ndarray], State]:
        tensors = self._tensors(feeds)
        tensors.update(state.values)
        out = self._forward(tensors)
        new_values = {n: out[self.state_pairs[n]] for n in state.values}
        return {n: out[n].cpu().numpy() for n in fetch}, State(new_values, new_sizes, self.name)
