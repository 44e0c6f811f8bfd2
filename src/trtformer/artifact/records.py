"""The manifest's records: tensors, dims, state pairs, graphs, links between graphs, files, plugins and engines.

Each record is a frozen dataclass that the exporter and the engine builder fill in, `to_dict` writes and
`from_dict` reads back with every field checked: a manifest edited by hand or damaged fails with an ArtifactError
that names the field, never with a KeyError or TypeError deep inside a backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ArtifactError
from . import shapes
from .dtypes import dtype

# What an input is for. Roles drive the one example-input generator (export, parity, bench), padding, and the
# runtimes that fill inputs a caller leaves out, so none of them matches on input names.
INPUT_ROLES = (
    "ids",  # token ids: integers in value_range
    "padding-mask",  # 1 = real token, 0 = padding; its last axis runs over the positions
    "global-mask",  # 1 = a token that attends to and from every token (Longformer)
    "token-types",  # segment ids (BERT's sentence A / B)
    "choice-index",  # a position on the ids' last axis (the GPT double heads' classification token)
    "state",  # carried from the previous call (KV cache, memory): one half of a StatePair
    "features",  # float activations fed from outside (an encoder's hidden states)
)
STATE_KINDS = ("kv-cache", "memory")
LINK_KINDS = (
    "feed",  # an output of one graph's call is an input of another graph's calls (encoder states -> decoder)
    "cache",  # an output computed once that another graph reads unchanged at every step (cross-attention keys)
)
PADDING_SIDES = ("left", "right")


# ---------------------------------------------------------------------------------------------- field readers


class Reader:
    """Typed access to one JSON object of the manifest; every failure names `where` and the field."""

    def __init__(self, data: Any, where: str):
        if not isinstance(data, Mapping):
            raise ArtifactError(f"{where} must be a JSON object, got {_kind(data)}")
        self.data, self.where = data, where

    def get(self, key: str, check: Callable[[Any], bool], want: str, default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise ArtifactError(f"{self.where} lacks {key!r}")
            return default
        value = self.data[key]
        if not check(value):
            raise ArtifactError(f"{self.where}.{key} must be {want}, got {_kind(value)} {value!r:.60}")
        return value

    def str(self, key: str, default: Any = ...) -> str:
        return self.get(key, lambda v: isinstance(v, str), "a string", default)

    def int(self, key: str, default: Any = ...) -> int:
        return self.get(key, _is_int, "an integer", default)

    def dict(self, key: str, default: Any = ...) -> dict:
        return self.get(key, lambda v: isinstance(v, Mapping), "a JSON object", default)

    def list(self, key: str, default: Any = ...) -> list:
        return self.get(key, lambda v: isinstance(v, list), "a list", default)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _one_of(value: str, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise ArtifactError(f"{where} is {value!r}; it must be one of {', '.join(allowed)}")
    return value


# ---------------------------------------------------------------------------------------------- tensors and dims


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # manifest dtype name (see dtypes.py): float32, float16, bfloat16, int64
    shape: tuple[str | int, ...]  # ints are fixed, strings are dimension expressions (see shapes.py)
    value_range: tuple[int, int] | None = None  # inclusive bounds for integer inputs (token ids, masks)
    description: str = ""
    role: str = ""  # inputs: one of INPUT_ROLES; outputs: ""

    @property
    def rank(self) -> int:
        return len(self.shape)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.value_range is not None:
            d["value_range"] = list(self.value_range)
        if self.description:
            d["description"] = self.description
        if self.role:
            d["role"] = self.role
        return d

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TensorSpec:
        r = Reader(data, where)
        name = r.str("name")
        where = f"{where} ({name})"
        dt = r.str("dtype")
        dtype(dt)  # known
        shape = r.list("shape")
        for d in shape:
            if isinstance(d, str):
                try:
                    shapes.symbols(d)
                except ValueError as exc:
                    raise ArtifactError(f"{where}: {exc}") from None
            elif not _is_int(d) or d < 0:
                raise ArtifactError(f"{where} has the dimension {d!r}; dims are non-negative integers or expressions")
        rng = r.get("value_range", lambda v: v is None or (isinstance(v, list) and len(v) == 2 and all(map(_is_int, v))),
                    "[low, high] integers or null", None)
        role = r.str("role", "")
        if role:
            _one_of(role, INPUT_ROLES, f"{where}.role")
        return cls(name, dt, tuple(shape), tuple(rng) if rng is not None else None, r.str("description", ""), role)


@dataclass(frozen=True)
class StatePair:
    """An output that becomes an input on the next call (KV cache, segment memory)."""

    input: str
    output: str
    axis: int  # the axis that grows (past length, memory length)
    kind: str  # one of STATE_KINDS

    def to_dict(self) -> dict:
        return {"input": self.input, "output": self.output, "axis": self.axis, "kind": self.kind}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> StatePair:
        r = Reader(data, where)
        return cls(r.str("input"), r.str("output"), r.int("axis"), _one_of(r.str("kind"), STATE_KINDS, f"{where}.kind"))


@dataclass(frozen=True)
class DimSpec:
    min: int
    max: int | None  # None: unbounded
    opt: int  # a typical size, for optimisation profiles and example inputs
    description: str = ""

    def to_dict(self) -> dict:
        return {"min": self.min, "max": self.max, "opt": self.opt, "description": self.description}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> DimSpec:
        r = Reader(data, where)
        lo, hi, opt = r.int("min"), r.get("max", lambda v: v is None or _is_int(v), "an integer or null"), r.int("opt")
        if lo < 0 or (hi is not None and hi < lo):
            raise ArtifactError(f"{where} has min {lo} and max {hi}: not a range")
        return cls(lo, hi, opt, r.str("description", ""))


# ---------------------------------------------------------------------------------------------- graphs


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of an artifact: its I/O, the state it carries from call to call, its dims and limits, and
    its files (the plain graph, and ONNX Runtime's fused and int8 variants when exported)."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    models: dict[str, str]  # variant (plain | optimized | int8) -> file in the artifact
    state: tuple[StatePair, ...] = ()
    dims: dict[str, DimSpec] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)  # sums of dims -> their most, e.g. {"past + seq": 1024}
    padding_side: str = "left"  # decoders pad on the left so that new tokens line up at the end
    fusions: dict[str, int] = field(default_factory=dict)  # ONNX Runtime fusions in the optimized variant
    quantization: dict | None = None  # what the int8 variant rounded

    # --- lookups ------------------------------------------------------------------------------------------

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def input(self, name: str) -> TensorSpec:
        return _named(self.inputs, name, f"graph {self.name!r} has no input")

    def output(self, name: str) -> TensorSpec:
        return _named(self.outputs, name, f"graph {self.name!r} has no output")

    def with_role(self, role: str) -> list[TensorSpec]:
        return [t for t in self.inputs if t.role == role]

    def role_input(self, role: str) -> TensorSpec | None:
        """The first input of `role`, or None."""
        return next(iter(self.with_role(role)), None)

    @property
    def state_inputs(self) -> dict[str, StatePair]:
        return {p.input: p for p in self.state}

    @property
    def state_outputs(self) -> dict[str, StatePair]:
        return {p.output: p for p in self.state}

    @property
    def state_kinds(self) -> set[str]:
        return {p.kind for p in self.state}

    def state_dim(self, pair: StatePair) -> str | int:
        """The dimension a state pair grows along (past, mem)."""
        return self.input(pair.input).shape[pair.axis]

    def empty_state_sizes(self) -> dict[str, int]:
        """The state's growing dims at the first step: all 0."""
        return {self.state_dim(p): 0 for p in self.state}

    @property
    def sequence_dim(self) -> str | None:
        """The symbol of the positions a call adds: the last axis of the ids input (seq, seg)."""
        ids = self.role_input("ids")
        last = ids.shape[-1] if ids is not None and ids.shape else None
        return last if shapes.is_symbol(last) else None

    def sequence_axis(self, tensor: TensorSpec) -> int | None:
        """The axis of `tensor` that runs over positions (`seq`, or `past + seq` for a KV cache), or None."""
        seq = self.sequence_dim
        if seq is None:
            return None
        return next((i for i, d in enumerate(tensor.shape) if isinstance(d, str) and seq in shapes.symbols(d)), None)

    def variant(self, which: str = "default") -> str:
        """Which file variant `which` means: "default" is the most processed one (int8, optimized, plain)."""
        if which == "default":
            return next(k for k in ("int8", "optimized", "plain") if k in self.models)
        if which not in self.models:
            raise ArtifactError(f"graph {self.name!r} has no {which!r} variant; it has {sorted(self.models)}")
        return which

    # --- (de)serialisation ---------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "state": [p.to_dict() for p in self.state],
            "dims": {k: v.to_dict() for k, v in self.dims.items()},
            "limits": dict(self.limits),
            "padding_side": self.padding_side,
            "models": dict(self.models),
            "fusions": dict(self.fusions),
            "quantization": self.quantization,
        }

    @classmethod
    def from_dict(cls, name: str, data: Any, where: str) -> GraphSpec:
        r = Reader(data, where)
        inputs = tuple(TensorSpec.from_dict(t, f"{where}.inputs[{i}]") for i, t in enumerate(r.list("inputs")))
        outputs = tuple(TensorSpec.from_dict(t, f"{where}.outputs[{i}]") for i, t in enumerate(r.list("outputs")))
        models = r.dict("models")
        if not models or "plain" not in models or not all(isinstance(v, str) for v in models.values()):
            raise ArtifactError(f"{where}.models must name at least the plain graph's file, got {models!r:.80}")
        limits = r.dict("limits", {})
        if not all(_is_int(v) for v in limits.values()):
            raise ArtifactError(f"{where}.limits must map dimension sums to integers")
        graph = cls(
            name, inputs, outputs, dict(models),
            tuple(StatePair.from_dict(p, f"{where}.state[{i}]") for i, p in enumerate(r.list("state", []))),
            {k: DimSpec.from_dict(v, f"{where}.dims.{k}") for k, v in r.dict("dims", {}).items()},
            dict(limits), _one_of(r.str("padding_side", "left"), PADDING_SIDES, f"{where}.padding_side"),
            dict(r.dict("fusions", {}) or {}), r.get("quantization", lambda v: v is None or isinstance(v, Mapping), "an object or null", None),
        )  # fmt: skip
        graph.check(where)
        return graph

    def check(self, where: str) -> None:
        """Names unique, every state pair between an input and an output of one dtype, with a role for each input."""
        for kind, tensors in (("input", self.inputs), ("output", self.outputs)):
            names = [t.name for t in tensors]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ArtifactError(f"{where} lists the {kind}s {dupes} twice")
        for p in self.state:
            src, dst = _find(self.inputs, p.input), _find(self.outputs, p.output)
            if src is None or dst is None:
                raise ArtifactError(f"{where}: state pair {p.input} -> {p.output} names a tensor the graph lacks")
            if src.dtype != dst.dtype or src.rank != dst.rank or not 0 <= p.axis < src.rank:
                raise ArtifactError(f"{where}: state pair {p.input} -> {p.output} differs in dtype or rank, or its axis is off")
        no_role = [t.name for t in self.inputs if not t.role]
        if no_role:
            raise ArtifactError(f"{where}: the inputs {no_role} have no role")


