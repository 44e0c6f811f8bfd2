"""Fused custom ops -> ONNX: the portable decomposition, and the plugin form's node plus local function.

Every op in TRANSLATIONS (a `torch.library` custom op from trtformer.ops) gets:
- in the portable form, its eager reference inlined (`run_decompositions`), so only standard ops remain;
- in the plugin form, one node `domain::name` per call, carrying `plugin_namespace` and `plugin_version` (which
  TensorRT with our plugins registered matches) plus the op's own attributes, and one ONNX local function of
  the same domain and name whose body is the portable decomposition, which ONNX Runtime and TensorRT-RTX
  inline.

Facts this module is built on (DESIGN.md, and seen here with onnx 1.23, onnxscript, TensorRT-RTX 1.x):
- onnxscript emits a custom-domain op only when onnx.defs has its schema, and drops attributes the schema does
  not declare. An output typed by a type variable of its own stays untyped (an invalid model), so each output
  shares the type variable of a named input.
- torch.onnx inlines the functions of its translation table, so the local function is appended afterwards.
- The body is traced, so it is specialised to one set of attribute values (head counts become reshape
  constants). ONNX would tell such bodies apart by `overload`, but TensorRT-RTX inlines by name alone,
  ignoring overload and domain. So an op either has one attribute set per model (Transformer-XL: its layers
  share them; a model that differs is refused), or it has `variant` names (Longformer: per-layer windows and
  dilations): each distinct attribute set becomes its own node op type and function, named after its
  attributes (`SlidingWindowAttention_w8_d1_1_2_4`), and the node's `plugin_name` attribute keeps the one
  TensorRT plugin name that the plugin registry registers under every op type the manifest lists. Making
  window and dilations tensor inputs of one body instead would turn every band shape (block size, unfold
  width, interleave lengths) into a data-dependent size, which TensorRT cannot build with.
- TensorRT plugins take no BOOL (nor UINT8) tensors (`PluginTensorDesc::type`), so a bool argument of a fused op
  (Longformer's masks) reaches the node as INT32: a Cast before the node, and the function traced with an INT32
  input, so that ONNX Runtime and TensorRT-RTX run the same body. The op reads its masks through `!= 0`.
- The plugins run fp32 and fp16 only (their Triton kernels and format rules), so the plugin form is refused for
  other float types (bf16) before anything is written: the portable form runs bf16 everywhere.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx
import torch
from onnx import defs, helper

from ..artifact import PluginRecord
from ..artifact.records import OpTypeRecord
from ..errors import ExportError
from ..ops import rel_position, sliding_window
from ..ops.identity import OpIdentity, arguments

DOMAIN_VERSION = 1
# Tensor types a TensorRT plugin cannot take -> the one the plugin-form node gets instead (see the module docstring)
PLUGIN_CASTS = {torch.bool: torch.int32, torch.uint8: torch.int32}
ONNX_TYPES = {torch.int32: onnx.TensorProto.INT32}  # the cast targets above
PLUGIN_FLOATS = (torch.float32, torch.float16)  # what the plugins compute in
TENSOR_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(int64)", "tensor(int32)", "tensor(bool)"]
_A = defs.OpSchema.AttrType
# torch schema type -> ONNX attribute type; bools become ints (ONNX has no bool attribute).
ATTRIBUTE_TYPES = {"int": _A.INT, "bool": _A.INT, "float": _A.FLOAT, "str": _A.STRING, "int[]": _A.INTS,
                   "List[int]": _A.INTS, "float[]": _A.FLOATS, "List[float]": _A.FLOATS}  # fmt: skip


@dataclass(frozen=True)
class OpCall:
    """One call of a fused op in an ExportedProgram: its tensors (fake, with symbolic sizes) and attributes."""

    op: torch._ops.OpOverload
    tensors: dict[str, torch.Tensor]  # argument name -> meta value
    attrs: dict[str, Any]  # non-tensor argument name -> value

    def signature(self) -> tuple:
        """What the traced body depends on: attribute values, dtypes and static sizes."""
        sizes = [(t.dtype, tuple(d if isinstance(d, int) else None for d in t.shape)) for t in self.tensors.values()]
        attrs = [(k, tuple(v) if isinstance(v, list) else v) for k, v in self.attrs.items()]  # int[] args are lists
        return tuple(attrs), tuple(sizes)


@dataclass(frozen=True)
class Translation:
    identity: OpIdentity  # the node's domain and op type (the plugin's name in TensorRT), attributes and outputs
    like: tuple[str, ...]  # per output, the input whose type it has
    reference: Callable  # the op's eager body: the portable form and the function body
    attributes: Callable[[dict[str, Any]], dict[str, Any]]  # op attributes -> the node's own attributes
    function: Callable[[Translation, OpCall, int], list[onnx.FunctionProto]]  # the local function (+ helpers)
    # op attributes -> an op type suffix; None: one attribute set per model (see the module docstring)
    variant: Callable[[dict[str, Any]], str] | None = None

    @property
    def domain(self) -> str:
        """The plugin-form node's domain, also its function's."""
        return self.identity.domain

    @property
    def name(self) -> str:
        """The node's op type without a variant suffix: the plugin's name in TensorRT."""
        return self.identity.plugin

    @property
    def outputs(self) -> tuple[tuple[str, str], ...]:
        """(output name, the input whose type it has)."""
        return tuple(zip(self.identity.outputs, self.like, strict=True))

    def op_type(self, attrs: dict[str, Any]) -> str:
        """The node's op type and its function's name: the plugin name, plus the variant suffix if any."""
        return self.name if self.variant is None else f"{self.name}_{self.variant(attrs)}"

    def node_attributes(self, attrs: dict[str, Any]) -> dict[str, Any]:
        named = {} if self.variant is None else {"plugin_name": self.name}  # op type != plugin name
        plugin = {"plugin_namespace": self.identity.namespace, "plugin_version": self.identity.version}
        return {**self.attributes(attrs), **plugin, **named}


def onnx_attributes(attrs: dict[str, Any]) -> dict[str, Any]:
    """The op's attributes as ONNX takes them: bools as ints, tuples as lists."""
    return {k: int(v) if isinstance(v, bool) else list(v) if isinstance(v, tuple) else v for k, v in attrs.items()}


