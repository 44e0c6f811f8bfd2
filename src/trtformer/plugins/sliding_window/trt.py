"""TensorRT IPluginV3 for `trtformer::SlidingWindowAttention`: the plugin-form node's kernel inside an engine.

One output, shaped and typed like v. The six activations share one float dtype (fp32 or fp16); the two masks come
as INT32, which the exporter casts them to (TensorRT plugins take no BOOL or UINT8 tensors: `PluginTensorDesc::type`),
and int64, fp32 or fp16 are taken too, nonzero meaning true. enqueue wraps TensorRT's device pointers as torch tensors
on TensorRT's stream and runs the Triton implementation straight into the output buffer.

Attributes: window (INT32), dilations (an INT32 array, one per head) and scale (FLOAT32). The plugin-form nodes of a
model carry one op type per attribute set (`SlidingWindowAttention_w512_d1`, written by exporter/translations.py) with
`plugin_name` naming this plugin; `register(op_types)` also registers the creator under those op types, for a parser
that looks plugins up by op type. The classes and attribute coding are `trt_common`'s; this module gives the op's
output shape and format rule, plain functions tested without tensorrt.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from .. import trt_common
from ..registry import PLUGINS
from ..trt_common import AttributeCodec, PluginSpec

PLUGIN = PLUGINS["SlidingWindowAttention"]
TENSORS, FIELDS = PLUGIN.identity.tensors, PLUGIN.identity.attributes  # input names; (attribute, torch type) pairs
OUTPUTS = PLUGIN.identity.outputs
FLOAT_TYPES = ("float32", "float16")
MASK_TYPES = ("int32", "int64", "float32", "float16")  # never bool: TensorRT plugins cannot take it
MASKS = (TENSORS.index("key_padding_mask"), TENSORS.index("global_mask"))
V = TENSORS.index("v")
CODEC = AttributeCodec(PLUGIN.name, FIELDS)
encode_attributes, decode_attributes, field_collection = CODEC.encode, CODEC.decode, CODEC.collection


def output_shapes(v: Sequence) -> list[list]:
    """[v's shape]: the output is [batch, heads, seq, head_dim] like every activation."""
    return [list(v)]


def format_supported(pos: int, dtypes: Sequence[str], linear: bool) -> bool:
    """TensorRT's supportsFormatCombination as a rule on dtype names ("float32", ...), positions being the inputs then
    the output: all linear; q fp32 or fp16 and every other activation and the output q's dtype; each mask any of
    MASK_TYPES, independently (the kernels read them through `!= 0`)."""
    if not linear:
        return False
    if pos in MASKS:
        return dtypes[pos] in MASK_TYPES
    return dtypes[pos] in FLOAT_TYPES and dtypes[pos] == dtypes[0]


SPEC = PluginSpec(PLUGIN, CODEC, OUTPUTS, lambda dims, attrs, ops: output_shapes(dims[V]), format_supported,
                  "sliding_window_attention_into", ("out",), prepare="prepare")  # fmt: skip
plugin_classes = functools.partial(trt_common.plugin_classes, SPEC)  # (plugin, creator), built on first use
# register(op_types=()): the creator under PLUGIN.name (returned) and under each given op type
register = functools.partial(trt_common.register, SPEC)
