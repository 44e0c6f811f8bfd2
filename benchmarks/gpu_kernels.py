"""GPU kernel benchmark: the fused ops' Triton kernels against flash attention (SDPA) on the same GPU and shapes.

    python benchmarks/gpu_kernels.py --out benchmarks/results/gpu_kernels   # the issue's shapes, fp16 and bf16
    python benchmarks/gpu_kernels.py --quick --out /tmp/k                   # small shapes (the CPU test runs this)
    python benchmarks/gpu_kernels.py --interpret --out /tmp/k               # tiny shapes, Triton's CPU interpreter

Rows, for each dtype:
- sliding-window (Longformer-base layer): batch 1, 12 heads x 64, window 512, one global token, seq 4096 (quick: 512,
  window 64): the Triton kernel (`sliding_window_attention_triton`), the op's eager reference, and
  `torch.nn.functional.scaled_dot_product_attention` over every key of the same q, k, v (flash on an H100/H200);
- rel-position (Transformer-XL enwik8 base layer): batch 1, 8 heads x 64, a 128-query segment over memories of 128 to
  1600 rows (quick: 32 queries, memories 32 and 64): the Triton attention core (`attention_core`: the four terms, the
  rel-shift by index arithmetic, the causal softmax), SDPA at the same q and k lengths, and the whole op (projections,
  layer norm and new memory included) on the Triton kernels against its eager reference.
Times are CUDA-event medians of --runs calls after warm-up calls (the first call at a shape bucket tunes the kernel's
config, so tuning is never timed; each Triton row records the config the tuner picked and its split-K count). TFLOP/s
counts the useful work (the band and global keys a sliding-window query attends, not the keys it skips), so a kernel
and SDPA compare on work done, and `x SDPA` compares on time. Peak memory is per row (torch.cuda.max_memory_allocated over the calls).

Targets (the issue's, fp16): sliding-window <= 0.35x the time of SDPA over all 4096 keys; rel-position core at keys
1728 <= 2.5x the time of SDPA at q 128, k 1728; the rel-position op faster than its eager reference at every memory
length. Without a CUDA GPU every row is "skipped: no CUDA GPU" and the script still writes its files and exits 0;
`--interpret` instead runs the fp16 rows at tiny shapes on CPU tensors under TRITON_INTERPRET=1 (its times mean
nothing: it checks that the script calls the kernels right, and each Triton row's `max_abs_vs_eager`); its bf16 rows
are skipped, since the interpreter computes through numpy, which has no bfloat16 (its results are garbage there).
Writes gpu_kernels.json, .md and .png into --out.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_common import machine_info, run_and_write, target_lines

log = logging.getLogger("gpu_kernels")

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
FULL = {"sliding": {"seq": 4096, "window": 512, "heads": 12, "head_dim": 64, "globals": 1},
        "rel": {"qlen": 128, "mems": [128, 256, 512, 1024, 1600], "heads": 8, "head_dim": 64}}
QUICK = {"sliding": {"seq": 512, "window": 64, "heads": 12, "head_dim": 64, "globals": 1},
         "rel": {"qlen": 32, "mems": [32, 64], "heads": 8, "head_dim": 64}}
TINY = {"sliding": {"seq": 48, "window": 8, "heads": 2, "head_dim": 16, "globals": 1},
        "rel": {"qlen": 8, "mems": [8], "heads": 2, "head_dim": 16}}  # fmt: skip
SLIDING_TARGET, REL_TARGET = 0.35, 2.5


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small shapes")
    p.add_argument("--interpret", action="store_true", help="tiny shapes on CPU under Triton's interpreter (no timing worth reading)")
    p.add_argument("--out", type=Path, required=True, help="directory for gpu_kernels.{json,md,png}")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    p.add_argument("--runs", type=int, help="timed calls per row (default 50; 5 with --quick)")
    args = p.parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.interpret else 5 if args.quick else 50
    if args.interpret:  # read when @triton.jit decorates the kernels, i.e. before they are first imported
        os.environ["TRITON_INTERPRET"] = "1"
    args.device = "cpu" if args.interpret else "cuda"
    return args


def missing(args, dtype: str) -> str | None:
    import importlib.util

    if args.interpret and dtype == "bf16":
        return "Triton's CPU interpreter computes through numpy, which has no bfloat16"
    if not args.interpret and not torch.cuda.is_available():
        return f"no CUDA GPU (torch {torch.__version__} sees none)"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'trtformer[triton]')"
    return None


def cuda_ms(fn: Callable[[], object], warmup: int, runs: int) -> tuple[float, float | None]:
    """Median milliseconds per call (CUDA events around each call) and the peak memory in MiB over the calls; on CPU
    (the interpreter) wall-clock and no memory."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
        return float(np.median(times)), None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return float(np.median(times)), torch.cuda.max_memory_allocated() / 2**20