def bind(op, args: tuple, kwargs: dict) -> dict[str, Any]:
    """A call's arguments by schema name, defaults filled in."""
    bound = {a.name: a.default_value for a in op._schema.arguments if a.has_default_value()}
    bound.update(zip((a.name for a in op._schema.arguments), args, strict=False))  # trailing defaults may be left out
    bound.update(kwargs)
    return bound


# ---------------------------------------------------------------------------------------------- function bodies


def node_dtype(dtype: torch.dtype) -> torch.dtype:
    """The type a plugin-form node (and its function) takes for an argument of `dtype`."""
    return PLUGIN_CASTS.get(dtype, dtype)


def _example(fakes: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[dict]]:
    """Tensors of each meta value's example sizes and node dtype, and one Dim per symbol (shared where the call
    shares it)."""
    dims: dict[str, Any] = {}
    examples, dynamic = [], []
    for fake in fakes:
        shape, axes = [], {}
        for axis, d in enumerate(fake.shape):
            if isinstance(d, torch.SymInt):
                key = str(d.node.expr)
                if key not in dims:  # a symbol gets a name; a derived size (s0 + s1) is left to torch.export
                    dims[key] = torch.export.Dim(f"d{len(dims)}") if d.node.expr.is_Symbol else torch.export.Dim.AUTO
                axes[axis] = dims[key]
                shape.append(d.node.hint)
            else:
                shape.append(d)
        examples.append(torch.zeros(shape, dtype=node_dtype(fake.dtype)))
        dynamic.append(axes)
    return examples, dynamic


class _Body(torch.nn.Module):
    def __init__(self, fn: Callable, names: list[str], attrs: dict[str, Any]):
        super().__init__()
        self.fn, self.names, self.attrs = fn, names, attrs

    def forward(self, *tensors):
        return self.fn(**dict(zip(self.names, tensors, strict=True)), **self.attrs)


