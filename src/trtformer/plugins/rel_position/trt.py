"""TensorRT IPluginV3 for `trtformer::RelPositionAttention`: the plugin-form node's kernel inside an engine.

Two outputs, as the node has: the attention sublayer's output (hidden's shape) and the layer's new memory
[min(mem_len, mlen + qlen), batch, d_model]. enqueue wraps TensorRT's device pointers as torch tensors on
TensorRT's stream and runs the Triton implementation straight into the output buffers.

The plugin and creator classes, the attribute coding and the lazy tensorrt import are `trt_common`'s: this module
gives the op's outputs, shape arithmetic and format rule, plain functions tested without tensorrt.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from .. import trt_common
from ..registry import PLUGINS
from ..trt_common import INT_OPS, AttributeCodec, DimOps, PluginSpec

PLUGIN = PLUGINS["RelPositionAttention"]
TENSORS, FIELDS = PLUGIN.identity.tensors, PLUGIN.identity.attributes  # input names; (attribute, torch type) pairs
OUTPUTS = PLUGIN.identity.outputs
FLOAT_TYPES = ("float32", "float16")
LN_INPUTS = (TENSORS.index("ln_weight"), TENSORS.index("ln_bias"))  # may stay fp32 in an fp16 model
CODEC = AttributeCodec(PLUGIN.name, FIELDS)
encode_attributes, decode_attributes, field_collection = CODEC.encode, CODEC.decode, CODEC.collection
FIELD_DTYPES = trt_common.FIELD_DTYPES  # numpy dtype of each attribute type


def output_shapes(hidden: Sequence, mems: Sequence, mem_len: int, ops: DimOps = INT_OPS) -> list[list]:
    """[hidden's shape, [min(mem_len, mlen + qlen), batch, d_model]] from hidden [qlen, batch, d_model] and mems
    [mlen, batch, d_model]: the shapes of `output` and `new_mem`."""
    keep = ops.min(ops.const(max(mem_len, 0)), ops.add(mems[0], hidden[0]))
    return [list(hidden), [keep, hidden[1], hidden[2]]]


def format_supported(pos: int, dtypes: Sequence[str], linear: bool) -> bool:
    """TensorRT's supportsFormatCombination as a rule on dtype names ("float32", ...), positions being the inputs then
    the outputs: all linear; hidden fp32 or fp16; every other tensor hidden's dtype, the LayerNorm weights fp32 too."""
    if not linear or dtypes[pos] not in FLOAT_TYPES:
        return False
    return pos == 0 or dtypes[pos] == dtypes[0] or (pos in LN_INPUTS and dtypes[pos] == "float32")


SPEC = PluginSpec(PLUGIN, CODEC, OUTPUTS, lambda dims, attrs, ops: output_shapes(dims[0], dims[1], attrs["mem_len"], ops),
                  format_supported, "rel_position_attention_into", ("out", "new_mem"))  # fmt: skip
plugin_classes = functools.partial(trt_common.plugin_classes, SPEC)  # (plugin, creator), built on first use
register = functools.partial(trt_common.register, SPEC)  # the creator, registered in TensorRT's plugin registry
