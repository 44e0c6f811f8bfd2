"""BERT encoder latency: torch eager (transformers) against trtformer on ONNX Runtime (plain, fused, int8).

    python benchmarks/bert_latency.py                       # BERT-base (random weights), seq 128/384, batch 1/8
    python benchmarks/bert_latency.py --quick --out /tmp/q  # a tiny BERT, for tests

One checkpoint of random weights (transformers' BertModel, saved to a temporary directory) is exported
once with `--optimize --quantize int8-dynamic`, so all four rows run the same weights. Rounds interleave
the backends (one measured batch of runs each per round) so that the machine's drift lands on all alike.
Writes bert_latency.json, .md and .png into --out. The int8 graph's agreement with fp32 is measured on
the benchmark's own inputs (cosine of the hidden states) and by `trtformer parity` (its generated cases).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from bench_common import NOISY, Neighbours, machine_info, noisy_label, run_and_write

import trtformer
from trtformer.artifact import read_manifest
from trtformer.bench import latency_stats
from trtformer.parity import check_parity

log = logging.getLogger("bert_latency")

BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
TINY = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
FULL = {"shapes": ["1x128", "8x128", "1x384", "8x384"], "runs": 5, "rounds": 3, "warmup": 2, "out": "benchmarks/results"}
QUICK = {"shapes": ["1x16", "2x32"], "runs": 2, "rounds": 1, "warmup": 1, "out": "benchmarks/results"}
BACKENDS = {  # name -> (label, ORT graph or None for transformers)
    "torch": ("torch eager (transformers BertModel)", None),
    "ort-plain": ("trtformer ORT, plain graph", "plain"),
    "ort-optimized": ("trtformer ORT, fused graph", "optimized"),
    "ort-int8": ("trtformer ORT, int8 dynamic", "int8"),
}
BASELINE = "torch"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny BERT and small shapes, for smoke tests")
    p.add_argument("--shapes", nargs="+", help="BATCHxSEQ pairs (default: 1x128 8x128 1x384 8x384)")
    p.add_argument("--runs", type=int, help="timed forwards per backend, shape and round")
    p.add_argument("--rounds", type=int, help="interleaved rounds over all backends")
    p.add_argument("--warmup", type=int, help="untimed forwards per backend and shape before the first round")
    p.add_argument("--out", type=Path, help="directory for bert_latency.{json,md,png}")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes]
    except ValueError:
        p.error(f"--shapes takes BATCHxSEQ pairs such as 8x128, got {args.shapes}")
    args.out = Path(args.out)
    return args


def make_checkpoint(directory: Path, quick: bool):
    import transformers as T

    torch.manual_seed(0)
    hf = T.BertModel(T.BertConfig(**(TINY if quick else BASE))).eval()
    hf.save_pretrained(directory)
    return hf


def inputs(batch: int, seq: int, vocab: int) -> dict[str, np.ndarray]:
    ids = np.random.default_rng(seq * 100 + batch).integers(1000 if vocab > 2000 else 1, vocab, (batch, seq))
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def runner(name: str, hf, sessions):
    if name == BASELINE:
        def run(feeds):
            with torch.inference_mode():
                out = hf(**{k: torch.from_numpy(v) for k, v in feeds.items()})
            return {"last_hidden_state": out.last_hidden_state.numpy(), "pooler_output": out.pooler_output.numpy()}
        return run
    return sessions[name].run


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def run(args, tmp: Path) -> dict:
    threads = torch.get_num_threads()
    log.info("building the checkpoint (%s)", "tiny" if args.quick else "BERT-base, random weights")
    hf = make_checkpoint(tmp / "checkpoint", args.quick)
    art = tmp / "artifact"
    t0 = time.perf_counter()
    trtformer.export(tmp / "checkpoint", art, optimize=True, quantize="int8-dynamic")
    export_s = time.perf_counter() - t0
    manifest = read_manifest(art)
    sessions = {n: trtformer.load(art, backend="ort-cpu", model=g, threads=threads) for n, (_, g) in BACKENDS.items() if g}
    torch.set_num_threads(threads)
    run_fn = {n: runner(n, hf, sessions) for n in BACKENDS}
    vocab = manifest.config["vocab_size"]

    samples: dict[tuple[str, int, int], list[float]] = defaultdict(list)
    agreement: dict[str, dict] = {}
    meter = Neighbours()
    for batch, seq in args.shapes:
        feeds = inputs(batch, seq, vocab)
        outs = {}
        for name in BACKENDS:  # warm-up; its outputs give the agreement numbers
            for _ in range(args.warmup):
                outs[name] = run_fn[name](feeds)
        ref = outs[BASELINE]
        agreement[f"{batch}x{seq}"] = {
            name: {k: cosine(outs[name][k], ref[k]) for k in ref} | {"max_abs_last_hidden_state": float(np.abs(outs[name]["last_hidden_state"] - ref["last_hidden_state"]).max())}
            for name in BACKENDS if name != BASELINE
        }
    for rnd in range(args.rounds):
        for batch, seq in args.shapes:
            feeds = inputs(batch, seq, vocab)
            summary = []
            for name in BACKENDS:
                with meter.watch((name, batch, seq)):
                    for _ in range(args.runs):
                        t = time.perf_counter()
                        run_fn[name](feeds)
                        samples[(name, batch, seq)].append(time.perf_counter() - t)
                summary.append(f"{name} {1e3 * np.median(samples[(name, batch, seq)][-args.runs:]):.1f}")
            log.info("round %d/%d, batch %d seq %d, ms p50: %s", rnd + 1, args.rounds, batch, seq, ", ".join(summary))

    results = []
    for (name, batch, seq), s in samples.items():
        lat = latency_stats(s)
        share = meter.share((name, batch, seq))
        if share is not None and share > NOISY:
            log.warning("other processes took %.0f%% of the CPU while %s ran %dx%d: that row is noisy", 100 * share, name, batch, seq)
        results.append({"backend": name, "batch": batch, "seq": seq, "latency": lat,
                        "sequences_per_s": batch * 1e3 / lat["p50_ms"], "other_processes_cpu_share": share})
    base = {(r["batch"], r["seq"]): r["latency"]["p50_ms"] for r in results if r["backend"] == BASELINE}
    for r in results:
        r["speedup_vs_torch_p50"] = base[(r["batch"], r["seq"])] / r["latency"]["p50_ms"]

    log.info("parity of the int8 graph (agreement criteria) on the generated cases")
    parity = check_parity(art, model="int8", write=False)
    sessions.clear()
    return {
        "benchmark": "bert_latency",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"config": manifest.config, "fusions": manifest.graph().fusions, "quantization": manifest.graph().quantization,
                  "export_seconds": export_s},
        "settings": {"shapes": [f"{b}x{s}" for b, s in args.shapes], "runs": args.runs, "rounds": args.rounds,
                     "warmup": args.warmup, "threads": threads, "torch_attention": hf.config._attn_implementation,
                     "sequences_per_s": "batch / p50 latency"},
        "machine": machine_info(threads),
        "agreement_with_torch": agreement,
        "int8_parity": {"passed": parity.passed, "criterion": parity.criterion,
                        "pooled": [{"output": c.output, "criterion": c.criterion, "agreement": c.agreement, "cosine": c.cosine,
                                    "passed": c.passed} for c in parity.comparisons if c.passed is not None]},
        "results": results,
    }


def markdown(report: dict) -> str:
    lines = ["| backend | batch x seq | p50 ms | p90 ms | p99 ms | sequences/s | speedup vs torch (p50) | other procs' CPU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    order = list(BACKENDS)
    for r in sorted(report["results"], key=lambda r: (r["seq"], r["batch"], order.index(r["backend"]))):
        lat = r["latency"]
        lines.append(f"| {BACKENDS[r['backend']][0]} | {r['batch']}x{r['seq']} | {lat['p50_ms']:.1f} | {lat['p90_ms']:.1f} "
                     f"| {lat['p99_ms']:.1f} | {r['sequences_per_s']:.1f} | {r['speedup_vs_torch_p50']:.2f}x "
                     f"| {noisy_label(r['other_processes_cpu_share'])} |")
    m = report["machine"]
    agree = "; ".join(f"{shape}: " + ", ".join(f"{n} {v['last_hidden_state']:.5f}" for n, v in per.items())
                      for shape, per in report["agreement_with_torch"].items())
    worst: dict[str, dict] = {}  # per output, its worst case
    for p in report["int8_parity"]["pooled"]:
        value = p["agreement"] if p["agreement"] is not None else p["cosine"]
        if p["output"] not in worst or value < worst[p["output"]]["value"]:
            worst[p["output"]] = {**p, "value": value}
    pooled = ", ".join(f"{o} {p['criterion']} >= {p['value']:.4f} ({'pass' if p['passed'] else 'FAIL'})" for o, p in worst.items())
    return "\n".join([
        "# BERT encoder latency", "",
        f"{report['model']['config']['num_hidden_layers']}-layer BERT, hidden {report['model']['config']['hidden_size']}, "
        f"random weights; {m['cpu']} x{m['cpu_count']}, {m['threads']} threads", "",
        *lines, "",
        f"- fusions in the optimised graph: {report['model']['fusions']}",
        f"- int8 ops: {report['model']['quantization']['ops']}",
        f"- cosine of last_hidden_state with torch on the benchmark inputs: {agree}",
        f"- int8 parity on trtformer's generated cases ({report['int8_parity']['criterion']}): {pooled}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
        f"- command: `{report['command']}`", "",
    ])


def plot(report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = report["settings"]["shapes"]
    by = {(r["backend"], f"{r['batch']}x{r['seq']}"): r for r in report["results"]}
    x = np.arange(len(shapes))
    width = 0.8 / len(BACKENDS)
    fig, (ax_lat, ax_speed) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, name in enumerate(BACKENDS):
        pos = x + (i - (len(BACKENDS) - 1) / 2) * width
        p50 = np.array([by[(name, s)]["latency"]["p50_ms"] for s in shapes])
        p99 = np.array([by[(name, s)]["latency"]["p99_ms"] for s in shapes])
        ax_lat.bar(pos, p50, width, yerr=[np.zeros_like(p50), p99 - p50], capsize=3, label=BACKENDS[name][0])
        bars = ax_speed.bar(pos, [by[(name, s)]["speedup_vs_torch_p50"] for s in shapes], width, label=BACKENDS[name][0])
        ax_speed.bar_label(bars, fmt="%.1fx", fontsize=7)
    ax_lat.set_yscale("log")
    for ax, label in ((ax_lat, "ms per forward: bar p50, whisker p99 (log)"), (ax_speed, "speedup over torch eager (p50)")):
        ax.set_xticks(x, [f"batch x seq {s}" for s in shapes])
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    ax_speed.legend(fontsize=8)
    fig.suptitle(f"BERT ({report['model']['config']['num_hidden_layers']} layers) encoder latency, "
                 f"{report['machine']['threads']} threads", fontsize=10)
    return fig


def main(argv=None) -> int:
    args = parse_args(argv)
    run_and_write("bert_latency", args.out, lambda tmp: run(args, tmp), markdown, plot, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
