"""GPU suite: parity and latency of every family on every backend this machine has, in one command.

    python benchmarks/gpu_suite.py --out /tmp/suite          # parity on tiny presets, latency at a representative shape
    python benchmarks/gpu_suite.py --quick --out /tmp/q      # tiny everything (the CPU test runs this)

Backends, in this order (the likely fastest first, so that a spent time budget skips the others): torch-cuda-graphs
(torch-cuda-triton replaying CUDA graphs of fixed-shape steps: GPT decode over a static KV cache, Transformer-XL
segments over a full memory, encoders by shape bucket), torch-cuda-compile (torch.compile with Inductor, the Triton
kernels and the same CUDA graphs), torch-cuda-triton (the fused ops' Triton kernels, switched on inside that backend's
calls only), torch-cuda (eager), ort-cuda, tensorrt (the engine `trtformer build`
makes with the flavor installed), for models with state tensorrt with CUDA graphs, and last the CPU baselines ort-cpu
and torch (the GPU rows are what the time budget is for). The torch-cuda* backends run at the artifacts' precision
(--precision, fp32 by default). A backend this machine lacks is a row "skipped: <reason>"; a backend that raises is a
row "error: <message>". Every row records its seconds, and every GPU latency row the peak memory of torch's CUDA
allocator over its measurement (ONNX Runtime's and TensorRT's own allocations are not in it).

The peer on the same GPU, in the same process, measured before any trtformer row: latency rows `transformers` for GPT-2 (generate, eager, fp16), BERT
(eager, fp16, SDPA attention) and Longformer (eager, fp16; global tokens at the first 3 positions), on a model of the
same shape with random weights, with their peak GPU memory; every trtformer latency row of those families then gets
`vs_transformers`, the transformers p50 over its own. Without a GPU those rows are skipped with the reason.

Parity: `trtformer.parity.check_parity` on each family's tiny preset (GPT-2, BERT, Longformer, Transformer-XL).
Latency, without --quick, on a representative model per family (GPT-2 small decode, BERT-base, Longformer-base at
4096 tokens with 3 global, Transformer-XL of the enwik8 base shape at steady state with a 1600-row memory); with --quick on the tiny
presets at small shapes. Latency is wall-clock per call with numpy in and out (what a service sees: the host copy of
the outputs synchronises the GPU). A time budget (--budget-s) skips the latency rows left when it is spent, so a full
run stays within 8 minutes; --cache keeps the exports for the next run. The JSON's `targets` judge the issue's targets
(TARGETS) on each family's fastest trtformer GPU row, at fp16 on the full shapes. Writes gpu_suite.json, .md and .png
into --out.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from bench_common import machine_info, run_and_write, target_lines

import trtformer
from trtformer import bench
from trtformer.errors import TrtformerError
from trtformer.parity import check_parity, padded_feeds

log = logging.getLogger("gpu_suite")


def longformer_base(directory: Path) -> Path:
    from longformer_scaling import make_checkpoint

    make_checkpoint(directory, quick=False, max_len=4096)
    return directory


def transfo_xl_base(directory: Path) -> Path:
    from transfo_xl_eval_speed import make_checkpoint

    make_checkpoint(directory, quick=False, mem_len=1600)
    return directory


@dataclass(frozen=True)
class Family:
    name: str
    tiny: str  # preset for parity, and for latency with --quick
    kind: str  # decode | forward | segments: how latency is measured
    quick: dict  # latency shape with --quick
    full: dict  # latency shape on the representative model
    representative: Callable[[Path], str | Path]  # a preset name, or a checkpoint made in the given directory
    label: str  # the representative model, for the report
    stateful: bool = False


FAMILIES = [
    Family("gpt", "tiny-gpt2", "decode", {"batch": 1, "prompt_len": 8, "new_tokens": 8},
           {"batch": 1, "prompt_len": 128, "new_tokens": 32}, lambda _: "gpt2-small-random", "GPT-2 small", stateful=True),
    Family("bert", "tiny-bert", "forward", {"batch": 2, "seq": 16}, {"batch": 8, "seq": 128}, lambda _: "bert-base-random",
           "BERT-base"),
    Family("longformer", "tiny-longformer", "forward", {"batch": 1, "seq": 64, "globals": 3},
           {"batch": 1, "seq": 4096, "globals": 3}, longformer_base, "Longformer-base"),
    Family("transfo_xl", "tiny-transfo-xl", "segments", {"batch": 1, "seg": 8}, {"batch": 1, "seg": 128}, transfo_xl_base,
           "Transformer-XL enwik8 base, memory 1600", stateful=True),
]  # fmt: skip


FAMILIES_BY_NAME = {f.name: f for f in FAMILIES}


@dataclass(frozen=True)
class Backend:
    label: str  # the row's name
    registry: str  # trtformer backend name
    options: dict = field(default_factory=dict)
    stateful_only: bool = False  # rows only for families with state


# The rows most likely to be a family's fastest first: a run that spends its budget skips the eager rows, not those.
BACKENDS = [
    Backend("torch-cuda-graphs", "torch-cuda-triton", {"cuda_graphs": True}),
    Backend("torch-cuda-compile", "torch-cuda-compile"),
    Backend("torch-cuda-triton", "torch-cuda-triton"),
    Backend("torch-cuda", "torch-cuda"),
    Backend("ort-cuda", "ort-cuda"),
    Backend("tensorrt", "tensorrt"),
    Backend("tensorrt-graphs", "tensorrt", {"cuda_graphs": True}, stateful_only=True),
    Backend("ort-cpu", "ort-cpu"),
    Backend("torch", "torch"),
]
UNITS = {"decode": "ms per token", "forward": "ms per forward", "segments": "ms per segment"}
CPU_ROWS = ("ort-cpu", "torch")
# The targets at fp16 on the full shapes, per family: (ms, times faster than transformers, peak GPU memory as a
# share of transformers'), judged on the family's fastest trtformer GPU row.
TARGETS = {"gpt": (1.0, 5.0, None), "bert": (1.5, 4.0, None), "longformer": (5.0, 10.0, 0.3), "transfo_xl": (3.0, None, None)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny presets and small shapes for latency too")
    p.add_argument("--out", type=Path, required=True, help="directory for gpu_suite.{json,md,png}")
    p.add_argument("--families", nargs="+", choices=[f.name for f in FAMILIES], default=[f.name for f in FAMILIES])
    p.add_argument("--backends", nargs="+", choices=[b.label for b in BACKENDS], default=[b.label for b in BACKENDS])
    p.add_argument("--runs", type=int, help="timed calls per latency row (default 20; 3 with --quick)")
    p.add_argument("--budget-s", type=float, default=420.0, help="latency rows left when this many seconds have passed are skipped")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32", help="the exports' precision")
    p.add_argument("--cache", type=Path, help="keep the exports and checkpoints here and reuse them in later runs "
                   "(a Longformer-base export takes minutes); default: a temporary directory")
    args = p.parse_args(argv)
    if args.runs is None:
        args.runs = 3 if args.quick else 20
    return args


# --- what this machine has ------------------------------------------------------------------------------------

def missing(backend: Backend) -> str | None:
    """Why `backend` cannot run here, or None. The last word is creating a session (an engine may still not fit)."""
    if backend.registry in ("ort-cpu", "torch"):
        return None
    if not torch.cuda.is_available():
        return f"no CUDA GPU (torch {torch.__version__} sees none)"
    if backend.registry in ("torch-cuda-triton", "torch-cuda-compile") and importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'trtformer[triton]')"
    if backend.registry == "ort-cuda":
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return "onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
    if backend.registry == "tensorrt":
        return tensorrt_missing()
    return None


def tensorrt_missing() -> str | None:
    from trtformer.trt import flavors

    try:
        kit = flavors.load("auto")
    except TrtformerError as exc:
        return exc.one_line()
    device = flavors.device_capability()
    if kit.ahead_of_time and device not in flavors.rtx_capabilities(kit.trt):
        return (f"full TensorRT is not installed, and {kit.label} does not target this GPU (compute capability {device}; "
                f"it targets {', '.join(flavors.rtx_capabilities(kit.trt))})")
    return None


# --- rows -----------------------------------------------------------------------------------------------------

def prepare(backend: Backend, artifact: Path) -> None:
    """Build the engine a tensorrt row needs; it is cached in the artifact, so the graph rows reuse it."""
    if backend.registry == "tensorrt":
        from trtformer.engines import build_engine

        build = build_engine(artifact)
        log.info("engine %s (%s, %.1f s)", build.name, "cached" if build.cached else "built", build.seconds)


def open_session(backend: Backend, artifact: Path, threads: int):
    prepare(backend, artifact)
    options = {"threads": threads} if backend.registry in ("ort-cpu", "torch") else {}
    return trtformer.load(artifact, backend=backend.registry, **options, **backend.options)


def guarded(row: dict, work: Callable[[], dict]) -> dict:
    """`work()`'s fields added to the row; a trtformer error (what the backend lacks) skips it, anything else is an error."""
    t0 = time.perf_counter()
    try:
        row.update(work())
    except TrtformerError as exc:
        row.update(status="skipped", reason=exc.one_line())
    except Exception as exc:  # the suite reports every row rather than stop at the first broken backend
        log.warning("%s %s %s failed", row["family"], row["backend"], row["check"], exc_info=True)
        row.update(status="error", reason=f"{type(exc).__name__}: {exc}")
    row["seconds"] = round(time.perf_counter() - t0, 2)  # engine builds and kernel compiles included
    return row


