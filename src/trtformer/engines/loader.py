"""Reading a stored engine for a runtime: its record is checked against the artifact and the installed toolkit
first, so a stale engine fails with an error that says what differs instead of deserializing into garbage."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from ..artifact import Artifact, EngineRecord
from ..errors import EngineError
from ..trt import flavors
from . import cache


@dataclass(frozen=True)
class StoredEngine:
    name: str  # key in manifest.engines, e.g. engines/tensorrt-rtx-0123456789abcdef.engine
    path: Path
    record: EngineRecord
    data: bytes  # the serialized engine, for trt.Runtime.deserialize_cuda_engine


def read_engine(
    artifact: str | Path | Artifact,
    *,
    graph: str | None = None,
    flavor: str = "auto",
    engine: str | None = None,
    compute_capability: str | None = None,
) -> StoredEngine:
    """The bytes of an artifact's engine of one graph for the installed flavor, after checking its record.

    graph: the graph the engine runs; by default the artifact's only graph (the one of `engine`, when named).
    engine: one name from manifest.engines; by default the newest engine of the graph and flavor that matches.
    compute_capability: the GPU that will run it (e.g. "8.6"); checked against the engine's targets when given.
    Raises EngineError naming the mismatch (ONNX sha256, flavor, version, compute capability) or the damage.
    """
    art = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact, verify=False)
    kit = flavors.load(flavor)
    every = cache.records(art.manifest)
    if not every:
        raise EngineError(f"{art.path} has no engines", hint="build one with `trtformer build ARTIFACT`")
    if engine is not None and engine not in every:
        raise EngineError(f"{art.path} has no engine {engine!r}; it has {', '.join(every)}")
    if graph is None:
        graph = every[engine].graph if engine is not None else art.graph().name
    stored = cache.records(art.manifest, graph)
    if engine is not None and engine not in stored:
        raise EngineError(f"{engine} was built from the graph {every[engine].graph!r}, not {graph!r}")
    if not stored:
        raise EngineError(f"{art.path} has no engines of the graph {graph!r}; it has engines of "
                          f"{', '.join(sorted({r.graph for r in every.values()}))}",
                          hint=f"build one with `trtformer build ARTIFACT --graph-name {graph}`")  # fmt: skip
    # Newest first, the flavor's own engines before the others: when none matches, the error is about the
    # engine the user most likely meant.
    newest_first = list(reversed(stored))
    candidates = [engine] if engine else sorted(newest_first, key=lambda n: stored[n].flavor != kit.name)
    first_error = None
    for name in candidates:
        try:
            cache.check(name, stored[name], art.manifest, kit, compute_capability)
        except EngineError as exc:
            first_error = first_error or exc
            continue
        return _read(art.path, name, stored[name])
    raise first_error


def _read(root: Path, name: str, record: EngineRecord) -> StoredEngine:
    path = root / name
    if not path.is_file():
        raise EngineError(f"{path} is missing from the artifact")
    data = path.read_bytes()
    if len(data) != record.bytes or hashlib.sha256(data).hexdigest() != record.sha256:
        raise EngineError(f"{path} does not match its sha256 in the manifest: it was altered or corrupted")
    return StoredEngine(name, path, record, data)