def row(kernel: str, dtype: str, shape: str, impl: str, flops: float, fn: Callable[[], object], args,
        eager: Callable[[], object] | None = None, plan: Callable[[], tuple] | None = None) -> dict:
    """A measured row; with `eager`, the largest difference of the row's first output from the eager op's; with
    `plan`, the Triton config the row ran (the tuner's pick: the warm-up calls tuned the shape's bucket) and its split
    count."""
    ms, peak = cuda_ms(fn, warmup=0 if args.interpret else 3 if args.quick else 10, runs=args.runs)
    r = {"kernel": kernel, "dtype": dtype, "shape": shape, "impl": impl, "status": "measured", "ms": ms,
         "tflops": flops / (ms * 1e-3) / 1e12, "gflop": flops / 1e9, "peak_mib": peak}  # fmt: skip
    if plan is not None:
        config, splits = plan()
        r["config"], r["splits"] = config._asdict(), splits
    if eager is not None:
        first = [fn(), eager()]
        first = [o[0] if isinstance(o, tuple) else o for o in first]
        r["max_abs_vs_eager"] = float((first[0].float() - first[1].float()).abs().max())
    return r


def sdpa(q, k, v) -> Callable[[], object]:
    import torch.nn.functional as F

    return lambda: F.scaled_dot_product_attention(q, k, v)


# --- sliding window -------------------------------------------------------------------------------------------

def sliding_rows(shape: dict, dtype: str, args) -> list[dict]:
    from trtformer.ops.sliding_window import sliding_window_reference
    from trtformer.plugins.registry import PLUGINS

    triton = PLUGINS["SlidingWindowAttention"].load_triton()
    n, w, h, e, g = shape["seq"], shape["window"], shape["heads"], shape["head_dim"], shape["globals"]
    dev = args.device
    gen = torch.Generator(device=dev).manual_seed(0)
    # The model's layout: projections [batch, seq, heads * head_dim] viewed as [batch, heads, seq, head_dim].
    q, k, v, qg, kg, vg = (torch.randn(1, n, h, e, device=dev, dtype=DTYPES[dtype], generator=gen).transpose(1, 2)
                           for _ in range(6))  # fmt: skip
    real = torch.ones(1, n, dtype=torch.bool, device=dev)
    glob = torch.zeros(1, n, dtype=torch.bool, device=dev)
    glob[0, :g] = True
    op = (q, k, v, qg, kg, vg, real, glob, w, [1] * h, 1 / math.sqrt(e))
    label = f"b1 s{n} w{w} {h}x{e} g{g}"
    band = 4 * h * (n - g) * (w + 1 + g) * e + 4 * h * g * n * e  # local rows (band + globals) and global rows
    full = 4 * h * n * n * e
    eager = lambda: sliding_window_reference(*op)  # noqa: E731
    plan = lambda: triton.plan(q, w, [1] * h)  # noqa: E731
    return [row("sliding-window", dtype, label, "triton", band, lambda: triton.sliding_window_attention_triton(*op), args, eager, plan),
            row("sliding-window", dtype, label, "eager op", band, eager, args),
            row("sliding-window", dtype, label, "sdpa (all keys)", full, sdpa(q, k, v), args)]  # fmt: skip


# --- relative position ----------------------------------------------------------------------------------------

