"""What every TensorRT plugin of trtformer shares: attribute coding, shape arithmetic and the IPluginV3 classes.

A plugin module (`<op>/trt.py`) describes its op in a `PluginSpec` (outputs, attribute fields, output shapes, format
rule, the Triton function enqueue runs) and gets its plugin and creator classes from `plugin_classes(spec)`.

tensorrt is imported when the classes are first needed (`plugin_classes`, `register`): this module imports without
it, and the attribute coding, shape arithmetic and format rules are plain functions tested without it.
Attributes are the op's own, named and typed by its schema (`ops.identity.OpIdentity.attributes`): ints and
bools as INT32 fields, floats as FLOAT32, int[] as an INT32 array of its length, the types TensorRT's ONNX parser
gives a plugin node's attributes.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..artifact.dtypes import DTYPES
from ..errors import EngineError, require
from .registry import Plugin

# torch schema type -> (numpy dtype of the plugin field, Python type of one element)
FIELD_TYPES: dict[str, tuple[type, type]] = {
    "int": (np.int32, int), "bool": (np.int32, bool), "float": (np.float32, float),
    "int[]": (np.int32, int), "List[int]": (np.int32, int), "float[]": (np.float32, float),
    "List[float]": (np.float32, float),
}  # fmt: skip
FIELD_DTYPES = {kind: dtype for kind, (dtype, _) in FIELD_TYPES.items()}
# TensorRT DataType member names -> the dtype names the format rules use (artifact/dtypes.py is the table)
TRT_DTYPE_NAMES = {d.trt: d.name for d in DTYPES.values()}


def is_list(kind: str) -> bool:
    return kind.endswith("[]") or kind.startswith("List[")


@dataclass(frozen=True)
class AttributeCodec:
    """The op's attributes <-> plugin field data: one array per attribute, in schema order."""

    plugin: str  # for error messages
    fields: tuple[tuple[str, str], ...]  # (attribute, torch type)

    def encode(self, attrs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """1-element arrays for scalars, the list's length for int[] / float[]."""
        return {name: np.array(attrs[name] if is_list(kind) else [attrs[name]], dtype=FIELD_DTYPES[kind]).reshape(-1)
                for name, kind in self.fields}  # fmt: skip

    def decode(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Plugin fields (name -> array-like, any int or float width) -> the op's attributes. Unknown names, such as
        the parser's plugin_namespace and plugin_version, are ignored; a missing one is an error."""
        missing = [name for name, _ in self.fields if name not in data]
        if missing:
            raise EngineError(f"{self.plugin} plugin fields lack {missing}", hint="re-export the model in plugin form")
        attrs = {}
        for name, kind in self.fields:
            cast, values = FIELD_TYPES[kind][1], np.asarray(data[name]).reshape(-1)
            attrs[name] = [cast(x) for x in values] if is_list(kind) else cast(values[0])
        return attrs

    def collection(self, trt, data: Mapping[str, np.ndarray]):
        """A trt.PluginFieldCollection of the fields in data (name -> array of the field's numpy dtype)."""
        types = {np.int32: trt.PluginFieldType.INT32, np.float32: trt.PluginFieldType.FLOAT32}
        fields = [trt.PluginField(n, data[n], types[FIELD_DTYPES[k]]) for n, k in self.fields if n in data]
        return trt.PluginFieldCollection(fields)

    def empty(self) -> dict[str, np.ndarray]:
        """Every field, empty, with its type: the creator's field_names (the parser reads attributes by these)."""
        return {n: np.array([], dtype=FIELD_DTYPES[k]) for n, k in self.fields}


@dataclass(frozen=True)
class DimOps:
    """The arithmetic output shapes need: plain ints here, TensorRT dimension expressions in the plugin."""

    const: Callable[[int], Any]
    add: Callable[[Any, Any], Any]
    min: Callable[[Any, Any], Any]


INT_OPS = DimOps(lambda c: c, operator.add, min)


@dataclass(frozen=True)
class PluginSpec:
    """One op's TensorRT plugin: everything plugin_classes needs besides TensorRT itself."""

    plugin: Plugin  # name, namespace, version
    codec: AttributeCodec
    outputs: tuple[str, ...]
    output_shapes: Callable[[list[list], Mapping[str, Any], DimOps], list[list]]  # input dims, attributes
    format_supported: Callable[[int, Sequence[str], bool], bool]  # position, dtype names so far, linear
    # enqueue calls function(*inputs, **attrs, **dict(zip(output_arguments, outputs))), a function of the plugin's
    # Triton module that writes into given buffers
    function: str
    output_arguments: tuple[str, ...]
    # a function of the Triton module called as prepare(attrs, device) when an execution context takes the plugin,
    # before any enqueue: what enqueue must not create itself (it may run inside a CUDA graph capture)
    prepare: str | None = None


def as_tensor(trt, ptr: int, desc):
    """A device buffer of TensorRT's as a torch tensor, without a copy (an empty one for zero-size tensors)."""
    import torch

    shape = tuple(desc.dims)
    dtype = getattr(torch, TRT_DTYPE_NAMES[desc.type.name])
    if ptr == 0 or 0 in shape:
        return torch.empty(shape, dtype=dtype, device="cuda")
    interface = {"shape": shape, "typestr": np.dtype(trt.nptype(desc.type)).str, "data": (ptr, False), "version": 3}
    return torch.as_tensor(type("Buffer", (), {"__cuda_array_interface__": interface})(), device="cuda")


@functools.cache
def plugin_classes(spec: PluginSpec) -> tuple[type, type]:
    """(plugin, creator) classes of spec, built on first use because they derive from tensorrt's."""
    trt = require("tensorrt", "tensorrt", f"the TensorRT plugin {spec.plugin.name}")
    import torch

    kernels = spec.plugin.load_triton()
    run = getattr(kernels, spec.function)
    prepare = getattr(kernels, spec.prepare) if spec.prepare else None
    bases = (trt.IPluginV3, trt.IPluginV3OneCore, trt.IPluginV3OneBuild, trt.IPluginV3OneRuntime)

    class Plugin(*bases):
        def __init__(self, attrs: Mapping[str, Any], name: str = spec.plugin.name):
            for base in bases:  # pybind11 bases: each __init__ explicitly, as TensorRT's Python plugin samples do
                base.__init__(self)
            self.attrs = dict(attrs)
            # The arrays behind get_fields_to_serialize's PluginFields, held by the plugin: TensorRT reads them after
            # that call returns, and a PluginField does not keep its array alive.
            self.fields = spec.codec.encode(self.attrs)
            self.serialized = None
            self.num_outputs = len(spec.outputs)
            self.plugin_name, self.plugin_namespace = name, spec.plugin.namespace
            self.plugin_version = spec.plugin.version

        def get_capability_interface(self, type):  # one object serves the core, build and runtime capabilities
            return self

        def clone(self):
            return Plugin(self.attrs, self.plugin_name)

        def get_fields_to_serialize(self):
            self.serialized = spec.codec.collection(trt, self.fields)  # kept with its arrays, see __init__
            return self.serialized

        def get_output_data_types(self, input_types):  # the format rules give every output the first input's type
            return [input_types[0]] * len(spec.outputs)

        def get_output_shapes(self, inputs, shape_inputs, expr):
            op = trt.DimensionOperation
            binary = functools.partial(functools.partial, expr.operation)  # binary(SUM)(a, b) = a + b
            ops = DimOps(expr.constant, binary(op.SUM), binary(op.MIN))
            out = []
            for dims in spec.output_shapes([list(x) for x in inputs], self.attrs, ops):
                d = trt.DimsExprs(len(dims))
                for i, e in enumerate(dims):
                    d[i] = e
                out.append(d)
            return out

        def supports_format_combination(self, pos, in_out, num_inputs):
            dtypes = [TRT_DTYPE_NAMES.get(t.desc.type.name, str(t.desc.type)) for t in in_out[: pos + 1]]
            return spec.format_supported(pos, dtypes, in_out[pos].desc.format == trt.TensorFormat.LINEAR)

        def configure_plugin(self, inp, out):
            pass

        def on_shape_change(self, inp, out):
            pass

        def get_valid_tactics(self):
            return []

        def set_tactic(self, tactic):
            pass

        def attach_to_context(self, context):
            # The runtime phase starts here, outside any stream capture; enqueue may be captured in a CUDA graph.
            if prepare is not None:
                prepare(self.attrs, torch.device("cuda", torch.cuda.current_device()))
            return self.clone()

        def enqueue(self, input_desc, output_desc, inputs, outputs, workspace, stream):
            ins = [as_tensor(trt, p, d) for p, d in zip(inputs, input_desc, strict=True)]
            outs = [as_tensor(trt, p, d) for p, d in zip(outputs, output_desc, strict=True)]
            with torch.cuda.stream(torch.cuda.ExternalStream(stream)):  # the Triton launches go on TensorRT's stream
                run(*ins, **self.attrs, **dict(zip(spec.output_arguments, outs, strict=True)))

    class Creator(trt.IPluginCreatorV3One):
        def __init__(self, name: str = spec.plugin.name):
            trt.IPluginCreatorV3One.__init__(self)
            self.name, self.plugin_namespace, self.plugin_version = name, spec.plugin.namespace, spec.plugin.version
            self.declared = spec.codec.empty()  # held: the collection below points into these arrays
            self.field_names = spec.codec.collection(trt, self.declared)

        def create_plugin(self, name, fc, phase):
            return Plugin(spec.codec.decode({f.name: f.data for f in fc}), self.name)

    Plugin.__name__ = Plugin.__qualname__ = f"{spec.plugin.name}Plugin"
    Creator.__name__ = Creator.__qualname__ = f"{spec.plugin.name}Creator"
    return Plugin, Creator


_REGISTERED: dict[tuple[str, str], Any] = {}  # (namespace, name) -> creator: kept alive, registered once


def register(spec: PluginSpec, names: Sequence[str] = ()):
    """Register creators in TensorRT's plugin registry under spec.plugin.namespace, one for the plugin's name and one
    for each extra name in `names` (the op types plugin-form nodes carry); returns the one of the plugin's name.
    Registering again is a no-op."""
    trt = require("tensorrt", "tensorrt", f"the TensorRT plugin {spec.plugin.name}")
    creator_class = plugin_classes(spec)[1]
    for name in dict.fromkeys([spec.plugin.name, *names]):
        key = (spec.plugin.namespace, name)
        if key not in _REGISTERED:
            _REGISTERED[key] = creator_class(name)
            trt.get_plugin_registry().register_creator(_REGISTERED[key], spec.plugin.namespace)
    return _REGISTERED[(spec.plugin.namespace, spec.plugin.name)]