def _find(tensors, name: str) -> TensorSpec | None:
    return next((t for t in tensors if t.name == name), None)


def _named(tensors, name: str, what: str) -> TensorSpec:
    found = _find(tensors, name)
    if found is None:
        raise KeyError(f"{what} {name!r}")
    return found


@dataclass(frozen=True)
class Link:
    """How graphs chain: `source` (an output of `source_graph`) becomes `target` (an input of `target_graph`)."""

    source_graph: str
    source: str
    target_graph: str
    target: str
    kind: str  # one of LINK_KINDS

    def to_dict(self) -> dict:
        return {"source_graph": self.source_graph, "source": self.source, "target_graph": self.target_graph,
                "target": self.target, "kind": self.kind}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Link:
        r = Reader(data, where)
        return cls(r.str("source_graph"), r.str("source"), r.str("target_graph"), r.str("target"),
                   _one_of(r.str("kind"), LINK_KINDS, f"{where}.kind"))  # fmt: skip


# ---------------------------------------------------------------------------------------------- files, plugins, engines


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int

    def to_dict(self) -> dict:
        return {"sha256": self.sha256, "bytes": self.bytes}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> FileEntry:
        r = Reader(data, where)
        digest = r.str("sha256")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ArtifactError(f"{where}.sha256 is not a sha256 hex digest")
        size = r.int("bytes")
        if size < 0:
            raise ArtifactError(f"{where}.bytes is negative")
        return cls(digest, size)


