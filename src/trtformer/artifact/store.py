"""Artifact directories: manifest.json, the graphs' ONNX files, reference weights, tokenizer, engines/, parity.json.

Writing goes to a temporary sibling that is renamed into place, so a crash never leaves half an artifact.
Loading checks the manifest (manifest.py) and every file's size and sha256, and names the file and the problem
when one is off. Every file is opened through `Artifact.file`, which refuses a path that leaves the directory.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ArtifactError
from .manifest import MANIFEST, Manifest, inside
from .records import FileEntry, GraphSpec


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entries(root: Path, names: list[str]) -> dict[str, FileEntry]:
    return {n: FileEntry(sha256_file(root / n), (root / n).stat().st_size) for n in sorted(names)}


def is_artifact(path: Path) -> bool:
    """True when `path` is a directory with a trtformer manifest (any schema, even one this version cannot read)."""
    try:
        data = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "schema_version" in data and "family" in data


def check_destination(dest: str | Path, overwrite: bool = False) -> Path:
    """`dest` if an artifact may be written there: a new path, or with `overwrite` an existing trtformer artifact.
    Anything else (a file, a directory of other things, the working directory or one above it) is refused, so an
    overwrite never deletes what trtformer did not write. Called before any work, and again before the rename."""
    if not isinstance(dest, str | os.PathLike) or not str(dest):
        raise ArtifactError(f"an artifact's destination is a directory path, got {dest!r}")
    dest = Path(dest)
    here = Path.cwd().resolve()
    if dest.resolve() in (here, *here.parents):
        raise ArtifactError(f"{dest} is the working directory or above it; an artifact needs a directory of its own",
                            hint="pass a new directory, e.g. -o artifacts/NAME")
    if not (dest.exists() or dest.is_symlink()):
        return dest
    if not overwrite:
        raise ArtifactError(f"{dest} already exists", hint="pass --overwrite (overwrite=True) to replace it")
    if dest.is_symlink() or not dest.is_dir():
        raise ArtifactError(f"{dest} is not a directory; --overwrite replaces trtformer artifacts only",
                            hint="choose another destination")
    if not is_artifact(dest):
        raise ArtifactError(f"{dest} is not a trtformer artifact (it has no manifest.json of ours); --overwrite replaces "
                            "artifacts only, never other directories", hint="choose another destination, or empty it yourself")  # fmt: skip
    return dest


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process, or not a pid we can ask about: leave its files alone
    return True


def leftover_name(name: str, kind: str) -> str:
    """The name of a temporary sibling of `name` ("tmp" or "old"), tagged with this process, so that a later
    writer can tell what a dead process left behind (remove_leftovers)."""
    return f".{name}.{kind}-{os.getpid()}-{os.urandom(4).hex()}"


def remove_leftovers(directory: Path, name: str) -> list[Path]:
    """Remove the temporary siblings of `name` in `directory` whose writer process is gone (a killed export,
    build or manifest update); returns what was removed. Those of live processes are theirs to finish."""
    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = re.fullmatch(rf"\.{re.escape(name)}\.(?:tmp|old)-(\d+)(?:-[0-9a-f]+)?", entry.name)
        if match and not _pid_alive(int(match[1])):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_directory(dest: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `dest`; on success it replaces `dest`, on any error it is removed."""
    dest = check_destination(dest, overwrite)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(dest.parent, dest.name)
    tmp = dest.with_name(leftover_name(dest.name, "tmp"))
    tmp.mkdir(mode=0o700)
    try:
        yield tmp
        share_like_umask(tmp)
        check_destination(dest, overwrite)  # it may have appeared while the work ran
        _swap_in(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, dest: Path, attempts: int = 20) -> None:
    """Rename `tmp` to `dest`, moving an existing `dest` aside first. Another process may place or move its own
    `dest` between the two renames (two exports into one path): then the swap is tried again, so the last writer
    wins with a whole artifact and neither fails."""
    for _ in range(attempts):
        old = None
        try:
            if dest.exists():
                old = dest.with_name(leftover_name(dest.name, "old"))
                dest.rename(old)
            tmp.rename(dest)
        except FileNotFoundError:  # the other writer moved `dest` aside first
            continue
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            continue  # the other writer placed its `dest` between our renames
        finally:
            if old is not None and old.exists():
                shutil.rmtree(old, ignore_errors=True)
        return
    raise ArtifactError(f"{dest} kept changing while this export tried to put its result there",
                        hint="export into one destination from one process at a time")


