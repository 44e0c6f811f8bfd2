"""The engine cache: a key per build, the manifest record of each engine, and the check that names a mismatch.

`manifest["engines"]` maps an engine's path in the artifact (engines/<flavor>-<key>.engine) to its record:
flavor, version, compute capabilities, profiles, the ONNX it came from with its sha256, and the engine's own
size and sha256. Engines are not listed in `manifest["files"]`: they are derived, can be rebuilt, and opening
an artifact on ONNX Runtime should neither hash them nor fail when one is gone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from ..errors import EngineError
from ..runtime.artifact import MANIFEST, Artifact, sha256_file, write_json_atomic
from .flavors import FLAVORS, Targets, Toolkit
from .profiles import Profile

log = logging.getLogger(__name__)

ENGINES_DIR = "engines"
# Part of every key: bump it when the builder configures networks differently, so older engines get rebuilt.
BUILDER_REVISION = 1


def onnx_files(manifest: dict) -> list[str]:
    """The ONNX graph engines are built from (the plain one: the optimized graph holds ONNX Runtime's
    contrib ops, which TensorRT does not parse), with its external data file when it has one."""
    name = manifest["models"]["plain"]
    return [n for n in (name, f"{name}.data") if n in manifest["files"]]


def onnx_sha256(manifest: dict) -> str:
    """The graph's sha256 from the manifest; combined with its external data's when the weights lie apart."""
    files, names = manifest["files"], onnx_files(manifest)
    if len(names) == 1:
        return files[names[0]]["sha256"]
    return hashlib.sha256("".join(f"{n} {files[n]['sha256']}\n" for n in names).encode()).hexdigest()


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


def engine_name(flavor: str, key: str) -> str:
    return f"{ENGINES_DIR}/{flavor}-{key[:16]}.engine"


def make_record(*, key: str, sha256: str, nbytes: int, kit: Toolkit, targets: Targets, profile: Profile,
                manifest: dict, seconds: float, plugins: list[str]) -> dict:
    return {
        "key": key,
        "sha256": sha256,
        "bytes": nbytes,
        "flavor": kit.name,
        "version": kit.version,
        "compute_capability": list(targets.labels),
        "profiles": [profile.to_dict()],
        "onnx": manifest["models"]["plain"],
        "onnx_sha256": onnx_sha256(manifest),
        # The fused ops that run as plugin layers; a plugin-form artifact's others were inlined from their functions.
        "plugins": plugins,
        "build_seconds": round(seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def records(manifest: dict) -> dict[str, dict]:
    return manifest.get("engines", {})


def intact(root: Path, name: str, record: dict) -> bool:
    path = root / name
    return path.is_file() and path.stat().st_size == record["bytes"] and sha256_file(path) == record["sha256"]


def problem(root: Path, name: str, record: dict, manifest: dict, verify: bool = True) -> str | None:
    """Why a listed engine cannot be loaded as it is (missing, altered, built from another ONNX), or None.
    The flavor, version and GPU checks need the runtime's toolkit and device: `check` makes those."""
    path = root / name
    if not path.is_file():
        return "missing"
    if verify and not intact(root, name, record):
        return "altered: it does not match its sha256"
    if record["onnx_sha256"] != onnx_sha256(manifest):
        return f"stale: built from another {record['onnx']}"
    return None


def cached(art: Artifact, name: str, key: str) -> dict | None:
    """The record of a stored engine with this key whose file is intact, else None."""
    record = records(art.manifest).get(name)
    if record is None or record.get("key") != key:
        return None
    if not intact(art.path, name, record):
        log.warning("%s does not match its record in the manifest; rebuilding it", art.path / name)
        return None
    return record


def check(name: str, record: dict, manifest: dict, kit: Toolkit, capability: str | None = None) -> None:
    """Raise EngineError naming what differs between a stored engine and the artifact or installed toolkit."""
    built_with = FLAVORS[record["flavor"]].title if record["flavor"] in FLAVORS else record["flavor"]
    if record["flavor"] != kit.name:
        raise EngineError(f"{name} was built with {built_with}, not {kit.flavor.title}",
                          hint=f"rebuild it with `trtformer build ARTIFACT --flavor {kit.name}`")
    if record["version"] != kit.version:
        raise EngineError(f"{name} was built with {built_with} {record['version']}, but {kit.version} is installed; "
                          "engines do not move between versions")
    current = onnx_sha256(manifest)
    if record["onnx_sha256"] != current:
        raise EngineError(f"{name} was built from another {record['onnx']} (sha256 {record['onnx_sha256'][:12]}...); "
                          f"the artifact's is now {current[:12]}...")
    if capability is not None and capability not in record["compute_capability"]:
        raise EngineError(f"{name} targets compute capability {', '.join(record['compute_capability'])}, "
                          f"not this GPU's {capability}",
                          hint=f"rebuild it with `trtformer build ARTIFACT --compute-capability {capability}`")


def commit(root: Path, name: str, data, record: dict) -> None:
    """Put the engine in place and record it in the manifest, or, on any failure, leave both as they were."""
    path = root / name
    path.parent.mkdir(exist_ok=True)
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    tmp, backup = path.with_name(f".{path.name}.tmp-{tag}"), path.with_name(f".{path.name}.old-{tag}")
    had_old = path.exists()
    placed = False
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        if had_old:
            path.replace(backup)
        tmp.replace(path)
        placed = True
        # Read the manifest again just before writing, to keep what another process recorded meanwhile.
        manifest = json.loads((root / MANIFEST).read_text())
        manifest.setdefault("engines", {})[name] = record
        write_json_atomic(root / MANIFEST, manifest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if had_old and backup.exists():
            backup.replace(path)
        elif placed:
            path.unlink(missing_ok=True)
        raise
    backup.unlink(missing_ok=True)
