"""What the benchmark scripts share: machine facts, the CPU-neighbour meter, logging set-up.

Imported by the scripts in this folder (python puts a script's folder on sys.path).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

import trtformer

NOISY = 0.05  # share of the machine's CPU taken by other processes above which a row is flagged
MIN_METER_S = 2.0  # shortest measurement whose neighbours' CPU share is reported
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # recorded when set
LOAD_AT_START = list(os.getloadavg())  # 1, 5, 15 minutes, before the script adds its own load


def setup_logging(script_logger: logging.Logger) -> None:
    """Progress from the script and trtformer only; the exporter's dependencies log a lot at INFO."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    for name in (script_logger.name, "trtformer"):
        logging.getLogger(name).setLevel(logging.INFO)


def run_and_write(name: str, out: Path, run, markdown, plot, logger: logging.Logger) -> None:
    """`run(tmp)` in a temporary directory, then NAME.json, .md (`markdown(report)`) and .png (the figure
    `plot(report)` draws) into `out`; the markdown is printed too."""
    setup_logging(logger)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
        report = run(Path(tmp))
    md = markdown(report)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text(md)
    fig = plot(report)  # a pyplot figure (plot() picks the Agg backend before importing pyplot)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    print(md)
    logger.info("wrote %s/%s.{json,md,png}", out, name)


def target_lines(targets: dict) -> list[str]:
    """Markdown list items for a report's targets ({name: {"value", "target", "met"}}; None = not measured)."""
    lines = []
    for key, t in targets.items():
        value = "not measured" if t["value"] is None else f"{t['value']:.2f}"
        verdict = "" if t["met"] is None else ", met" if t["met"] else ", MISSED"
        lines.append(f"- {key}: {value} (target {t['target']}{verdict})")
    return lines


def noisy_label(share: float | None) -> str:
    return "n/a" if share is None else f"{100 * share:.0f}%" + (" (noisy)" if share > NOISY else "")


def machine_info(threads: int) -> dict:
    import onnxruntime
    import transformers

    cpu = platform.processor()
    try:  # the model name says more than platform.processor() on Linux
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        # Other processes on the machine skew CPU timings: a load well above 0 at the start marks a noisy run.
        "load_average_at_start": LOAD_AT_START,
        "threads": threads,
        "thread_env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "trtformer": trtformer.__version__,
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
    }


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has been busy (Linux /proc/stat), or None elsewhere."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Neighbours:
    """CPU time other processes take while measurements run, accumulated per row (backend, batch).

    With as many threads as cores, a busy neighbour stalls every parallel region (torch's OpenMP worst of
    all), so a row measured while others took a noticeable share of the CPU is not comparable.
    """

    def __init__(self):
        self.wall: dict = defaultdict(float)
        self.other: dict = defaultdict(float)

    @contextlib.contextmanager
    def watch(self, key):
        wall0, busy0, own0 = time.perf_counter(), busy_cpu_seconds(), time.process_time()
        yield
        busy1 = busy_cpu_seconds()
        if busy0 is not None and busy1 is not None:
            self.wall[key] += time.perf_counter() - wall0
            # process_time() covers every thread of this process (ORT's pool, torch's OpenMP).
            self.other[key] += max(0.0, busy1 - busy0 - (time.process_time() - own0))

    def share(self, key) -> float | None:
        """Other processes' CPU as a share of all cores; None when /proc/stat's 10 ms ticks are too coarse."""
        wall = self.wall.get(key, 0.0)
        return self.other[key] / (wall * (os.cpu_count() or 1)) if wall >= MIN_METER_S else None


def step_clock():
    """A transformers LogitsProcessor that stamps time.perf_counter() in its `stamps` at every call: generate() calls
    it once per forward, the first time right after prefill, so the stamps time each decode step."""
    import time

    from transformers import LogitsProcessor

    class Clock(LogitsProcessor):
        def __init__(self):
            self.stamps: list[float] = []

        def __call__(self, input_ids, scores):
            self.stamps.append(time.perf_counter())
            return scores

    return Clock()