@contextlib.contextmanager
def manifest_lock(root: Path) -> Iterator[None]:
    """Serialize read-modify-write updates of an artifact's manifest (and parity.json) across processes: two builds
    into one artifact each record their engine, neither overwrites the other's record. An advisory lock on a file
    beside the manifest; on systems without fcntl the updates are only atomic, not serialized."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(Path(root) / ".manifest.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def update_manifest(root: Path, change) -> Manifest:
    """Read the manifest, apply `change(manifest) -> manifest`, write it (schema 2), all under the manifest lock;
    returns what was written."""
    with manifest_lock(root):
        manifest = change(read_manifest(root))
        write_manifest(root, manifest)
        return manifest


def share_like_umask(root: Path) -> None:
    """Give `root` and everything in it the modes a plain mkdir/open would: mkdtemp makes the directory 0700
    and some writers (safetensors) files 0600, which would hide an artifact from the service meant to run it."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for path in root.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def write_json_atomic(path: Path, data) -> None:
    path = Path(path)
    remove_leftovers(path.parent, path.name)
    tmp = path.with_name(leftover_name(path.name, "tmp"))
    try:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_manifest(root: Path, manifest: Manifest) -> None:
    write_json_atomic(Path(root) / MANIFEST, manifest.to_dict())


def read_manifest(root: Path) -> Manifest:
    """The manifest of the artifact directory `root`, checked; an ArtifactError that names the problem otherwise."""
    root = Path(root)
    if not root.exists():
        raise ArtifactError(f"artifact directory {root} does not exist", hint="export one with `trtformer export`")
    if not root.is_dir():
        raise ArtifactError(f"{root} is not an artifact directory")
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{root} has no {MANIFEST}; it is not a trtformer artifact")
    try:
        data = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{mpath} is not valid JSON: {exc}") from exc
    return Manifest.from_dict(data, str(mpath))


@dataclass
class Artifact:
    path: Path
    manifest: Manifest

    @classmethod
    def load(cls, path: str | Path, verify: bool = True) -> Artifact:
        if not isinstance(path, str | os.PathLike):
            raise ArtifactError(f"an artifact is a directory path, got {type(path).__name__}")
        art = cls(Path(path), read_manifest(Path(path)))
        if verify:
            art.verify()
        return art

    def file(self, name: str) -> Path:
        """The path of an artifact file, refused when it (or a link on the way) leads outside the directory."""
        inside(name, str(self.path / MANIFEST))
        path = self.path / name
        root = self.path.resolve()
        if root not in (path.resolve(), *path.resolve().parents):
            raise ArtifactError(f"{path} leads outside the artifact {self.path}")
        return path

    def verify(self, names: list[str] | None = None) -> None:
        """Check size and sha256 of the named files (all listed files by default)."""
        files = self.manifest.files
        for name in names if names is not None else list(files):
            if name not in files:
                raise ArtifactError(f"{name} is not listed in {self.path / MANIFEST}")
            entry, fpath = files[name], self.file(name)
            if not fpath.is_file():
                raise ArtifactError(f"{fpath} is missing from the artifact")
            if fpath.stat().st_size != entry.bytes:
                raise ArtifactError(f"{fpath} has {fpath.stat().st_size} bytes, the manifest says {entry.bytes}: it was altered or truncated")
            if sha256_file(fpath) != entry.sha256:
                raise ArtifactError(f"{fpath} does not match its sha256 in the manifest: it was altered or corrupted")

    def reload(self) -> Artifact:
        """The artifact as its manifest on disk says now (another process may have added an engine)."""
        return Artifact(self.path, read_manifest(self.path))

    # --- accessors -------------------------------------------------------------------------------------

    @property
    def family(self) -> str:
        return self.manifest.family

    @property
    def config(self) -> dict:
        return self.manifest.config

    def graph(self, name: str | None = None) -> GraphSpec:
        return self.manifest.graph(name)

    def model_path(self, variant: str = "default", graph: str | None = None) -> Path:
        """The ONNX file of a graph's variant (plain | optimized | int8 | default: the most processed one)."""
        g = self.graph(graph)
        return self.file(g.models[g.variant(variant)])

    @property
    def reference_path(self) -> Path | None:
        name = self.manifest.reference
        return self.file(name) if name else None

    @property
    def tokenizer_dir(self) -> Path | None:
        d = self.path / "tokenizer"
        return d if d.is_dir() else None

    def special_token(self, which: str) -> int | None:
        return self.config.get(f"{which}_token_id")
