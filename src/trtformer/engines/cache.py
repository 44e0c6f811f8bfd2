"""The engine cache: a key per build, the manifest record of each engine, and the check that names a mismatch.

`manifest.engines` maps an engine's path in the artifact to its EngineRecord: the graph it was built from, flavor,
version, compute capabilities, profiles, the ONNX with its sha256, and the engine's own size and sha256. Graph
"model" keeps the names engines have always had (engines/<flavor>-<key>.engine); another graph's engines carry its
name (engines/<graph>-<flavor>-<key>.engine), so two graphs' engines never collide. Engines are not listed in
`manifest.files`: they are derived, can be rebuilt, and opening an artifact on ONNX Runtime should neither hash
them nor fail when one is gone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from ..artifact import (
    DEFAULT_GRAPH,
    Artifact,
    EngineRecord,
    GraphSpec,
    Manifest,
    sha256_file,
)
from ..artifact.store import leftover_name, remove_leftovers, update_manifest
from ..errors import ArtifactError, EngineError
from ..trt.flavors import FLAVORS, Targets, Toolkit
from .profiles import Profile

log = logging.getLogger(__name__)

ENGINES_DIR = "engines"
# Part of every key: bump it when the builder configures networks differently, so older engines get rebuilt.
BUILDER_REVISION = 2  # 2: TensorRT-RTX engines built for stream capture (REQUIRE_USER_ALLOCATION)


def onnx_files(manifest: Manifest, graph: GraphSpec) -> list[str]:
    """The ONNX file engines of `graph` are built from (the plain one: the optimized graph holds ONNX Runtime's
    contrib ops, which TensorRT does not parse), with its external data file when it has one."""
    name = graph.models["plain"]
    return [n for n in (name, f"{name}.data") if n in manifest.files]


def onnx_sha256(manifest: Manifest, graph: GraphSpec) -> str:
    """The graph file's sha256 from the manifest; combined with its external data's when the weights lie apart."""
    names = onnx_files(manifest, graph)
    if len(names) == 1:
        return manifest.files[names[0]].sha256
    return hashlib.sha256("".join(f"{n} {manifest.files[n].sha256}\n" for n in names).encode()).hexdigest()


def cache_key(onnx_digest: str, kit: Toolkit, targets: Targets, profile: Profile) -> str:
    """Everything that changes the engine's bytes. The timing cache only changes how fast a build is."""
    what = {
        "builder": BUILDER_REVISION,
        "onnx_sha256": onnx_digest,
        "flavor": kit.name,
        "version": kit.version,
        "compute_capability": list(targets.labels),
        "profiles": [profile.to_dict()["inputs"]],
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def engine_name(flavor: str, key: str, graph: str = DEFAULT_GRAPH) -> str:
    prefix = "" if graph == DEFAULT_GRAPH else f"{graph}-"
    return f"{ENGINES_DIR}/{prefix}{flavor}-{key[:16]}.engine"


def make_record(*, key: str, sha256: str, nbytes: int, kit: Toolkit, targets: Targets, profile: Profile,
                manifest: Manifest, graph: GraphSpec, seconds: float, plugins: list[str]) -> EngineRecord:  # fmt: skip
    return EngineRecord(
        key=key,
        sha256=sha256,
        bytes=nbytes,
        flavor=kit.name,
        version=kit.version,
        compute_capability=tuple(targets.labels),
        profiles=(profile.to_dict(),),
        onnx=graph.models["plain"],
        onnx_sha256=onnx_sha256(manifest, graph),
        # The fused ops that run as plugin layers; a plugin-form artifact's others were inlined from their functions.
        plugins=tuple(plugins),
        build_seconds=round(seconds, 3),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        graph=graph.name,
    )


def records(manifest: Manifest, graph: str | None = None) -> dict[str, EngineRecord]:
    """The manifest's engines, in the order they were recorded; only graph `graph`'s when it is named."""
    return {n: r for n, r in manifest.engines.items() if graph is None or r.graph == graph}


def intact(root: Path, name: str, record: EngineRecord) -> bool:
    path = root / name
    return path.is_file() and path.stat().st_size == record.bytes and sha256_file(path) == record.sha256


def _source_graph(manifest: Manifest, record: EngineRecord) -> GraphSpec | None:
    try:
        return manifest.graph(record.graph)
    except ArtifactError:
        return None


def problem(root: Path, name: str, record: EngineRecord, manifest: Manifest, verify: bool = True) -> str | None:
    """Why a listed engine cannot be loaded as it is (missing, altered, built from another ONNX or from a graph the
    artifact no longer has), or None. The flavor, version and GPU checks need the runtime's toolkit and device:
    `check` makes those."""
    path = root / name
    if not path.is_file():
        return "missing"
    if verify and not intact(root, name, record):
        return "altered: it does not match its sha256"
    graph = _source_graph(manifest, record)
    if graph is None:
        return f"stale: the artifact has no graph {record.graph!r}"
    if record.onnx_sha256 != onnx_sha256(manifest, graph):
        return f"stale: built from another {record.onnx}"
    return None


def cached(art: Artifact, name: str, key: str) -> EngineRecord | None:
    """The record of a stored engine with this key whose file is intact, else None."""
    record = art.manifest.engines.get(name)
    if record is None or record.key != key:
        return None
    if not intact(art.path, name, record):
        log.warning("%s does not match its record in the manifest; rebuilding it", art.path / name)
        return None
    return record


def check(name: str, record: EngineRecord, manifest: Manifest, kit: Toolkit, capability: str | None = None) -> None:
    """Raise EngineError naming what differs between a stored engine and the artifact or installed toolkit."""
    built_with = FLAVORS[record.flavor].title if record.flavor in FLAVORS else record.flavor
    if record.flavor != kit.name:
        raise EngineError(f"{name} was built with {built_with}, not {kit.flavor.title}",
                          hint=f"rebuild it with `trtformer build ARTIFACT --flavor {kit.name}`")
    if record.version != kit.version:
        raise EngineError(f"{name} was built with {built_with} {record.version}, but {kit.version} is installed; "
                          "engines do not move between versions")
    graph = _source_graph(manifest, record)
    if graph is None:
        raise EngineError(f"{name} was built from the graph {record.graph!r}, which the artifact no longer has")
    current = onnx_sha256(manifest, graph)
    if record.onnx_sha256 != current:
        raise EngineError(f"{name} was built from another {record.onnx} (sha256 {record.onnx_sha256[:12]}...); "
                          f"the artifact's is now {current[:12]}...")
    if capability is not None and capability not in record.compute_capability:
        raise EngineError(f"{name} targets compute capability {', '.join(record.compute_capability)}, "
                          f"not this GPU's {capability}",
                          hint=f"rebuild it with `trtformer build ARTIFACT --compute-capability {capability}`")


def commit(root: Path, name: str, data, record: EngineRecord) -> Manifest:
    """Put the engine in place and record it in the manifest, or, on any failure, leave both as they were.
    Returns the manifest as written."""
    path = root / name
    path.parent.mkdir(exist_ok=True)
    remove_leftovers(path.parent, path.name)  # what a killed build of this engine left
    tmp, backup = path.with_name(leftover_name(path.name, "tmp")), path.with_name(leftover_name(path.name, "old"))
    had_old = path.exists()
    placed = False
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        if had_old:
            path.replace(backup)
        tmp.replace(path)
        placed = True
        # Read, add and write under the manifest lock: another process may record its engine at the same time.
        manifest = update_manifest(root, lambda m: m.with_engine(name, record))
    except BaseException:
        tmp.unlink(missing_ok=True)
        if had_old and backup.exists():
            backup.replace(path)
        elif placed:
            path.unlink(missing_ok=True)
        raise
    backup.unlink(missing_ok=True)
    return manifest
