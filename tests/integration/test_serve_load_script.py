"""benchmarks/serve_load.py runs end to end (--quick: tiny models, two concurrencies) and writes JSON, markdown, PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("tritonclient.grpc", reason="the serve extra is not installed")


def test_serve_load_quick(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=600)
    data = json.loads((tmp_path / "serve_load.json").read_text())
    cells = {(r["model"], r["mode"], r["concurrency"]) for r in data["results"]}
    assert cells == {(m, mode, c) for m in ("minilm", "bert-base", "gpt2") for mode in ("server", "in-process") for c in (1, 4)}
    assert all(r["requests_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in data["results"])
    assert all(r["count"] <= 8 for r in data["results"])  # bounded as asked
    assert sum(data["server_batches"]["minilm"].values()) > 0
    overhead = data["targets"]["bert-base: server p50 over in-process p50 - 1, concurrency 1"]
    assert overhead["value"] is not None and overhead["met"] in (True, False)
    assert "| minilm | 4 |" in (tmp_path / "serve_load.md").read_text()
    assert (tmp_path / "serve_load.png").read_bytes()[:4] == b"\x89PNG"
