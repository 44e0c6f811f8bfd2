"""What torch.export needs to trace a model against its graph spec: a positional wrapper, example tensors with sizes
it keeps symbolic, the dynamic shapes, and the spec's names and dims written back onto the ONNX graph."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import torch
from torch import nn

from ..artifact import GraphSpec
from ..artifact.examples import example_feeds
from ..errors import ExportError


class Flattened(nn.Module):
    """Positional tensors in spec order -> the model's keyword forward -> a tuple in spec output order."""

    def __init__(self, model: nn.Module, graph: GraphSpec, to_kwargs: Callable[[dict], dict]):
        super().__init__()
        self.model = model
        self.graph = graph
        self.to_kwargs = to_kwargs

    def forward(self, *tensors: torch.Tensor):
        out = self.model(**self.to_kwargs(dict(zip(self.graph.input_names, tensors, strict=True))))
        return tuple(out[name] for name in self.graph.output_names)


def export_sizes(graph: GraphSpec) -> dict[str, int]:
    """Example sizes for tracing: every dynamic dim >= 2 and distinct, as torch.export specialises a dim of size 0
    or 1 and ties dims of equal size."""
    return {name: 2 + i for i, name in enumerate(graph.dims)}


def example_args(graph: GraphSpec, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Example inputs in spec order at `export_sizes`, from the artifact's role-driven generator, each cast to its
    input's dtype (numpy has no bfloat16: those come as float32)."""
    feeds = example_feeds(graph, export_sizes(graph), np.random.default_rng(seed))
    return tuple(torch.from_numpy(feeds[t.name]).to(getattr(torch, t.dtype)) for t in graph.inputs)


def dynamic_shapes(graph: GraphSpec) -> list[dict]:
    dims = {name: torch.export.Dim(name.replace(" ", "_")) for name in graph.dims}
    out = []
    for t in graph.inputs:
        axes = {}
        for axis, d in enumerate(t.shape):
            if isinstance(d, str):
                # A sum such as "past + seq" is left for torch.export to derive.
                axes[axis] = dims[d] if d in dims else torch.export.Dim.DYNAMIC
        out.append(axes)
    return out


def fix_graph_signature(model: onnx.ModelProto, graph: GraphSpec) -> None:
    """Write the spec's symbolic dims onto the graph inputs and outputs, checking names, ranks and fixed dims."""
    for values, tensors in ((model.graph.input, graph.inputs), (model.graph.output, graph.outputs)):
        by_name = {v.name: v for v in values}
        for t in tensors:
            if t.name not in by_name:
                raise ExportError(f"the exported graph lacks {t.name!r}; it has {sorted(by_name)}")
            dims = by_name[t.name].type.tensor_type.shape.dim
            if len(dims) != len(t.shape):
                raise ExportError(f"{t.name} has rank {len(dims)} in the graph, the spec says {len(t.shape)}")
            for dim, want in zip(dims, t.shape, strict=True):
                if isinstance(want, str):
                    dim.dim_param = want
                elif dim.HasField("dim_value") and dim.dim_value != want:
                    raise ExportError(f"{t.name} has a fixed dim {dim.dim_value} where the spec says {want}")
                else:
                    dim.dim_value = want
