"""benchmarks/transfo_xl_eval_speed.py runs end to end (--quick: a tiny model) and writes its JSON, markdown and PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_transfo_xl_eval_speed_quick(tmp_path):
    script = ROOT / "benchmarks" / "transfo_xl_eval_speed.py"
    subprocess.run([sys.executable, str(script), "--quick", "--lengths", "16", "40", "800", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=600)  # fmt: skip
    data = json.loads((tmp_path / "transfo_xl_eval_speed.json").read_text())
    rows = {(r["backend"], r["length"]): r for r in data["results"]}
    assert set(rows) == {(b, n) for b in ("ort", "torch") for n in (16, 40, 800)}
    for r in rows.values():
        assert r["sliding_window_ms_per_token"]["count"] == r["memory_reuse_ms_per_token"]["count"] == 2
        # memory reuse computes the segment's first prediction exactly as a window of L + 1 tokens does
        assert r["first_token_max_abs"] < 1e-4, r
        assert r["speedup"] == r["sliding_window_ms_per_token"]["p50_ms"] / r["memory_reuse_ms_per_token"]["p50_ms"]
    # a window of 800 tokens costs more per token than a segment of 8 with 800 of memory, on any machine
    assert all(rows[(b, 800)]["speedup"] > 1 for b in ("ort", "torch"))
    assert set(data["targets"]) == {"ort speed-up at L=800", "torch speed-up at L=800"}
    md = (tmp_path / "transfo_xl_eval_speed.md").read_text()
    assert "| trtformer ONNX Runtime (portable form) | 800 |" in md and "| 363x |" in md
    assert (tmp_path / "transfo_xl_eval_speed.png").read_bytes()[:4] == b"\x89PNG"
