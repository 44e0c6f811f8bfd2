"""TensorRT IPluginV3 for `trtformer::RelPositionAttention`: the plugin-form node's kernel inside an engine.

Two outputs, as the node has: the attention sublayer's output (hidden's shape) and the layer's new memory
[min(mem_len, mlen + qlen), batch, d_model]. enqueue wraps TensorRT's device pointers as torch tensors on
TensorRT's stream and runs the Triton implementation straight into the output buffers.

tensorrt is imported when the plugin classes are first needed (`plugin_classes`, `register`): this module imports
without it, and its attribute coding, shape arithmetic and format rule are plain functions tested without it.
Attributes are the op's own, named and typed by the exporter's translation (`translations.arguments`): ints and
bools as INT32 fields, floats as FLOAT32, the types TensorRT's ONNX parser gives a plugin node's attributes.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import EngineError, require
from ...exporter.translations import arguments
from ..registry import PLUGINS

PLUGIN = PLUGINS["RelPositionAttention"]
TENSORS, FIELDS = arguments(PLUGIN.op)  # input names in order; [(attribute, torch type)]
OUTPUTS = ("output", "new_mem")
FIELD_DTYPES = {"int": np.int32, "bool": np.int32, "float": np.float32}  # numpy dtype of each field
FLOAT_TYPES = ("float32", "float16")
LN_INPUTS = (TENSORS.index("ln_weight"), TENSORS.index("ln_bias"))  # may stay fp32 in an fp16 model


def encode_attributes(attrs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The op's attributes as plugin field data, one 1-element array each, in schema order."""
    return {name: np.array([attrs[name]], dtype=FIELD_DTYPES[kind]) for name, kind in FIELDS}


def decode_attributes(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Plugin fields (name -> array-like, any int or float width) -> the op's attributes. Unknown names, such as
    the parser's plugin_namespace and plugin_version, are ignored; a missing one is an error."""
    missing = [name for name, _ in FIELDS if name not in fields]
    if missing:
        raise EngineError(f"{PLUGIN.name} plugin fields lack {missing}", hint="re-export the model in plugin form")
    cast = {"int": int, "bool": bool, "float": float}
    return {name: cast[kind](np.asarray(fields[name]).reshape(-1)[0]) for name, kind in FIELDS}


@dataclass(frozen=True)
class DimOps:
    """The arithmetic output shapes need: plain ints here, TensorRT dimension expressions in the plugin."""

    const: Callable[[int], Any]
    add: Callable[[Any, Any], Any]
    min: Callable[[Any, Any], Any]


INT_OPS = DimOps(lambda c: c, operator.add, min)


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


def field_collection(trt, data: Mapping[str, np.ndarray]):
    """A trt.PluginFieldCollection of the fields in data (name -> array of the field's numpy dtype)."""
    types = {np.int32: trt.PluginFieldType.INT32, np.float32: trt.PluginFieldType.FLOAT32}
    fields = [trt.PluginField(n, data[n], types[FIELD_DTYPES[k]]) for n, k in FIELDS if n in data]
    return trt.PluginFieldCollection(fields)


@functools.cache
def plugin_classes() -> tuple[type, type]:
    """(plugin, creator) classes, built on first use because they derive from tensorrt's."""
    trt = require("tensorrt", "tensorrt", f"the TensorRT plugin {PLUGIN.name}")
    import torch

    from .triton import rel_position_attention_into

    dtype_names = {trt.DataType.FLOAT: "float32", trt.DataType.HALF: "float16"}
    torch_dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}

    def as_tensor(ptr: int, desc) -> torch.Tensor:
        """A device buffer of TensorRT's as a torch tensor, without a copy (an empty one for zero-size tensors)."""
        shape, dtype = tuple(desc.dims), torch_dtypes[desc.type]
        if ptr == 0 or 0 in shape:
            return torch.empty(shape, dtype=dtype, device="cuda")
        buffer = type("Buffer", (), {"__cuda_array_interface__": {
            "shape": shape, "typestr": np.dtype(trt.nptype(desc.type)).str, "data": (ptr, False), "version": 3}})
        return torch.as_tensor(buffer(), device="cuda")

    bases = (trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime)

    class RelPositionAttentionPlugin(*bases):
        def __init__(self, attrs: Mapping[str, Any]):
            for base in bases:  # pybind11 bases: each __init__ explicitly, as TensorRT's Python plugin samples do
                base.__init__(self)
            self.attrs = dict(attrs)
            self.num_outputs = len(OUTPUTS)
            self.plugin_name, self.plugin_namespace, self.plugin_version = PLUGIN.name, PLUGIN.namespace, PLUGIN.version

        def get_capability_interface(self, type):  # one object serves the core, build and runtime capabilities
            return self

        def clone(self):
            return RelPositionAttentionPlugin(self.attrs)

        def get_fields_to_serialize(self):
            return field_collection(trt, encode_attributes(self.attrs))

        def get_output_data_types(self, input_types):
            return [input_types[0]] * len(OUTPUTS)

        def get_output_shapes(self, inputs, shape_inputs, expr):
            op = trt.DimensionOperation
            binary = functools.partial(functools.partial, expr.operation)  # binary(SUM)(a, b) = a + b
            ops = DimOps(expr.constant, binary(op.SUM), binary(op.MIN))
            shapes = output_shapes(list(inputs[0]), list(inputs[1]), self.attrs["mem_len"], ops)
            out = []
            for dims in shapes:
                d = trt.DimsExprs(len(dims))
                for i, e in enumerate(dims):
                    d[i] = e
                out.append(d)
            return out

        def supports_format_combination(self, pos, in_out, num_inputs):
            dtypes = [dtype_names.get(t.desc.type, str(t.desc.type)) for t in in_out[: pos + 1]]
            return format_supported(pos, dtypes, in_out[pos].desc.format == trt.TensorFormat.LINEAR)

        def configure_plugin(self, inp, out):
            pass

        def on_shape_change(self, inp, out):
            pass

        def get_valid_tactics(self):
            return []

        def set_tactic(self, tactic):
            pass

        def attach_to_context(self, context):
            return self.clone()

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            ins = [as_tensor(p, d) for p, d in zip(inputs, input_desc, strict=True)]
            outs = [as_tensor(p, d) for p, d in zip(outputs, output_desc, strict=True)]
            with torch.cuda.stream(torch.cuda.ExternalStream(stream)):  # the Triton launches go on TensorRT's stream
                rel_position_attention_into(*ins, **self.attrs, out=outs[0], new_mem=outs[1])

    class RelPositionAttentionCreator(trt.IPluginCreatorV3One):
        def __init__(self):
            trt.IPluginCreatorV3One.__init__(self)
            self.name, self.plugin_namespace, self.plugin_version = PLUGIN.name, PLUGIN.namespace, PLUGIN.version
            self.field_names = field_collection(trt, {n: np.array([], dtype=FIELD_DTYPES[k]) for n, k in FIELDS})

        def create_plugin(self, name, fc, phase):
            return RelPositionAttentionPlugin(decode_attributes({f.name: f.data for f in fc}))

    return RelPositionAttentionPlugin, RelPositionAttentionCreator


def register():
    """Register the creator in TensorRT's plugin registry under PLUGIN.namespace; returns it."""
    trt = require("tensorrt", "tensorrt", f"the TensorRT plugin {PLUGIN.name}")
    creator = plugin_classes()[1]()
    trt.get_plugin_registry().register_creator(creator, PLUGIN.namespace)
    return creator
