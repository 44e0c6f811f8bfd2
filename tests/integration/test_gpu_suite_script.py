"""benchmarks/gpu_suite.py runs end to end (--quick) and writes its JSON, markdown and PNG; on a machine without a GPU
the CPU backends pass parity for every family and every GPU backend, and the transformers peer, is a row skipped with its
reason."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = {"gpt", "bert", "longformer", "transfo_xl"}
GPU_BACKENDS = {"torch-cuda", "torch-cuda-triton", "torch-cuda-compile", "ort-cuda", "tensorrt"}
PEERS = {"gpt", "bert", "longformer"}  # transformers has no Transformer-XL that runs on torch 2.13


def test_gpu_suite_quick(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--quick", "--out", str(tmp_path)],
                   check=True, capture_output=True, text=True, timeout=900)
    data = json.loads((tmp_path / "gpu_suite.json").read_text())
    parity = {(r["family"], r["backend"]): r for r in data["parity"]}
    latency = {(r["family"], r["backend"]): r for r in data["latency"]}
    for family in FAMILIES:
        for backend in ("ort-cpu", "torch"):
            assert parity[(family, backend)]["status"] == "passed", parity[(family, backend)]
            assert parity[(family, backend)]["comparisons"] > 0
            assert latency[(family, backend)]["status"] == "measured" and latency[(family, backend)]["latency"]["p50_ms"] > 0
            assert latency[(family, backend)]["seconds"] > 0 and parity[(family, backend)]["seconds"] > 0
    assert [r["backend"] for r in data["parity"]][-2 * len(FAMILIES):] == ["ort-cpu"] * 4 + ["torch"] * 4  # baselines last
    assert {(r["family"], r["backend"]) for r in data["parity"]} >= {(f, "tensorrt-graphs") for f in ("gpt", "transfo_xl")}
    if not torch.cuda.is_available():
        for family in FAMILIES:
            for backend in GPU_BACKENDS:
                for rows in (parity, latency):
                    assert rows[(family, backend)]["status"] == "skipped" and rows[(family, backend)]["reason"]
        assert "no CUDA GPU" in data["backends"]["torch-cuda"]["reason"]
        assert {f for f, b in latency if b == "transformers"} == PEERS
        assert all("no CUDA GPU" in latency[(f, "transformers")]["reason"] for f in PEERS)
        assert data["machine"]["gpu"] is None
        assert "| bert | tensorrt | skipped: no CUDA GPU" in (tmp_path / "gpu_suite.md").read_text()
    else:  # the peer on the same GPU, and how each trtformer row compares with it
        for family in PEERS:
            assert latency[(family, "transformers")]["status"] == "measured", latency[(family, "transformers")]
            assert latency[(family, "torch-cuda")]["vs_transformers"] > 0 and latency[(family, "torch-cuda")]["peak_gpu_mib"] > 0
    assert data["settings"]["precision"] == "fp32"
    assert "| transfo_xl | ort-cpu | passed" in (tmp_path / "gpu_suite.md").read_text()
    assert (tmp_path / "gpu_suite.png").read_bytes()[:4] == b"\x89PNG"