def decomposition_function(t: Translation, call: OpCall, opset: int) -> list[onnx.FunctionProto]:
    """The local function `t.domain::op type`: the op's reference, exported alone at the call's attributes, dtypes
    and sizes (dynamic where the call's are), its initializers turned into Constant nodes."""
    names = list(call.tensors)
    examples, dynamic = _example(list(call.tensors.values()))
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        body = torch.onnx.export(
            _Body(t.reference, names, call.attrs).eval(), tuple(examples), input_names=names,
            output_names=[o for o, _ in t.outputs], dynamic_shapes=(tuple(dynamic),), opset_version=opset,
            dynamo=True, external_data=False,
        ).model_proto  # fmt: skip
    graph = body.graph
    nodes = [helper.make_node("Constant", [], [init.name], value=init) for init in graph.initializer]
    nodes += graph.node
    name = t.op_type(call.attrs)
    for i, node in enumerate(nodes):  # prefixed: TensorRT names its layers after them, beside the main graph's
        node.name = f"{name}/{node.name or f'constant_{i}'}"
    attributes = list(t.node_attributes(call.attrs))  # declared; the body has their values baked in
    fn = helper.make_function(t.domain, name, [i.name for i in graph.input], [o.name for o in graph.output], nodes,
                              opset_imports=list(body.opset_import), attributes=attributes)
    return [fn, *body.functions]


def sliding_window_variant(attrs: dict[str, Any]) -> str:
    """`w8_d1_1_2_4` (per-head dilations), or `w512_d1` when every head has the same dilation."""
    dilations = attrs["dilations"][:1] if len(set(attrs["dilations"])) == 1 else attrs["dilations"]
    return f"w{attrs['window']}_d{'_'.join(map(str, dilations))}"


TRANSLATIONS: dict[Any, Translation] = {t.identity.op: t for t in (
    Translation(rel_position.IDENTITY, ("hidden", "mems"), rel_position.reference, onnx_attributes,
                decomposition_function),
    Translation(sliding_window.IDENTITY, ("v",), sliding_window.sliding_window_reference, onnx_attributes,
                decomposition_function, variant=sliding_window_variant),
)}  # fmt: skip


# ---------------------------------------------------------------------------------------------- export steps


