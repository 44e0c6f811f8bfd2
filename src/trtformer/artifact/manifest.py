"""The manifest: what an artifact holds, typed. Schema 2 writes; schemas 1 and 2 read.

Schema 2 describes an artifact as named graphs, each with its own I/O, state, dims and files, plus the links
that chain them (an encoder's output feeding a decoder; a cache one graph fills and another reads). A
single-graph artifact (every family so far) has one graph named "model". Schema 1 (trtformer before the
graphs) kept that graph's fields at the top level and had no input roles: reading it lifts those fields into
graph "model" and gives each input its role from its name, the one place where names decide roles.

Every path a manifest names (files, graph files, reference weights, engines) must stay inside the artifact, and
every graph and weight file must be listed in `files` with its size and sha256: a manifest that breaks either
is refused, so no manifest can make a runtime open a file it has not checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any

from ..errors import ArtifactError
from .dtypes import PRECISIONS
from .records import EngineRecord, FileEntry, GraphSpec, Link, PluginRecord, Reader

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
MANIFEST = "manifest.json"
DEFAULT_GRAPH = "model"
FORMS = ("portable", "plugin")

# Schema 1: the graph's fields at the top level, roles by input name.
_V1_GRAPH_KEYS = ("inputs", "outputs", "state", "dims", "limits", "padding_side", "models", "fusions", "quantization")
_V1_ROLES = {"input_ids": "ids", "attention_mask": "padding-mask", "global_attention_mask": "global-mask",
             "token_type_ids": "token-types", "mc_token_ids": "choice-index"}  # fmt: skip
_KNOWN = {"schema_version", "family", "config", "source", "form", "precision", "opset", "graphs", "links", "plugins",
          "reference", "files", "engines", "versions", "created"}  # fmt: skip


@dataclass(frozen=True)
class Manifest:
    family: str
    config: dict  # the family's config dataclass as a dict
    form: str  # portable | plugin
    precision: str  # fp32 | fp16 | bf16
    opset: int
    graphs: dict[str, GraphSpec]
    files: dict[str, FileEntry]  # every file the artifact ships (engines excepted: they are derived)
    links: tuple[Link, ...] = ()
    plugins: tuple[PluginRecord, ...] = ()
    engines: dict[str, EngineRecord] = field(default_factory=dict)
    reference: str | None = None  # fp32 weights of the torch reference
    source: str = ""
    versions: dict = field(default_factory=dict)
    created: str = ""
    extra: dict = field(default_factory=dict)  # keys a newer writer added, kept on rewrite
    read_schema: int = SCHEMA_VERSION  # the schema this manifest was read from

    # --- graphs ---------------------------------------------------------------------------------------------

    def graph(self, name: str | None = None) -> GraphSpec:
        """Graph `name`; without a name the artifact's only graph (or the one named "model")."""
        if name is None:
            if DEFAULT_GRAPH in self.graphs:
                return self.graphs[DEFAULT_GRAPH]
            if len(self.graphs) == 1:
                return next(iter(self.graphs.values()))
            raise ArtifactError(f"this artifact has the graphs {', '.join(self.graphs)}; name one",
                                hint="pass graph=NAME (--graph-name NAME on the command line)")
        if name not in self.graphs:
            raise ArtifactError(f"this artifact has no graph {name!r}; it has {', '.join(self.graphs)}")
        return self.graphs[name]

    def links_into(self, graph: str) -> list[Link]:
        return [k for k in self.links if k.target_graph == graph]

    def with_engine(self, name: str, record: EngineRecord) -> Manifest:
        return replace(self, engines={**self.engines, name: record})

    # --- (de)serialisation ------------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "family": self.family,
            "config": self.config,
            "source": self.source,
            "form": self.form,
            "precision": self.precision,
            "opset": self.opset,
            "graphs": {name: g.to_dict() for name, g in self.graphs.items()},
            "links": [k.to_dict() for k in self.links],
            "plugins": [p.to_dict() for p in self.plugins],
            "reference": self.reference,
            "files": {n: f.to_dict() for n, f in self.files.items()},
            "engines": {n: e.to_dict() for n, e in self.engines.items()},
            "versions": dict(self.versions),
            "created": self.created,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = MANIFEST) -> Manifest:
        r = Reader(data, where)
        version = r.get("schema_version", lambda v: type(v) is int, "an integer")
        if version not in READABLE_SCHEMAS:
            raise ArtifactError(f"{where} has schema_version {version}; this trtformer reads "
                                f"{', '.join(map(str, READABLE_SCHEMAS))}",
                                hint="upgrade trtformer" if version > SCHEMA_VERSION else None)  # fmt: skip
        if version == 1:
            r = Reader(upgrade_v1(data), where)
        graphs = {name: GraphSpec.from_dict(name, g, f"{where}: graphs.{name}") for name, g in r.dict("graphs").items()}
        if not graphs:
            raise ArtifactError(f"{where} lists no graphs")
        # Keys before values (a comprehension evaluates the key first): a path that escapes is named as such.
        files = {inside(n, where): FileEntry.from_dict(e, f"{where}: files[{n!r}]") for n, e in r.dict("files").items()}
        form, precision = r.str("form"), r.str("precision")
        if form not in FORMS or precision not in PRECISIONS:
            raise ArtifactError(f"{where} has form {form!r} and precision {precision!r}; forms are {', '.join(FORMS)}, "
                                f"precisions {', '.join(PRECISIONS)}")  # fmt: skip
        manifest = cls(
            family=r.str("family"), config=dict(r.dict("config")), form=form, precision=precision, opset=r.int("opset"),
            graphs=graphs, files=files,
            links=tuple(Link.from_dict(k, f"{where}: links[{i}]") for i, k in enumerate(r.list("links", []))),
            plugins=tuple(PluginRecord.from_dict(p, f"{where}: plugins[{i}]") for i, p in enumerate(r.list("plugins", []) or [])),
            engines={inside(n, where): EngineRecord.from_dict(e, f"{where}: engines[{n!r}]")
                     for n, e in (r.dict("engines", {}) or {}).items()},
            reference=r.get("reference", lambda v: v is None or isinstance(v, str), "a file name or null", None),
            source=str(r.data.get("source", "")), versions=dict(r.dict("versions", {}) or {}), created=str(r.data.get("created", "")),
            extra={k: v for k, v in r.data.items() if k not in _KNOWN}, read_schema=version,
        )  # fmt: skip
        manifest.check(where)
        return manifest

    def check(self, where: str) -> None:
        """Paths inside the artifact, graph and weight files listed, links between tensors that exist."""
        for name in [*self.files, *self.engines]:
            inside(name, where)
        for graph in self.graphs.values():
            for variant, name in graph.models.items():
                if name not in self.files:
                    raise ArtifactError(f"{where}: graph {graph.name!r} ({variant}) is {name!r}, which files does not list "
                                        "with its sha256; a graph the manifest does not vouch for is never opened")  # fmt: skip
        if self.reference is not None and self.reference not in self.files:
            raise ArtifactError(f"{where}: the reference weights {self.reference!r} are not listed in files")
        for link in self.links:
            src = self._tensor(link.source_graph, link.source, "output", where)
            dst = self._tensor(link.target_graph, link.target, "input", where)
            if src.dtype != dst.dtype or src.rank != dst.rank:
                raise ArtifactError(f"{where}: link {link.source_graph}.{link.source} -> {link.target_graph}.{link.target} "
                                    f"joins {src.dtype} rank {src.rank} to {dst.dtype} rank {dst.rank}")  # fmt: skip

    def _tensor(self, graph: str, name: str, kind: str, where: str):
        g = self.graphs.get(graph)
        found = None if g is None else next((t for t in (g.outputs if kind == "output" else g.inputs) if t.name == name), None)
        if found is None:
            raise ArtifactError(f"{where}: a link names {graph}.{name}, which is no {kind} of the artifact's graphs")
        return found


