"""benchmarks/bert_latency.py runs end to end (--quick: tiny BERT) and writes its JSON, markdown and PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bert_latency_quick(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bert_latency.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=600)
    data = json.loads((tmp_path / "bert_latency.json").read_text())
    assert {r["backend"] for r in data["results"]} == {"torch", "ort-plain", "ort-optimized", "ort-int8"}
    assert all(r["latency"]["count"] == 2 and r["sequences_per_s"] > 0 for r in data["results"])
    assert data["model"]["fusions"]["Attention"] == 2 and data["model"]["quantization"]["ops"]["QAttention"] == 2
    fp32 = data["agreement_with_torch"]["1x16"]["ort-optimized"]
    assert fp32["last_hidden_state"] > 0.99999 and fp32["max_abs_last_hidden_state"] < 1e-4
    assert data["int8_parity"]["criterion"] == "agreement"
    assert "| trtformer ORT, int8 dynamic | 2x32 |" in (tmp_path / "bert_latency.md").read_text()
    assert (tmp_path / "bert_latency.png").read_bytes()[:4] == b"\x89PNG"
