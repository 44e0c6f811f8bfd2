"""Transformer-XL evaluation speed: memory reuse against sliding-window recomputation, beside the paper's Table 9.

    python benchmarks/transfo_xl_eval_speed.py                       # the paper's enwik8 base model, 128..3800
    python benchmarks/transfo_xl_eval_speed.py --quick --out /tmp/q  # a tiny model, for tests

The paper (Dai et al., 2019, Table 9) evaluates a vanilla Transformer by sliding its window one position at a time,
so every predicted token costs one forward over the whole context, and reports Transformer-XL, which carries the
context as memory and predicts a segment of tokens per forward, up to 1,874x faster (363x at attention length 800).

Here both evaluations run the same trtformer artifact (one set of random weights, the enwik8 base shape: 12 layers,
d_model 512, 8 heads, d_inner 2048, 204 symbols; clamp_len 1000 as the paper evaluates), on each backend:
- sliding window: the forward over the L tokens before the predicted one, memory empty; each step slides the window
  by one token. Per-token time = the time of one forward.
- memory reuse: a segment of --seg-len tokens with the memory of the L tokens before it. Per-token time = the
  segment's time / its length. Its queries attend to L + 1 .. L + seg keys, at least the window's L (the model keeps
  memory up to the longest L, and same_length is off), so the comparison never favours memory reuse.
The memory is real: it is the state the first sliding-window forward returns. And the two compute the same thing
for the segment's first token (its keys are the L + 1 tokens a window of L + 1 would hold): `first_token_max_abs`
checks that memory reuse buys its speed without changing the prediction.

Each length runs a warm-up forward, then --runs forwards of each kind; the tables give medians. Writes
transfo_xl_eval_speed.json, .md and .png into --out.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import NOISY, Neighbours, machine_info, noisy_label, run_and_write, target_lines

import trtformer
from trtformer.bench import latency_stats
from trtformer.models.transfo_xl import TransfoXL, TransfoXLConfig

log = logging.getLogger("transfo_xl_eval_speed")

# The shape of the paper's enwik8 base model; clamp_len as the paper's enwik8 evaluation (tgt_len 128, mem_len 3800,
# clamp_len 1000), where Table 9's lengths come from. Distances past clamp_len share one encoding, so r_net projects
# at most clamp_len + 1 rows per layer, in both evaluations.
ENWIK8_BASE = dict(vocab_size=204, cutoffs=(), d_model=512, d_embed=512, n_head=8, d_head=64, d_inner=2048, div_val=1,
                   n_layer=12, clamp_len=1000, same_length=False)  # fmt: skip
TINY = dict(vocab_size=64, cutoffs=(), d_model=32, d_embed=32, n_head=2, d_head=16, d_inner=64, div_val=1, n_layer=2,
            clamp_len=24, same_length=False)  # fmt: skip
FULL = {"lengths": [128, 256, 512, 800, 1800, 2800, 3800], "seg_len": 128, "runs": 2, "out": "benchmarks/results"}
QUICK = {"lengths": [16, 40], "seg_len": 8, "runs": 2, "out": "benchmarks/results"}
PAPER = {800: 363, 1800: 773, 2800: 1409, 3800: 1874}  # speed-up over the vanilla model, Table 9
BACKENDS = {"ort": ("ort-cpu", "trtformer ONNX Runtime (portable form)"), "torch": ("torch", "trtformer torch reference")}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a tiny model and short contexts, for smoke tests")
    p.add_argument("--lengths", type=int, nargs="+", help="attention lengths L (default: 128 256 512 800 1800 2800 3800)")
    p.add_argument("--seg-len", type=int, help="tokens per memory-reuse segment (default 128, as the paper evaluates)")
    p.add_argument("--runs", type=int, help="timed forwards of each kind per backend and length (default 2)")
    p.add_argument("--backends", nargs="+", choices=list(BACKENDS), default=list(BACKENDS), help="default: all")
    p.add_argument("--out", type=Path, help="directory for transfo_xl_eval_speed.{json,md,png}")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.lengths) < 1 or args.seg_len < 1 or args.runs < 1:
        p.error("lengths, --seg-len and --runs must be >= 1")
    args.out = Path(args.out)
    return args


def make_checkpoint(directory: Path, quick: bool, mem_len: int) -> dict:
    """A Transformer-XL of random weights saved as a Hugging Face checkpoint directory; returns its config."""
    from safetensors.torch import save_file

    cfg = TransfoXLConfig(**(TINY if quick else ENWIK8_BASE), mem_len=mem_len)
    model = TransfoXL(cfg).init_weights(seed=0)
    directory.mkdir(parents=True)
    hf = {**cfg.to_dict(), "model_type": "transfo-xl", "architectures": ["TransfoXLLMHeadModel"]}
    (directory / "config.json").write_text(json.dumps(hf))
    # Tied tensors share storage, which safetensors refuses; the loader ties them again from the config.
    save_file({f"transformer.{k}": v.clone() for k, v in model.state_dict().items()}, directory / "model.safetensors")
    return cfg.to_dict()


def measure(session, ids: np.ndarray, length: int, seg_len: int, runs: int, meter: Neighbours, key) -> dict:
    """One backend at attention length `length`: sliding-window and memory-reuse samples, and the first-token check."""
    head = session.graph.outputs[0].name  # log_probs or logits
    step = session.step

    # Warm-up, and the check's reference: a window of L + 1 tokens predicts from exactly what the segment's first
    # token sees with L tokens of memory.
    check = step({"input_ids": ids[:, : length + 1]}, fetch=[head])[0][head][:, -1]
    window_s, segment_s, memory = [], [], None
    with meter.watch(key):
        for i in range(runs):  # the window slides by one token per predicted token
            t0 = time.perf_counter()
            _, state = step({"input_ids": ids[:, i : i + length]}, fetch=[head])
            window_s.append(time.perf_counter() - t0)
            memory = state if i == 0 else memory
        segment = {"input_ids": ids[:, length : length + seg_len]}
        first = step(segment, memory, fetch=[head])[0][head][:, 0]  # warm-up at the segment's shape
        for _ in range(runs):
            t0 = time.perf_counter()
            step(segment, memory, fetch=[head])
            segment_s.append(time.perf_counter() - t0)
    assert memory.sizes and max(memory.sizes.values()) >= length, memory.sizes  # the memory holds the whole context
    window = latency_stats(window_s)
    per_token = latency_stats([s / seg_len for s in segment_s])
    return {
        "length": length,
        "sliding_window_ms_per_token": window,
        "memory_reuse_ms_per_token": per_token,
        "speedup": window["p50_ms"] / per_token["p50_ms"],
        "first_token_max_abs": float(np.abs(first - check).max()),
        "other_processes_cpu_share": meter.share(key),
    }


def run(args, tmp: Path) -> dict:
    threads = torch.get_num_threads()
    log.info("building the checkpoint (%s)", "tiny" if args.quick else "enwik8 base shape, random weights")
    config = make_checkpoint(tmp / "checkpoint", args.quick, max(args.lengths))
    t0 = time.perf_counter()
    artifact = trtformer.export(tmp / "checkpoint", tmp / "portable", form="portable")
    export_s = time.perf_counter() - t0
    log.info("exported in %.0f s", export_s)
    ids = np.random.default_rng(0).integers(0, config["vocab_size"], (1, max(args.lengths) + args.seg_len + args.runs))
    meter, results = Neighbours(), []
    for name in args.backends:
        session = trtformer.load(artifact, backend=BACKENDS[name][0], threads=threads)
        for length in args.lengths:
            r = {"backend": name, **measure(session, ids, length, args.seg_len, args.runs, meter, (name, length))}
            results.append(r)
            share = r["other_processes_cpu_share"]
            log.info("%s L=%d: sliding %.1f ms/token, memory %.3f ms/token, %.0fx%s", name, length,
                     r["sliding_window_ms_per_token"]["p50_ms"], r["memory_reuse_ms_per_token"]["p50_ms"], r["speedup"],
                     " (noisy)" if share is not None and share > NOISY else "")  # fmt: skip
    return {
        "benchmark": "transfo_xl_eval_speed",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"config": config, "export_seconds": export_s},
        "settings": {"lengths": args.lengths, "seg_len": args.seg_len, "runs": args.runs, "threads": threads, "batch": 1,
                     "statistic": "median (p50) of the timed forwards"},  # fmt: skip
        "machine": machine_info(threads),
        "paper_speedup": {str(k): v for k, v in PAPER.items()},
        "results": results,
        "targets": targets(results),
    }


def targets(results: list[dict]) -> dict:
    """The issue's target: a speed-up at least the paper's at each of its attention lengths measured here."""
    return {f"{r['backend']} speed-up at L={r['length']}": {"value": r["speedup"], "target": f">= {PAPER[r['length']]}",
                                                             "met": r["speedup"] >= PAPER[r["length"]]}
            for r in results if r["length"] in PAPER}  # fmt: skip


def markdown(report: dict) -> str:
    lines = ["| backend | attention length | sliding window ms/token | memory reuse ms/token | speed-up | paper | "
             "first-token max abs | other procs' CPU |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        paper = PAPER.get(r["length"])
        lines.append(f"| {BACKENDS[r['backend']][1]} | {r['length']} | {r['sliding_window_ms_per_token']['p50_ms']:.1f} "
                     f"| {r['memory_reuse_ms_per_token']['p50_ms']:.3f} | {r['speedup']:.0f}x "
                     f"| {'' if paper is None else f'{paper}x'} | {r['first_token_max_abs']:.1e} "
                     f"| {noisy_label(r['other_processes_cpu_share'])} |")
    cfg, m, s = report["model"]["config"], report["machine"], report["settings"]
    return "\n".join([
        "# Transformer-XL evaluation speed: memory reuse against sliding-window recomputation", "",
        f"{cfg['n_layer']} layers, d_model {cfg['d_model']}, {cfg['n_head']} heads, d_inner {cfg['d_inner']}, vocab "
        f"{cfg['vocab_size']}, random weights; segments of {s['seg_len']} tokens; batch 1; {m['cpu']} x{m['cpu_count']}, "
        f"{m['threads']} threads; the paper measured on one GPU", "",
        *lines, "",
        *target_lines(report["targets"]),
        "- first-token max abs: the segment's first prediction with memory against a window of L + 1 tokens",
        f"- versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
        f"- command: `{report['command']}`", "",
    ])  # fmt: skip


def plot(report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, (ax_time, ax_ratio) = plt.subplots(1, 2, figsize=(12, 4.5))
    for color, name in enumerate(dict.fromkeys(r["backend"] for r in report["results"])):
        rows = [r for r in report["results"] if r["backend"] == name]
        lengths, label, c = [r["length"] for r in rows], BACKENDS[name][1], f"C{color}"  # one colour a backend
        for key, marker, ls, how in (("sliding_window", "o", "-", "sliding window"), ("memory_reuse", "s", "--", "memory reuse")):
            times = [r[f"{key}_ms_per_token"]["p50_ms"] for r in rows]
            ax_time.plot(lengths, times, marker=marker, ls=ls, color=c, label=f"{label}, {how}")
        ax_ratio.plot(lengths, [r["speedup"] for r in rows], marker="o", color=c, label=label)
    ax_ratio.plot(list(PAPER), list(PAPER.values()), marker="*", ms=10, color="black", ls=":", label="paper (Table 9, GPU)")
    ticks = sorted({r["length"] for r in report["results"]})
    for ax, label in ((ax_time, "ms per predicted token (log)"), (ax_ratio, "speed-up of memory reuse (log)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=8)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("attention length")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    cfg = report["model"]["config"]
    fig.suptitle(f"Transformer-XL evaluation ({cfg['n_layer']} layers, d_model {cfg['d_model']}), segments of "
                 f"{report['settings']['seg_len']}, {report['machine']['threads']} threads", fontsize=10)
    return fig


def main(argv=None) -> int:
    args = parse_args(argv)
    run_and_write("transfo_xl_eval_speed", args.out, lambda tmp: run(args, tmp), markdown, plot, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