def inside(name: Any, where: str = MANIFEST) -> str:
    """`name` if it is a relative path that stays inside the artifact, else an ArtifactError."""
    path = PurePosixPath(name) if isinstance(name, str) else None
    if path is None or not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        raise ArtifactError(f"{where} names the file {name!r}, which is not a path inside the artifact")
    return name


def upgrade_v1(data: dict) -> dict:
    """A schema-1 manifest as schema 2: the top-level graph fields become graph "model", inputs get roles."""
    graph = {k: data[k] for k in _V1_GRAPH_KEYS if k in data}
    state = graph.get("state")
    state_inputs = {p.get("input") for p in state if isinstance(p, dict)} if isinstance(state, list) else set()
    if isinstance(graph.get("inputs"), list):
        graph["inputs"] = [_v1_role(t, state_inputs) for t in graph["inputs"]]
    out = {k: v for k, v in data.items() if k not in _V1_GRAPH_KEYS}
    out.update(schema_version=SCHEMA_VERSION, graphs={DEFAULT_GRAPH: graph}, links=[])
    return out


def _v1_role(tensor: Any, state_inputs: set) -> Any:
    if not isinstance(tensor, dict) or "role" in tensor:
        return tensor
    name = tensor.get("name")
    role = "state" if name in state_inputs else _V1_ROLES.get(name, "features" if str(tensor.get("dtype", "")).startswith(("float", "bfloat")) else "ids")
    return {**tensor, "role": role}
