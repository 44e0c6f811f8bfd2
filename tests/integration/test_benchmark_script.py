"""benchmarks/gpt_decode.py runs end to end (--quick: tiny model) and writes its JSON, markdown and PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpt_decode_quick(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpt_decode.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=600)
    data = json.loads((tmp_path / "gpt_decode.json").read_text())
    assert data["hf_weight_check"]["passed"] and data["hf_weight_check"]["max_abs_diff"] < 1e-4
    assert {r["backend"] for r in data["results"]} == {"ort-cpu", "torch", "transformers"}
    assert all(r["tokens_per_s_p50"] > 0 for r in data["ratio_ort_over_transformers"].values())
    assert (tmp_path / "gpt_decode.md").stat().st_size > 0
    assert (tmp_path / "gpt_decode.png").read_bytes()[:4] == b"\x89PNG"
