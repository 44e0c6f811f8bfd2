"""The artifact: a directory whose manifest describes its graphs, typed. Neither torch nor onnx is imported here,
so a service that only runs artifacts reads them with numpy alone.

- records.py   tensors, dims, state pairs, graphs, links, files, plugins and engines, read with every field checked
- manifest.py  the manifest (schema 2; schema 1 read and lifted), path and listing rules
- store.py     the directory: load and verify (sizes, sha256), atomic writes
- dtypes.py    the one dtype table (manifest, numpy, torch, ONNX and TensorRT spellings)
- shapes.py    dimension expressions ("past + seq", "min(16, mem + seg)") bound to real sizes
- examples.py  example inputs from input roles (export, parity, benchmarks), and row padding
"""

from __future__ import annotations

from .manifest import DEFAULT_GRAPH, MANIFEST, SCHEMA_VERSION, Manifest
from .records import DimSpec, EngineRecord, FileEntry, GraphSpec, Link, PluginRecord, StatePair, TensorSpec
from .store import (
    Artifact,
    atomic_directory,
    file_entries,
    read_manifest,
    sha256_file,
    write_json_atomic,
    write_manifest,
)

__all__ = [
    "DEFAULT_GRAPH", "MANIFEST", "SCHEMA_VERSION", "Artifact", "DimSpec", "EngineRecord", "FileEntry", "GraphSpec",
    "Link", "Manifest", "PluginRecord", "StatePair", "TensorSpec", "atomic_directory", "file_entries", "read_manifest",
    "sha256_file", "write_json_atomic", "write_manifest",
]  # fmt: skip
