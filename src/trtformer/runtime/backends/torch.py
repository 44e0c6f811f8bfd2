"""The torch backends: the fp32 reference model rebuilt from the artifact's reference weights.

`torch` (CPU) is the ground truth parity compares against, and a baseline in benchmarks. `torch-cuda` runs the same
model on the GPU (inputs go up, fetched outputs come back as numpy, state stays as CUDA tensors);
`torch-cuda-triton` also loads the fused ops' Triton kernels, which then serve every CUDA call of those ops in the
process (torch.library has no way to unload a kernel). State stays as torch tensors on the model's device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ...errors import ArtifactError, BackendError
from .base import State


def reference_model(artifact) -> torch.nn.Module:
    from safetensors.torch import load_model

    from ...models import build_model

    path = artifact.reference_path
    if path is None:
        raise ArtifactError(
            f"{artifact.path} was exported without reference weights",
            hint="re-export without --no-reference, or compare against the source checkpoint",
        )
    model = build_model(artifact.family, artifact.config)
    load_model(model, path, strict=True)  # restores tied parameters that the file stores once
    return model.eval()


class TorchBackend:
    def __init__(self, artifact, model: torch.nn.Module | None = None, threads: int | None = None, device: str = "cpu",
                 triton: bool = False):
        from ...exporter.specs import to_model_kwargs

        if device not in ("cpu", "cuda"):
            raise BackendError(f"the torch backend runs on cpu or cuda, not {device!r}")
        self.name = "torch" if device == "cpu" else "torch-cuda-triton" if triton else "torch-cuda"
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendError(f"{self.name} needs a CUDA GPU, and torch {torch.__version__} sees none",
                               hint="run on a machine with an NVIDIA GPU and a CUDA build of torch, or use the torch backend")
        if triton:
            if device != "cuda":
                raise BackendError("the Triton kernels run on CUDA tensors only", hint="use torch-cuda-triton")
            from ...plugins.registry import use_triton_kernels

            use_triton_kernels()
        self.device = torch.device(device)
        model = model if model is not None else reference_model(artifact)
        self.model = model.to(self.device)
        self.family = artifact.family
        self.to_kwargs = to_model_kwargs
        self.output_names = [o["name"] for o in artifact.outputs]
        self.state_pairs = {s["input"]: s["output"] for s in artifact.state}
        if threads:
            torch.set_num_threads(threads)

    def _tensors(self, arrays) -> dict[str, torch.Tensor]:
        return {n: torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for n, a in arrays.items()}

    @torch.no_grad()
    def _forward(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.model(**self.to_kwargs(self.family, dict(tensors)))

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