def decompose(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """The portable form: every fused op replaced by its eager body, traced with the program's symbolic sizes."""
    return program.run_decompositions({op: t.reference for op, t in TRANSLATIONS.items()})


def plugin_calls(program: torch.export.ExportedProgram) -> dict[Any, list[OpCall]]:
    """The fused op calls of a program, by op; each op type must have one signature (see the module docstring)."""
    calls: dict[Any, list[OpCall]] = {}
    for node in program.graph.nodes:
        if node.op != "call_function" or node.target not in TRANSLATIONS:
            continue
        tensors, attrs = arguments(node.target)
        bound = bind(node.target, node.args, node.kwargs)
        call = OpCall(node.target, {n: bound[n].meta["val"] for n in tensors}, {n: bound[n] for n, _ in attrs})
        calls.setdefault(node.target, []).append(call)
    for op, mine in calls.items():
        t = TRANSLATIONS[op]
        _check_plugin_floats(op, mine)
        for op_type in dict.fromkeys(t.op_type(c.attrs) for c in mine):
            same = [c for c in mine if t.op_type(c.attrs) == op_type]
            if len({c.signature() for c in same}) > 1:
                differ = sorted({k for c in same for k, v in c.attrs.items() if v != same[0].attrs[k]}) or ["dtypes or sizes"]
                raise ExportError(
                    f"{op.name()} is called with {len({c.signature() for c in same})} different settings ({', '.join(differ)}); "
                    f"the plugin form holds one function body per op type ({op_type}), and TensorRT-RTX tells bodies "
                    "apart by name alone",
                    hint="use --form portable",
                )
    return calls


def _check_plugin_floats(op, calls: list[OpCall]) -> None:
    """Refuse float tensors the plugins do not compute in (bf16), naming the op and the dtype."""
    other = sorted({str(x.dtype).removeprefix("torch.") for c in calls for x in c.tensors.values()
                    if x.dtype.is_floating_point and x.dtype not in PLUGIN_FLOATS})  # fmt: skip
    if other:
        raise ExportError(
            f"the plugin form of {op.name()} takes float32 and float16 tensors, and this model gives it {', '.join(other)}: "
            "its TensorRT plugin and Triton kernels compute in float32 and float16 only",
            hint="export --form portable (it runs bf16 on ONNX Runtime, TensorRT and TensorRT-RTX), or --precision fp16",
        )


def _register_schema(op, t: Translation, op_type: str) -> None:
    if defs.has(op_type, t.domain):
        return
    tensors, attrs = arguments(op)
    FP = defs.OpSchema.FormalParameter
    unknown = [f"{n}: {ty}" for n, ty in attrs if ty not in ATTRIBUTE_TYPES]
    if unknown:
        raise ExportError(f"{op.name()} has arguments ONNX attributes cannot carry: {', '.join(unknown)}")
    attributes = [defs.OpSchema.Attribute(n, ATTRIBUTE_TYPES[ty], "") for n, ty in attrs]
    plugin = ("plugin_namespace", "plugin_version") + (() if t.variant is None else ("plugin_name",))  # all required
    attributes += [defs.OpSchema.Attribute(n, _A.STRING, "") for n in plugin]
    defs.register_schema(defs.OpSchema(
        op_type, t.domain, DOMAIN_VERSION,
        inputs=[FP(n, f"T{i}") for i, n in enumerate(tensors)],
        outputs=[FP(n, f"T{tensors.index(like)}") for n, like in t.outputs],
        type_constraints=[(f"T{i}", TENSOR_TYPES, "") for i in range(len(tensors))],
        attributes=attributes,
    ))  # fmt: skip


def onnx_table(calls: dict[Any, list[OpCall]]) -> dict[Any, Callable]:
    """torch.onnx's custom_translation_table: each op -> a function that emits its one custom-domain node (of the
    op type its attributes name)."""
    from onnxscript import opset18, values

    table = {}
    for op, mine in calls.items():
        t = TRANSLATIONS[op]
        for op_type in {t.op_type(c.attrs) for c in mine}:
            _register_schema(op, t, op_type)
        opset = values.Opset(t.domain, DOMAIN_VERSION)
        tensors, attrs = arguments(op)
        # argument -> the ONNX type it is cast to before the node (bool masks -> INT32; see the module docstring)
        casts = {n: ONNX_TYPES[node_dtype(x.dtype)] for c in mine for n, x in c.tensors.items() if x.dtype in PLUGIN_CASTS}

        def translate(*args, _op=op, _t=t, _opset=opset, _tensors=tensors, _attrs=attrs, _casts=casts, **kwargs):
            bound = bind(_op, args, kwargs)
            named = {n: bound[n] for n, _ in _attrs}
            inputs = [opset18.Cast(bound[n], to=_casts[n]) if n in _casts else bound[n] for n in _tensors]
            return getattr(_opset, _t.op_type(named))(*inputs, **_t.node_attributes(named))

        table[op] = translate
    return table


def attach_functions(proto: onnx.ModelProto, calls: dict[Any, list[OpCall]], opset: int) -> list[PluginRecord]:
    """Append each op's local function to the exported model; return the manifest's plugin records."""
    records = []
    for op, mine in calls.items():
        t = TRANSLATIONS[op]
        firsts: dict[str, OpCall] = {}  # op type -> its first call
        for call in mine:
            firsts.setdefault(t.op_type(call.attrs), call)
        nodes = [n for n in proto.graph.node if n.domain == t.domain and n.op_type in firsts]
        if len(nodes) != len(mine):
            raise ExportError(f"{len(mine)} calls of {op.name()} became {len(nodes)} {t.domain}::{t.name} nodes")
        for call in firsts.values():
            known = {(f.domain, f.name) for f in proto.functions}
            proto.functions.extend(f for f in t.function(t, call, opset) if (f.domain, f.name) not in known)
        attributes, op_types = None, ()
        if t.variant is None:
            attributes = t.attributes(mine[0].attrs)
        else:  # the op types (= function names) the plugin registry maps to the plugin `name`, in layer order
            op_types = tuple(OpTypeRecord(k, sum(n.op_type == k for n in nodes), t.attributes(c.attrs)) for k, c in firsts.items())
        records.append(PluginRecord(op.name(), t.domain, t.name, t.identity.namespace, t.identity.version, len(nodes),
                                    attributes, op_types))  # fmt: skip
    return records