def rel_rows(shape: dict, mem: int, dtype: str, args) -> list[dict]:
    from trtformer.ops.rel_position import reference
    from trtformer.plugins.registry import PLUGINS

    triton = PLUGINS["RelPositionAttention"].load_triton()
    qlen, h, e = shape["qlen"], shape["heads"], shape["head_dim"]
    klen, hd, d_model, dt, dev = mem + qlen, h * e, h * e, DTYPES[dtype], args.device
    gen = torch.Generator(device=dev).manual_seed(0)

    def rand(*size, scale=1.0):
        return torch.randn(*size, device=dev, dtype=dt, generator=gen) * scale

    label = f"b1 q{qlen} k{klen} {h}x{e}"
    q, kv, rel = rand(qlen, 1, hd), rand(klen, 1, 2 * hd), rand(klen, hd)
    u, vb, out = rand(h, e), rand(h, e), torch.empty(qlen, 1, hd, device=dev, dtype=dt)
    core = 6 * h * qlen * klen * e  # content q.k, position q.r, probabilities @ v
    plan = lambda: triton.plan(q, kv, h, e, mem, klen)  # noqa: E731
    rows = [row("rel-position", dtype, label, "triton core", core,
                lambda: triton.attention_core(q, kv, rel, u, vb, out, mem, klen, h, e), args, plan=plan)]  # fmt: skip
    sq, sk, sv = (rand(1, h, n, e) for n in (qlen, klen, klen))
    rows.append(row("rel-position", dtype, label, "sdpa", 4 * h * qlen * klen * e, sdpa(sq, sk, sv), args))
    # The whole op (projections, layer norm, new memory): the Triton kernels against the eager reference.
    weights = (rand(3 * hd, d_model, scale=0.05), rand(hd, d_model, scale=0.05), u, vb, rand(d_model, hd, scale=0.05),
               torch.ones(d_model, device=dev), torch.zeros(d_model, device=dev))  # fmt: skip
    op = (rand(qlen, 1, d_model), rand(mem, 1, d_model), *weights, h, e, mem, False, 1000, False, 1e-5)
    proj = 2 * (qlen * 3 * hd + mem * 2 * hd + klen * hd + qlen * hd) * d_model  # qkv, r and o projections
    eager = lambda: reference(*op)  # noqa: E731
    rows += [row("rel-position op", dtype, label, "triton op", core + proj, lambda: triton.rel_position_attention_triton(*op), args, eager, plan),
             row("rel-position op", dtype, label, "eager op", core + proj, eager, args)]  # fmt: skip
    return rows


# --- report ---------------------------------------------------------------------------------------------------