@dataclass(frozen=True)
class OpTypeRecord:
    """One attribute set of a fused op with variants: its node op type (= local function name) and attributes."""

    op_type: str
    nodes: int
    attributes: dict

    def to_dict(self) -> dict:
        return {"op_type": self.op_type, "nodes": self.nodes, "attributes": dict(self.attributes)}


@dataclass(frozen=True)
class PluginRecord:
    """A fused op a plugin-form graph uses: the custom op, its node domain and plugin name, how many nodes."""

    op: str  # the torch custom op, e.g. trtformer::rel_position_attention
    domain: str
    name: str  # the TensorRT plugin name
    plugin_namespace: str
    plugin_version: str
    nodes: int
    attributes: dict | None = None  # one attribute set per model
    op_types: tuple[OpTypeRecord, ...] = ()  # or one op type per attribute set

    @property
    def node_op_types(self) -> list[str]:
        """Every op type the graph's nodes of this plugin carry."""
        return [t.op_type for t in self.op_types] or [self.name]

    def to_dict(self) -> dict:
        d = {"op": self.op, "domain": self.domain, "name": self.name, "plugin_namespace": self.plugin_namespace,
             "plugin_version": self.plugin_version, "nodes": self.nodes}  # fmt: skip
        if self.attributes is not None:
            d["attributes"] = dict(self.attributes)
        if self.op_types:
            d["op_types"] = [t.to_dict() for t in self.op_types]
        return d

    @classmethod
    def from_dict(cls, data: Any, where: str) -> PluginRecord:
        r = Reader(data, where)
        types = tuple(OpTypeRecord(t.str("op_type"), t.int("nodes"), t.dict("attributes"))
                      for t in (Reader(x, f"{where}.op_types[{i}]") for i, x in enumerate(r.list("op_types", []))))  # fmt: skip
        return cls(r.str("op"), r.str("domain"), r.str("name"), r.str("plugin_namespace"), r.str("plugin_version"),
                   r.int("nodes"), r.dict("attributes", None), types)  # fmt: skip


