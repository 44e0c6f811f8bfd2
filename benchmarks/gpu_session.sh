#!/usr/bin/env bash
# Everything a GPU session measures, as one prepared script in two stages that each fit a 10-minute call:
#
#   bash benchmarks/gpu_session.sh tests   # the `gpu`-marked tests, then the kernel benchmark (about 5 minutes)
#   bash benchmarks/gpu_session.sh suite   # the GPU suite at fp16 on the full shapes, transformers beside (about 8)
#
# Results go under $OUT (the device tool's folder; default benchmarks/results/gpu): gpu.txt (the card as found),
# gpu_tests.txt, gpu_kernels/ and gpu_suite/ (JSON, markdown, PNG). Commit the last two under benchmarks/results/.
# Runs from the repository root with the machine's own Python (PY, default python3) and the source tree on its path:
# the lent machine has torch, Triton, onnx, onnxscript, onnxruntime and transformers, and no network to install more.
set -uo pipefail

OUT=${OUT:-benchmarks/results/gpu}
PY=${PY:-python3}
CACHE=${CACHE:-/tmp/trtformer-gpu-cache}  # exports reused by a second suite run on the same machine
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,temperature.gpu --format=csv >"$OUT/gpu.txt" 2>&1

case "${1:-}" in
tests)
    # -p no:cacheprovider: the copy of the tree may be read-only where pytest would write its cache.
    timeout 300 "$PY" -m pytest -m gpu -q -p no:cacheprovider -o log_cli=false tests/ >"$OUT/gpu_tests.txt" 2>&1
    echo "gpu tests: exit $? ($(tail -1 "$OUT/gpu_tests.txt"))"
    timeout 200 "$PY" benchmarks/gpu_kernels.py --out "$OUT/gpu_kernels" >"$OUT/gpu_kernels.log" 2>&1
    echo "gpu_kernels: exit $?"
    [ -f "$OUT/gpu_kernels/gpu_kernels.md" ] && sed -n '/## Targets/,$p' "$OUT/gpu_kernels/gpu_kernels.md"
    ;;
suite)
    timeout 560 "$PY" benchmarks/gpu_suite.py --precision fp16 --budget-s 400 --cache "$CACHE" \
        --out "$OUT/gpu_suite" >"$OUT/gpu_suite.log" 2>&1
    echo "gpu_suite: exit $?"
    [ -f "$OUT/gpu_suite/gpu_suite.md" ] && sed -n '/## Targets/,$p' "$OUT/gpu_suite/gpu_suite.md"
    ;;
*)
    echo "usage: bash benchmarks/gpu_session.sh tests|suite" >&2
    exit 2
    ;;
esac