def run(args, _tmp: Path) -> dict:
    start = time.perf_counter()
    shapes = TINY if args.interpret else QUICK if args.quick else FULL
    reasons = {dtype: missing(args, dtype) for dtype in args.dtypes}
    plan = [("sliding-window", dtype, None) for dtype in args.dtypes] + \
           [("rel-position", dtype, mem) for dtype in args.dtypes for mem in shapes["rel"]["mems"]]  # fmt: skip
    rows = []
    for kernel, dtype, mem in plan:
        where = {"kernel": kernel, "dtype": dtype, "shape": f"memory {mem}" if mem is not None else "", "impl": "all"}
        if reasons[dtype] is not None:
            rows.append({**where, "status": "skipped", "reason": reasons[dtype]})
            continue
        log.info("%s %s %s", kernel, dtype, where["shape"])
        try:
            rows += sliding_rows(shapes["sliding"], dtype, args) if mem is None else rel_rows(shapes["rel"], mem, dtype, args)
        except Exception as exc:  # a kernel that fails to compile for a shape is a row, not the end of the run
            log.warning("%s %s failed", kernel, dtype, exc_info=True)
            rows.append({**where, "status": "error", "reason": f"{type(exc).__name__}: {exc}"})
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    machine = machine_info(torch.get_num_threads())
    machine["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    add_ratios(rows)
    return {"benchmark": "gpu_kernels", "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "mode": "interpret" if args.interpret else "quick" if args.quick else "full",
            "settings": {"runs": args.runs, "shapes": shapes, "timing": "CUDA events, median"},
            "machine": machine, "skipped": reasons, "rows": rows, "targets": targets(rows, args.quick or args.interpret),
            "seconds": time.perf_counter() - start}  # fmt: skip


def add_ratios(rows: list[dict]) -> None:
    """Each measured row's time over SDPA's at the same kernel, dtype and shape (`x_sdpa`), and the op rows' time over
    the eager op's (`x_eager`)."""
    for r in rows:
        if r["status"] != "measured":
            continue
        same = [o for o in rows if o["status"] == "measured" and o["dtype"] == r["dtype"] and o["shape"] == r["shape"]]
        base = next((o for o in same if o["impl"].startswith("sdpa") and o["kernel"] == r["kernel"]), None)
        eager = next((o for o in same if o["impl"] == "eager op" and o["kernel"] == r["kernel"]), None)
        r["x_sdpa"] = r["ms"] / base["ms"] if base else None
        r["x_eager"] = r["ms"] / eager["ms"] if eager else None


def targets(rows: list[dict], quick: bool) -> dict:
    """The issue's targets on the fp16 rows of the full shapes (None where not measured, or in a quick run)."""
    def find(kernel, impl, shape_has):
        got = [r for r in rows if r["status"] == "measured" and r["dtype"] == "fp16" and r["kernel"] == kernel
               and r["impl"] == impl and shape_has in r["shape"]]  # fmt: skip
        return None if quick or not got else got[0]

    sliding = find("sliding-window", "triton", "s4096 w512")
    core = find("rel-position", "triton", "k1728")
    ops = [r for r in rows if r["status"] == "measured" and r["dtype"] == "fp16" and r["impl"] == "triton op"]
    slowest = max((r["x_eager"] for r in ops), default=None) if not quick and ops else None

    def judged(value, target: float, text: str) -> dict:
        return {"value": value, "target": text, "met": None if value is None else bool(value <= target)}

    return {
        "sliding-window s4096 w512 12x64 fp16, time / SDPA over all keys": judged(sliding and sliding["x_sdpa"], SLIDING_TARGET, f"<= {SLIDING_TARGET}x"),
        "rel-position q128 k1728 8x64 fp16, time / SDPA": judged(core and core["x_sdpa"], REL_TARGET, f"<= {REL_TARGET}x"),
        "rel-position op fp16, slowest time / eager over memories 128..1600": judged(slowest, 1.0, "< 1x"),
    }  # fmt: skip


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# GPU kernels", "", f"{report['mode']} run on {m['gpu'] or 'no GPU'}; {report['seconds']:.0f} s", "",
             "| kernel | dtype | shape | impl | result |", "|---|---|---|---|---|"]  # fmt: skip
    for r in report["rows"]:
        if r["status"] != "measured":
            cell = f"{r['status']}: {r['reason']}"
        else:
            ratios = ", ".join(f"{v:.2f}x {k[2:]}" for k in ("x_sdpa", "x_eager") if (v := r.get(k)) is not None)
            peak = f", peak {r['peak_mib']:.0f} MiB" if r["peak_mib"] is not None else ""
            agree = f", max abs vs eager {r['max_abs_vs_eager']:.1e}" if "max_abs_vs_eager" in r else ""
            cell = f"{r['ms']:.4f} ms, {r['tflops']:.3g} TFLOP/s{peak}{agree}" + (f" ({ratios})" if ratios else "")
            if "config" in r:
                c = r["config"]
                cell += (f"; config {c['block_m']}x{c['block_n']}, warps {c['num_warps']}, stages {c['num_stages']}, "
                         f"splits {r['splits']}")  # fmt: skip
        lines.append(f"| {r['kernel']} | {r['dtype']} | {r['shape']} | {r['impl']} | {cell} |")
    lines += ["", "## Targets", "", *target_lines(report["targets"]), "",
              "- TFLOP/s counts useful work (a sliding-window query's band and global keys only); `x sdpa` compares time",
              f"- versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
              f"- command: `{report['command']}`", ""]  # fmt: skip
    return "\n".join(lines)


def plot(report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [r for r in report["rows"] if r["status"] == "measured"]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(measured)), 4))
    if measured:
        ax.bar(range(len(measured)), [r["tflops"] for r in measured])
        ax.set_xticks(range(len(measured)), [f"{r['kernel']} {r['dtype']}\n{r['shape']}\n{r['impl']}" for r in measured],
                      rotation=90, fontsize=6)  # fmt: skip
        ax.set_ylabel("TFLOP/s (useful work)")
        ax.grid(axis="y", alpha=0.3)
    else:
        ax.text(0.5, 0.5, f"skipped: {'; '.join(sorted(set(filter(None, report['skipped'].values()))))}", ha="center",
                va="center", wrap=True)
        ax.set_axis_off()
    ax.set_title(f"trtformer GPU kernels ({report['mode']}, {report['machine']['gpu'] or 'no GPU'})", fontsize=10)
    return fig


def main(argv=None) -> int:
    args = parse_args(argv)
    run_and_write("gpu_kernels", args.out, lambda tmp: run(args, tmp), markdown, plot, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