@dataclass(frozen=True)
class EngineRecord:
    """A TensorRT engine built from one graph: what built it, for which GPUs and shapes, from which ONNX."""

    key: str
    sha256: str
    bytes: int
    flavor: str
    version: str
    compute_capability: tuple[str, ...]
    profiles: tuple[dict, ...]  # engines.profiles.Profile.to_dict() of each optimisation profile
    onnx: str
    onnx_sha256: str
    plugins: tuple[str, ...] = ()  # fused ops that run as plugin layers
    build_seconds: float = 0.0
    created: str = ""
    graph: str = "model"

    def to_dict(self) -> dict:
        return {
            "key": self.key, "sha256": self.sha256, "bytes": self.bytes, "flavor": self.flavor, "version": self.version,
            "compute_capability": list(self.compute_capability), "profiles": list(self.profiles), "onnx": self.onnx,
            "onnx_sha256": self.onnx_sha256, "plugins": list(self.plugins), "build_seconds": self.build_seconds,
            "created": self.created, "graph": self.graph,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Any, where: str) -> EngineRecord:
        r = Reader(data, where)
        caps = r.list("compute_capability")
        profiles = r.list("profiles")
        if not profiles or not all(isinstance(p, Mapping) and isinstance(p.get("inputs"), Mapping) for p in profiles):
            raise ArtifactError(f"{where}.profiles must be a list of profiles with their inputs")
        return cls(
            r.str("key"), r.str("sha256"), r.int("bytes"), r.str("flavor"), r.str("version"), tuple(map(str, caps)),
            tuple(profiles), r.str("onnx"), r.str("onnx_sha256"), tuple(r.list("plugins", [])),
            float(r.get("build_seconds", lambda v: isinstance(v, int | float), "a number", 0.0)), r.str("created", ""),
            r.str("graph", "model"),
        )  # fmt: skip
