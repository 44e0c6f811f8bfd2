"""benchmarks/gpu_kernels.py runs end to end and writes its JSON, markdown and PNG: without a GPU every row is skipped
with its reason (exit 0); with --interpret the kernels run on CPU under Triton's interpreter at tiny shapes, so the
script's calls, its FLOP counts and ratios are exercised, and the Triton rows agree with the eager ops."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_kernels.py"


def run(out: Path, *flags: str) -> dict:
    subprocess.run([sys.executable, str(SCRIPT), *flags, "--out", str(out)], check=True, capture_output=True, text=True,
                   timeout=600)
    assert (out / "gpu_kernels.png").read_bytes()[:4] == b"\x89PNG"
    return json.loads((out / "gpu_kernels.json").read_text())


def test_without_a_gpu_every_row_is_skipped_with_its_reason(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the script measures instead")
    data = run(tmp_path, "--quick")
    assert data["rows"] and all(r["status"] == "skipped" and "no CUDA GPU" in r["reason"] for r in data["rows"])
    assert {(r["kernel"], r["dtype"]) for r in data["rows"]} == {(k, d) for k in ("sliding-window", "rel-position")
                                                                 for d in ("fp16", "bf16")}  # fmt: skip
    assert all(t["value"] is None and t["met"] is None for t in data["targets"].values()) and len(data["targets"]) == 3
    assert "| sliding-window | fp16 |  | all | skipped: no CUDA GPU" in (tmp_path / "gpu_kernels.md").read_text()


def test_interpreted_kernels_run_every_row_and_agree_with_the_eager_ops(tmp_path):
    pytest.importorskip("triton", reason="Triton is not installed (pip install 'trtformer[triton]')")
    data = run(tmp_path, "--interpret")
    measured = [r for r in data["rows"] if r["status"] == "measured"]
    assert {(r["kernel"], r["impl"]) for r in measured} == {
        ("sliding-window", "triton"), ("sliding-window", "eager op"), ("sliding-window", "sdpa (all keys)"),
        ("rel-position", "triton core"), ("rel-position", "sdpa"), ("rel-position op", "triton op"),
        ("rel-position op", "eager op")}  # fmt: skip
    assert all(r["dtype"] == "fp16" and r["ms"] > 0 and r["tflops"] > 0 for r in measured)
    for r in measured:
        if r["impl"] in ("triton", "triton op"):
            assert r["max_abs_vs_eager"] < 1e-2, r
        if r["impl"].startswith("triton"):  # the config the tuner picked (the interpreter's fixed one) and the splits
            assert r["config"]["block_m"] >= 16 and r["splits"] >= 1, r
        assert (r["x_sdpa"] is not None) == (r["kernel"] != "rel-position op")
    sliding = {r["impl"]: r for r in measured if r["kernel"] == "sliding-window"}
    assert sliding["triton"]["gflop"] < sliding["sdpa (all keys)"]["gflop"]  # the band, not every key
    assert all(r["status"] == "skipped" and "bfloat16" in r["reason"] for r in data["rows"] if r["dtype"] == "bf16")
    assert "config 16x16, warps 1, stages 1, splits 1 |" in (tmp_path / "gpu_kernels.md").read_text()
