"""Helpers shared by tests (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
from pathlib import Path


def manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())
