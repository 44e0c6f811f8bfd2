"""benchmarks/longformer_scaling.py runs end to end (--quick: a tiny Longformer) and writes its JSON, markdown and PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_longformer_scaling_quick(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "longformer_scaling.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=600)
    data = json.loads((tmp_path / "longformer_scaling.json").read_text())
    backends = {"ort-portable", "ort-plugin", "ort-int8", "torch-reference", "transformers", "dense"}
    assert {(r["backend"], r["seq"]) for r in data["results"]} == {(b, s) for b in backends for s in (128, 256)}
    assert all(r["latency"]["count"] == 2 and r["memory"]["forward_peak_mib"] >= 0 for r in data["results"])
    for seq in ("128", "256"):  # same weights: trtformer and transformers agree with the reference
        errors = data["max_abs_vs_torch_reference"][seq]
        assert max(errors[b] for b in ("ort-portable", "ort-plugin", "transformers")) < 1e-4, errors
        assert 1e-4 < errors["ort-int8"] < 0.5, errors  # int8 rounds every projection, and stays close
    assert set(data["targets"]) == {f"{f} {t}" for f in ("ort-portable", "ort-plugin", "ort-int8")
                                    for t in ("memory 8192 / 4096", "speedup over transformers at 4096")}
    assert "| trtformer ORT, plugin form | 256 |" in (tmp_path / "longformer_scaling.md").read_text()
    assert (tmp_path / "longformer_scaling.png").read_bytes()[:4] == b"\x89PNG"
