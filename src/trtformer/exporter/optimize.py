"""ONNX Runtime's transformer fusions on an exported graph, kept beside the plain graph in the artifact.

Only fusions run here (opt_level 0): the result stays a portable ONNX file that any ONNX Runtime provider
loads, and ONNX Runtime's own graph optimisations still run at session creation. The plain graph stays the
one TensorRT parses, since the fused contrib ops are ONNX Runtime's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

if TYPE_CHECKING:
    from ..families import OrtOptimizer

log = logging.getLogger(__name__)

TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def split_unsqueezes(proto: onnx.ModelProto) -> int:
    """Split each Unsqueeze of a graph input over several axes into one Unsqueeze per axis; return how many.

    ONNX Runtime's BERT attention fusion matches the padding mask as Unsqueeze -> Unsqueeze -> Cast -> Sub ->
    Mul, the shape TorchScript exports have; the dynamo exporter folds the two Unsqueezes into one with
    axes [1, 2], which hides every attention layer from the fusion. The split changes no value.
    """
    from onnx import helper, numpy_helper

    graph_inputs = {i.name for i in proto.graph.input}
    consts = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
    nodes, count = [], 0
    for node in proto.graph.node:
        axes = consts.get(node.input[1]) if node.op_type == "Unsqueeze" and len(node.input) == 2 else None
        values = numpy_helper.to_array(axes).tolist() if axes is not None else []
        if node.input[0] not in graph_inputs or len(values) < 2 or min(values) < 0:
            nodes.append(node)
            continue
        current = node.input[0]
        for i, axis in enumerate(sorted(values)):
            axis_name = f"{node.name}_axis{i}"
            proto.graph.initializer.append(numpy_helper.from_array(np.array([axis], np.int64), axis_name))
            out = node.output[0] if i == len(values) - 1 else f"{node.name}_part{i}"
            nodes.append(helper.make_node("Unsqueeze", [current, axis_name], [out], name=f"{node.name}_{i}"))
            current = out
        count += 1
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return count


def optimize_graph(src: Path, ort: OrtOptimizer, config: dict, ir_version: int) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The fused graph of `src` (weights in memory, for the caller to save) and how many of each fusion happened
    (zeros left out); `ort` is the family's optimizer type and the config keys it reads."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions(ort.model_type)
    if config[ort.activation_key] in TANH_GELUS:
        # The GELU fusions turn ONNX Gelu(approximate="tanh") into BiasGelu, which is the erf form: a different
        # function. Seen with onnxruntime 1.32 on GPT-2; off for tanh-GELU models until the fused op keeps it.
        options.enable_gelu = options.enable_bias_gelu = options.enable_gelu_approximation = False
    proto = onnx.load(src)
    split_unsqueezes(proto)
    fused = optimizer.optimize_model(
        proto, model_type=ort.model_type, num_heads=config[ort.heads_key], hidden_size=config[ort.width_key], opt_level=0,
        optimization_options=options,
    )
    stats = {k: int(v) for k, v in fused.get_fused_operator_statistics().items() if v}
    proto = fused.model
    proto.ir_version = ir_version
    if any(n.domain == "com.microsoft" for n in proto.graph.node) and not any(o.domain == "com.microsoft" for o in proto.opset_import):
        # ONNX Runtime loads the fused graph without it, but onnx's checker and the quantiser need the import.
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    log.info("fusions: %s", stats or "none")
    return proto, stats
