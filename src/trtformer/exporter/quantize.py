"""Dynamic int8 quantisation for CPU (ONNX Runtime's quantize_dynamic), kept beside the fp32 graphs.

Weights become int8 once, activations are quantised per call from their observed range: no calibration
data needed. It quantises the fused graph when there is one (Attention, EmbedLayerNormalization and MatMul
have int8 kernels), so `--optimize --quantize int8-dynamic` is the fast path. Its parity is judged by
agreement (cosine, argmax), not by atol: see trtformer.parity.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path

import onnx

log = logging.getLogger(__name__)

QUANTIZATIONS = ("int8-dynamic",)


def head_nodes(proto: onnx.ModelProto, heads: list[str]) -> list[str]:
    """Nodes that the exporter traced inside one of the `heads` modules (from torch's name-scope metadata)."""
    scopes = {f"model.{h}" for h in heads}  # the exported wrapper holds the model as `model`
    names = []
    for node in proto.graph.node:
        meta = {p.key: p.value for p in node.metadata_props}
        path = meta.get("pkg.torch.onnx.name_scopes", "")
        if any(f"'{s}'" in path or f"'{s}." in path for s in scopes):
            names.append(node.name)
    return names


def quantize_graph(src: Path, ir_version: int, fp32_heads: list[str]) -> tuple[onnx.ModelProto, dict]:
    """The int8 graph of `src` (weights in memory, for the caller to save) and what the manifest records about it.

    The head projections (`fp32_heads`: MLM decoder, classifiers, QA) stay fp32, as the precision contract
    keeps logits projections fp32: they are a small share of the compute and carry the decisions.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = head_nodes(onnx.load(src), fp32_heads)
    # Per-tensor symmetric int8 weights: the kernels ONNX Runtime's CPU provider has for every quantised op.
    # The quantiser writes its own file (with external data when the source has them, past protobuf's 2 GiB);
    # the caller saves the graph again the artifact's way.
    with tempfile.TemporaryDirectory(dir=src.parent) as scratch:
        raw = Path(scratch) / src.name
        quantize_dynamic(src, raw, weight_type=QuantType.QInt8, per_channel=False, reduce_range=False,
                         nodes_to_exclude=excluded, use_external_data_format=(src.parent / f"{src.name}.data").exists())
        proto = onnx.load(raw)
    proto.ir_version = ir_version
    ops = Counter(n.op_type for n in proto.graph.node)
    int8_ops = {k: v for k, v in sorted(ops.items()) if k.startswith(("Q", "Dynamic", "MatMulInteger", "ConvInteger"))}
    log.info("int8 ops: %s", int8_ops)
    return proto, {"method": "int8-dynamic", "source": src.name, "weight_type": "int8", "per_channel": False, "ops": int8_ops,
            "fp32_heads": fp32_heads, "fp32_nodes": len(excluded)}
