"""ONNX Runtime's transformer fusions on an exported graph, kept beside the plain graph in the artifact.

Only fusions run here (opt_level 0): the result stays a portable ONNX file that any ONNX Runtime provider
loads, and ONNX Runtime's own graph optimisations still run at session creation. The plain graph stays the
one TensorRT parses, since the fused contrib ops are ONNX Runtime's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

log = logging.getLogger(__name__)

# family -> ORT optimizer model_type and the config keys holding heads and width
ORT_MODEL_TYPES = {"gpt": ("gpt2", "n_head", "n_embd")}


def optimize_graph(src: Path, dst: Path, family: str, config: dict, ir_version: int) -> dict[str, int]:
    """Write the fused graph of `src` to `dst`; return how many of each fusion happened (zeros left out)."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    model_type, heads_key, width_key = ORT_MODEL_TYPES[family]
    options = FusionOptions(model_type)
    # The GELU fusions turn ONNX Gelu(approximate="tanh") into BiasGelu, which is the erf form: a different
    # function. Seen with onnxruntime 1.32 on GPT-2; they stay off until the fused op keeps the approximation.
    options.enable_gelu = options.enable_bias_gelu = options.enable_gelu_approximation = False
    fused = optimizer.optimize_model(
        str(src), model_type=model_type, num_heads=config[heads_key], hidden_size=config[width_key], opt_level=0,
        optimization_options=options,
    )
    stats = {k: int(v) for k, v in fused.get_fused_operator_statistics().items() if v}
    proto = fused.model
    proto.ir_version = ir_version
    onnx.save(proto, dst)
    log.info("fusions: %s", stats or "none")
    return stats
