"""Artifact directories: manifest.json, model.onnx, reference weights, tokenizer, engines/, parity.json.

Writing goes to a temporary sibling that is renamed into place, so a crash never leaves half an artifact.
Loading checks the schema and every file's sha256 and names the file and the problem when one is off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArtifactError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED_KEYS = ("schema_version", "family", "config", "form", "precision", "opset", "inputs", "outputs", "state", "files", "models")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entries(root: Path, names: list[str]) -> dict[str, dict]:
    return {n: {"sha256": sha256_file(root / n), "bytes": (root / n).stat().st_size} for n in sorted(names)}


@contextlib.contextmanager
def atomic_directory(dest: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `dest`; on success it replaces `dest`, on any error it is removed."""
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise ArtifactError(f"{dest} already exists", hint="pass --overwrite (overwrite=True) to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        share_like_umask(tmp)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def share_like_umask(root: Path) -> None:
    """Give `root` and everything in it the modes a plain mkdir/open would: mkdtemp makes the directory 0700
    and some writers (safetensors) files 0600, which would hide an artifact from the service meant to run it."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for path in root.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


@dataclass
class Artifact:
    path: Path
    manifest: dict

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> Artifact:
        path = Path(path)
        if not path.exists():
            raise ArtifactError(f"artifact directory {path} does not exist", hint="export one with `trtformer export`")
        if not path.is_dir():
            raise ArtifactError(f"{path} is not an artifact directory")
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise ArtifactError(f"{path} has no {MANIFEST}; it is not a trtformer artifact")
        try:
            manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{mpath} is not valid JSON: {exc}") from exc
        missing = [k for k in REQUIRED_KEYS if k not in manifest]
        if missing:
            raise ArtifactError(f"{mpath} lacks the keys {missing}")
        if manifest["schema_version"] != SCHEMA_VERSION:
            raise ArtifactError(
                f"{mpath} has schema_version {manifest['schema_version']}, this trtformer reads {SCHEMA_VERSION}"
            )
        art = cls(path, manifest)
        if verify:
            art.verify()
        return art

    def verify(self, names: list[str] | None = None) -> None:
        """Check size and sha256 of the named files (all listed files by default)."""
        files = self.manifest["files"]
        for name in names if names is not None else list(files):
            if name not in files:
                raise ArtifactError(f"{name} is not listed in {self.path / MANIFEST}")
            entry, fpath = files[name], self.path / name
            if not fpath.is_file():
                raise ArtifactError(f"{fpath} is missing from the artifact")
            if fpath.stat().st_size != entry["bytes"]:
                raise ArtifactError(f"{fpath} has {fpath.stat().st_size} bytes, the manifest says {entry['bytes']}: it was altered or truncated")
            if sha256_file(fpath) != entry["sha256"]:
                raise ArtifactError(f"{fpath} does not match its sha256 in the manifest: it was altered or corrupted")

    # --- accessors -------------------------------------------------------------------------------------

    @property
    def family(self) -> str:
        return self.manifest["family"]

    @property
    def config(self) -> dict:
        return self.manifest["config"]

    @property
    def inputs(self) -> list[dict]:
        return self.manifest["inputs"]

    @property
    def outputs(self) -> list[dict]:
        return self.manifest["outputs"]

    @property
    def state(self) -> list[dict]:
        return self.manifest["state"]

    @property
    def dims(self) -> dict:
        return self.manifest.get("dims", {})

    @property
    def limits(self) -> dict:
        return self.manifest.get("limits", {})

    @property
    def padding_side(self) -> str:
        return self.manifest.get("padding_side", "left")

    def graph_name(self, which: str = "default") -> str:
        """Which ONNX graph `which` means: "default" is the most processed one (int8, optimized, plain)."""
        models = self.manifest["models"]
        if which != "default":
            return which
        return next(k for k in ("int8", "optimized", "plain") if k in models)

    def model_path(self, which: str = "default") -> Path:
        models = self.manifest["models"]
        name = models.get(self.graph_name(which))
        if name is None:
            raise ArtifactError(f"{self.path} has no {which!r} model; it has {sorted(models)}")
        return self.path / name

    @property
    def reference_path(self) -> Path | None:
        name = self.manifest.get("reference")
        return self.path / name if name else None

    @property
    def tokenizer_dir(self) -> Path | None:
        d = self.path / "tokenizer"
        return d if d.is_dir() else None

    def special_token(self, which: str) -> int | None:
        return self.config.get(f"{which}_token_id")
