"""benchmarks/seq2seq_decode.py runs end to end (--quick: tiny BART and T5) and writes its JSON, markdown and PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_seq2seq_decode_quick(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "seq2seq_decode.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=600)
    data = json.loads((tmp_path / "seq2seq_decode.json").read_text())
    assert set(data["models"]) == {"tiny-bart", "tiny-t5"}
    for model in data["models"].values():
        assert model["hf_weight_check"]["passed"] and model["hf_weight_check"]["max_abs_diff"] < 1e-4
        assert {(r["row"], r["batch"]) for r in model["results"]} == {(row, b) for row in ("ort fp32", "ort int8", "transformers") for b in (1, 8)}
        assert all(r["tokens_per_s"] > 0 and r["decode_ms_per_token"]["count"] > 0 for r in model["results"])
        assert set(model["int8_token_agreement_with_fp32"]) == {"1", "8"}
        assert all(0 <= v <= 1 for v in model["int8_token_agreement_with_fp32"].values())
        assert len(model["targets"]) == 2
    assert "## tiny-bart" in (tmp_path / "seq2seq_decode.md").read_text()
    assert (tmp_path / "seq2seq_decode.png").read_bytes()[:4] == b"\x89PNG"