def parity_row(backend: Backend, family: Family, artifact: Path) -> dict:
    def work() -> dict:
        prepare(backend, artifact)
        report = check_parity(artifact, backend=backend.registry, write=False, **backend.options)
        judged = [c for c in report.comparisons if c.passed is not None]
        return {"status": "passed" if report.passed else "failed", "comparisons": len(judged),
                "failed": [f"{c.case}: {c.output}" for c in judged if not c.passed],
                "max_abs": max((c.max_abs for c in judged), default=0.0), "min_cosine": min((c.cosine for c in judged), default=1.0)}

    return guarded({"family": family.name, "backend": backend.label, "check": "parity", "model": family.tiny}, work)


def measure(session, family: Family, shape: dict, runs: int) -> dict:
    if family.kind == "decode":
        r = bench.measure_decode(session, warmup=1, runs=max(1, runs // shape["new_tokens"]), **shape)
        return {"latency": r["decode_ms_per_token"], "prefill_ms_p50": r["prefill_ms_p50"]}
    if family.kind == "segments":
        return {"latency": bench.measure_segments(session, warmup=4, runs=runs, **shape)["latency"]}
    feeds = padded_feeds(session, shape["batch"], shape["seq"], False, np.random.default_rng(0))
    glob = session.graph.role_input("global-mask")
    if glob is not None:  # the first `globals` tokens global, as the peer's (a classification token and a question)
        feeds[glob.name] = np.zeros_like(feeds[glob.name])
        feeds[glob.name][:, : shape.get("globals", 1)] = 1
    return {"latency": bench.measure_forward(session, feeds, warmup=2, runs=runs)["latency"]}


def latency_row(backend: Backend, family: Family, artifact: Path, shape: dict, model: str, args, threads: int, start: float) -> dict:
    row = {"family": family.name, "backend": backend.label, "check": "latency", "model": model,
           "shape": " ".join(f"{k} {v}" for k, v in shape.items()), "unit": UNITS[family.kind]}
    spent = time.perf_counter() - start
    if spent > args.budget_s:
        return {**row, "status": "skipped", "reason": f"the time budget of {args.budget_s:.0f} s was spent ({spent:.0f} s)"}

    def work() -> dict:
        with open_session(backend, artifact, threads) as session, gpu_peak() as peak:
            measured = measure(session, family, shape, args.runs)
        return {"status": "measured", **measured, **peak}

    return guarded(row, work)


@contextlib.contextmanager
def gpu_peak():
    """{"peak_gpu_mib": ...} filled in on exit: torch's CUDA allocator's peak inside the block (nothing without a GPU)."""
    found: dict = {}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    yield found
    if torch.cuda.is_available():
        found["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)


# --- the peer: transformers on the same GPU -------------------------------------------------------------------

PEERS = {"gpt": "generate, eager, fp16", "bert": "eager, fp16, SDPA", "longformer": "eager, fp16"}


def peer_model(family: Family, quick: bool, checkpoint: Path | None, device: str = "cuda"):
    """A transformers model of the representative's shape (tiny with --quick), random weights, fp16 on the GPU."""
    import transformers as T

    small = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    if family.name == "gpt":
        cfg = T.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=512) if quick else T.GPT2Config()
        model = T.AutoModelForCausalLM.from_config(cfg)
    elif family.name == "bert":
        model = T.AutoModel.from_config(T.BertConfig(**small) if quick else T.BertConfig(), attn_implementation="sdpa")
    else:
        cfg = T.LongformerConfig(**small, attention_window=16) if quick or checkpoint is None else \
            T.LongformerConfig.from_pretrained(checkpoint)  # fmt: skip
        model = T.AutoModel.from_config(cfg, attn_implementation="eager")
    return model.half().to(device).eval()


def timed(fn: Callable[[], object], warmup: int, runs: int) -> list[float]:
    """Seconds per call, the GPU (when there is one) synchronised around each."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t0)
    return samples


def measure_peer(model, family: Family, shape: dict, runs: int) -> dict:
    device = model.device
    gen = torch.Generator(device=device).manual_seed(0)
    vocab = model.config.vocab_size
    with torch.no_grad():
        if family.kind == "decode":  # per token: (generate n new tokens - generate 1) / (n - 1), as trtformer's decode
            ids = torch.randint(0, vocab, (shape["batch"], shape["prompt_len"]), device=device, generator=gen)
            n = shape["new_tokens"]

            def generate(new: int):
                return lambda: model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                                              do_sample=False, pad_token_id=0)  # fmt: skip

            full, first = timed(generate(n), 1, max(1, runs // n)), timed(generate(1), 1, max(1, runs // n))
            per_token = [(f - p) / (n - 1) for f, p in zip(full, first, strict=True)]
            return {"latency": bench.latency_stats(per_token), "prefill_ms_p50": 1e3 * float(np.median(first))}
        ids = torch.randint(0, vocab, (shape["batch"], shape["seq"]), device=device, generator=gen)
        feeds = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if family.name == "longformer":
            feeds["global_attention_mask"] = torch.zeros_like(ids)
            feeds["global_attention_mask"][:, : shape.get("globals", 1)] = 1
        return {"latency": bench.latency_stats(timed(lambda: model(**feeds), 2, runs))}


def peer_row(family: Family, shape: dict, args, checkpoint: Path | None, start: float) -> dict:
    row = {"family": family.name, "backend": "transformers", "check": "latency", "model": f"transformers ({PEERS[family.name]})",
           "shape": " ".join(f"{k} {v}" for k, v in shape.items()), "unit": UNITS[family.kind]}  # fmt: skip
    if not torch.cuda.is_available():
        return {**row, "status": "skipped", "reason": f"no CUDA GPU (torch {torch.__version__} sees none)"}
    spent = time.perf_counter() - start
    if spent > args.budget_s:
        return {**row, "status": "skipped", "reason": f"the time budget of {args.budget_s:.0f} s was spent ({spent:.0f} s)"}

    def work() -> dict:
        model = peer_model(family, args.quick, checkpoint)
        with gpu_peak() as peak:
            measured = measure_peer(model, family, shape, args.runs)
        del model
        torch.cuda.empty_cache()
        return {"status": "measured", **measured, **peak}

    return guarded(row, work)


def add_peer_ratios(latency: list[dict]) -> None:
    """`vs_transformers` on each measured trtformer row of a family whose transformers row was measured."""
    peers = {r["family"]: r for r in latency if r["backend"] == "transformers" and r["status"] == "measured"}
    for r in latency:
        peer = peers.get(r["family"])
        if peer is not None and r is not peer and r["status"] == "measured":
            r["vs_transformers"] = peer["latency"]["p50_ms"] / r["latency"]["p50_ms"]


# --- main -----------------------------------------------------------------------------------------------------

def export(source, path: Path, precision: str, reuse: bool = False) -> Path:
    if reuse and (path / "manifest.json").is_file():
        log.info("reusing the export in %s", path)
        return path
    t0 = time.perf_counter()
    trtformer.export(source, path, form="portable", precision=precision, overwrite=True)
    log.info("exported %s in %.1f s", source if isinstance(source, str) else source.name, time.perf_counter() - t0)
    return path


def run(args, tmp: Path) -> dict:
    start = time.perf_counter()
    threads = torch.get_num_threads()
    families = [f for f in FAMILIES if f.name in args.families]
    backends = [b for b in BACKENDS if b.label in args.backends]
    where, reuse = (args.cache, True) if args.cache else (tmp, False)
    tiny = {f.name: export(f.tiny, where / f"{f.tiny}-{args.precision}", args.precision, reuse) for f in families}
    reasons = {b.label: missing(b) for b in backends}
    for label, reason in reasons.items():
        log.info("%s: %s", label, f"skipped ({reason})" if reason else "available")
    parity, latency, models, checkpoints = [], [], {}, {}
    for family in families:
        if args.quick:
            models[family.name] = (tiny[family.name], family.tiny, family.quick)
        elif any(reasons[b.label] is None for b in backends):
            checkpoint = where / f"{family.name}-checkpoint"
            source = checkpoint if reuse and (checkpoint / "config.json").is_file() else family.representative(checkpoint)
            checkpoints[family.name] = source if isinstance(source, Path) else None
            latency_export = export(source, where / f"{family.name}-latency-{args.precision}", args.precision, reuse)
            models[family.name] = (latency_export, f"{family.label} (random weights)", family.full)
    # The peer first: every ratio and target needs it. Then backend-major (the Triton kernels run only inside their
    # backend's calls, so no order between the torch-cuda rows is needed for correctness).
    for family in families:
        if family.name in PEERS:
            log.info("%s on transformers: latency", family.name)
            latency.append(peer_row(family, family.quick if args.quick else family.full, args, checkpoints.get(family.name), start))
    for backend in backends:
        for family in families:
            if backend.stateful_only and not family.stateful:
                continue
            if reasons[backend.label] is not None:
                for check, rows in (("parity", parity), ("latency", latency)):
                    rows.append({"family": family.name, "backend": backend.label, "check": check, "status": "skipped",
                                 "reason": reasons[backend.label]})
                continue
            log.info("%s on %s: parity", family.name, backend.label)
            parity.append(parity_row(backend, family, tiny[family.name]))
            artifact, model, shape = models[family.name]
            log.info("%s on %s: latency (%s)", family.name, backend.label, model)
            latency.append(latency_row(backend, family, artifact, shape, model, args, threads, start))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the next backend measures without this one's cached blocks
    add_peer_ratios(latency)
    machine = machine_info(threads)
    machine["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "benchmark": "gpu_suite",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": "quick" if args.quick else "full",
        "settings": {"runs": args.runs, "budget_s": args.budget_s, "precision": args.precision, "form": "portable",
                     "latency": "wall-clock per call, numpy in and out; decode per token, Transformer-XL per segment "
                                "with a full memory"},  # fmt: skip
        "machine": machine,
        "backends": {label: {"available": reason is None, "reason": reason} for label, reason in reasons.items()},
        "parity": parity,
        "latency": latency,
        "targets": targets(latency, args),
        "seconds": time.perf_counter() - start,
    }


def judged(value, target: float, text: str, at_most: bool = True) -> dict:
    return {"value": value, "target": text, "met": None if value is None else bool(value <= target if at_most else value >= target)}


def targets(latency: list[dict], args) -> dict:
    """The issue's targets (TARGETS) on each family's fastest trtformer GPU row; None where not measured, and in a
    quick run or at another precision than fp16, where they do not apply."""
    out = {}
    applies = not args.quick and args.precision == "fp16"
    for family, (ms, faster, memory) in TARGETS.items():
        rows = [r for r in latency if r["family"] == family and r["status"] == "measured"
                and r["backend"] not in (*CPU_ROWS, "transformers")] if applies else []  # fmt: skip
        best = min(rows, key=lambda r: r["latency"]["p50_ms"], default=None)
        peer = next((r for r in latency if r["family"] == family and r["backend"] == "transformers" and r["status"] == "measured"), None)
        name = f"{family} ({best['backend']}, {best['shape']})" if best else family
        out[f"{name}: {UNITS[FAMILIES_BY_NAME[family].kind]}"] = judged(best and best["latency"]["p50_ms"], ms, f"<= {ms}")
        if faster is not None:
            out[f"{name}: x transformers"] = judged(best and best.get("vs_transformers"), faster, f">= {faster}x", at_most=False)
        if memory is not None:
            share = best["peak_gpu_mib"] / peer["peak_gpu_mib"] if best and peer and "peak_gpu_mib" in best else None
            out[f"{name}: peak GPU memory / transformers'"] = judged(share, memory, f"<= {memory}x")
    return out


def status_cell(row: dict) -> str:
    if row["status"] in ("skipped", "error"):
        return f"{row['status']}: {row['reason']}"
    if row["check"] == "parity":
        extra = f"; failed {', '.join(row['failed'][:3])}" if row["failed"] else ""
        return f"{row['status']} ({row['comparisons']} checks, max abs {row['max_abs']:.1e}, min cosine {row['min_cosine']:.6f}{extra})"
    lat = row["latency"]
    extra = "".join([f", peak GPU {row['peak_gpu_mib']:.0f} MiB" if "peak_gpu_mib" in row else "",
                     f", {row['vs_transformers']:.2f}x transformers" if "vs_transformers" in row else ""])
    return f"p50 {lat['p50_ms']:.3f}, p90 {lat['p90_ms']:.3f}, p99 {lat['p99_ms']:.3f} {row['unit']} ({row['model']}, {row['shape']}{extra})"


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = ["# GPU suite", "",
             f"{report['mode']} run on {m['gpu'] or 'no GPU'}; {m['cpu']} x{m['cpu_count']}, {m['threads']} threads; "
             f"{report['seconds']:.0f} s", ""]  # fmt: skip
    for check in ("parity", "latency"):
        lines += [f"## {check.capitalize()}", "", "| family | backend | result |", "|---|---|---|"]
        lines += [f"| {r['family']} | {r['backend']} | {status_cell(r)} |" for r in report[check]]
        lines.append("")
    lines += ["## Targets (fp16, full shapes, the fastest trtformer GPU row)", "", *target_lines(report["targets"]), ""]
    lines += [f"- {report['settings']['latency']}; parity on the tiny presets against the torch reference (CPU)",
              f"- versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
              f"- command: `{report['command']}`", ""]  # fmt: skip
    return "\n".join(lines)


def plot(report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(r["family"] for r in report["latency"])) or ["none"]
    fig, axes = plt.subplots(1, len(families), figsize=(4 * len(families), 4), squeeze=False)
    for ax, family in zip(axes[0], families, strict=True):
        rows = [r for r in report["latency"] if r["family"] == family and r["status"] == "measured"]
        p50 = np.array([r["latency"]["p50_ms"] for r in rows])
        p99 = np.array([r["latency"]["p99_ms"] for r in rows])
        ax.bar(range(len(rows)), p50, yerr=[np.zeros_like(p50), p99 - p50], capsize=3)
        ax.set_xticks(range(len(rows)), [r["backend"] for r in rows], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{family}: {rows[0]['model']}" if rows else family, fontsize=9)
        ax.set_ylabel(rows[0]["unit"] + " (bar p50, whisker p99)" if rows else "")
        if len(p50) and p50.max() / max(p50.min(), 1e-9) > 20:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"trtformer GPU suite ({report['mode']}, {report['machine']['gpu'] or 'no GPU'})", fontsize=10)
    return fig


def main(argv=None) -> int:
    args = parse_args(argv)
    run_and_write("gpu_suite", args.out, lambda tmp: run(args, tmp), markdown, plot, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
