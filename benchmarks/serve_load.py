"""Serving load: `trtformer serve` (Triton Inference Server) against the in-process API, same machine, same artifacts.

    python benchmarks/serve_load.py                       # MiniLM-sized encoder @32, BERT-base @128, GPT-2 small
    python benchmarks/serve_load.py --quick --out /tmp/q  # tiny models, two concurrencies: seconds, for tests

For each model and concurrency (1 to 32 clients), closed-loop clients send one request after another for a bounded
count and time: through gRPC to one server that serves all three models (ort-cpu, one instance each, dynamic
batching for the encoders), and to the in-process API (`encode` on one shared session; `generate` behind a lock,
as the server's one instance runs one generation at a time). Reports requests/s and p50/p99 latency, writes
serve_load.json, .md and .png into --out. Targets: the server adds <= 15% to in-process p50 latency at
concurrency 1 for BERT-base; at concurrency 16 the MiniLM-sized encoder serves >= 2x the requests/s of
concurrency 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import machine_info, run_and_write, target_lines

import trtformer
from trtformer.artifact import Artifact
from trtformer.bench import latency_stats
from trtformer.runtime.encode import encode
from trtformer.runtime.generate import generate
from trtformer.serve.launch import start_serving
from trtformer.serve.repository import Batching

log = logging.getLogger("serve_load")

MINILM = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
TINY = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
FULL = {"concurrency": [1, 2, 4, 8, 16, 32], "requests": 256, "seconds": 12.0, "seq": {"minilm": 32, "bert-base": 128},
        "gpt": "gpt2-small-random", "prompt_len": 16, "new_tokens": 16, "out": "benchmarks/results"}
QUICK = {"concurrency": [1, 4], "requests": 8, "seconds": 5.0, "seq": {"minilm": 16, "bert-base": 16},
         "gpt": "tiny-gpt2", "prompt_len": 4, "new_tokens": 4, "out": "benchmarks/results"}
MODES = ("server", "in-process")
OVERHEAD_TARGET, SPEEDUP_TARGET = 0.15, 2.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny models and two concurrencies, for smoke tests")
    p.add_argument("--concurrency", type=int, nargs="+", help="client counts (default 1 2 4 8 16 32)")
    p.add_argument("--requests", type=int, help="the most requests per model, mode and concurrency")
    p.add_argument("--seconds", type=float, help="the longest a model, mode and concurrency runs")
    p.add_argument("--max-queue-delay-us", type=int, default=2000, help="the encoders' dynamic-batching delay")
    p.add_argument("--out", type=Path, help="directory for serve_load.{json,md,png}")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if min(args.concurrency) < 1 or args.requests < 1 or args.seconds <= 0:
        p.error("--concurrency, --requests and --seconds must be positive")
    args.out = Path(args.out)
    return args


def bert_checkpoint(directory: Path, config: dict) -> Path:
    import transformers as T

    torch.manual_seed(0)
    T.BertModel(T.BertConfig(**config)).eval().save_pretrained(directory)
    return directory


def closed_loop(clients: int, requests: int, seconds: float, make_call) -> dict:
    """`clients` threads, each calling its own `make_call()` callable back to back, until `requests` calls
    are taken or `seconds` have passed. Returns latency stats and requests/s over the wall time."""
    lock, taken, samples, errors = threading.Lock(), [0], [], []
    deadline = time.monotonic() + seconds

    def client():
        call = make_call()
        while time.monotonic() < deadline:
            with lock:
                if taken[0] >= requests:
                    return
                taken[0] += 1
            t0 = time.perf_counter()
            try:
                call()
            except Exception as exc:  # counted and reported; a benchmark row with errors is not a result
                errors.append(repr(exc))
                return
            with lock:
                samples.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed, first: {errors[0]}")
    return {**latency_stats(samples), "requests_per_s": len(samples) / wall, "wall_s": wall}


def server_call(url: str, model: str, inputs: dict):
    """A factory of per-thread gRPC callers of one request (tritonclient's gRPC client per thread)."""
    import tritonclient.grpc as grpcclient

    wire = {"int64": "INT64", "int32": "INT32", "bool": "BOOL"}

    def make():
        client = grpcclient.InferenceServerClient(url)
        tensors = []
        for name, value in inputs.items():
            tensors.append(grpcclient.InferInput(name, list(value.shape), wire[str(value.dtype)]))
            tensors[-1].set_data_from_numpy(value)
        return lambda: client.infer(model, tensors, client_timeout=300)

    return make


def in_process_call(session, model: str, row, prompt, gen: dict):
    """A factory of in-process callers: `encode` of one row on the shared session (ONNX Runtime runs concurrent
    calls), or `generate` behind one lock, as the server's one model instance generates one request at a time."""
    if model == "gpt2":
        lock = threading.Lock()

        def generate_one():
            with lock:
                generate(session, [prompt.tolist()], **gen)

        return lambda: generate_one
    return lambda: lambda: encode(session, [row.tolist()])


def run(args, tmp: Path) -> dict:
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    arts = {"minilm": trtformer.export(bert_checkpoint(tmp / "minilm-ckpt", TINY if args.quick else MINILM), tmp / "minilm", reference=False),
            "bert-base": trtformer.export(bert_checkpoint(tmp / "base-ckpt", TINY if args.quick else BASE), tmp / "bert-base", reference=False),
            "gpt2": trtformer.export(args.gpt, tmp / "gpt2", reference=False)}  # fmt: skip
    log.info("exported %s in %.0f s", ", ".join(arts), time.perf_counter() - t0)
    vocab = {k: Artifact.load(a).config["vocab_size"] for k, a in arts.items()}
    rows = {k: rng.integers(1000 if vocab[k] > 2000 else 1, vocab[k], args.seq[k]) for k in ("minilm", "bert-base")}
    prompt = rng.integers(0, vocab["gpt2"], args.prompt_len)
    gen = {"max_new_tokens": args.new_tokens, "ignore_eos": True}
    requests = {k: {"input_ids": r[None].astype(np.int64)} for k, r in rows.items()}
    requests["gpt2"] = {"input_ids": prompt.astype(np.int64), "max_new_tokens": np.array([args.new_tokens], np.int32),
                        "ignore_eos": np.array([True])}
    results = []
    batching = Batching(max_batch_size=32, max_queue_delay_us=args.max_queue_delay_us)
    with start_serving(list(arts.values()), names=list(arts), batching=batching) as serving:
        # Each model, then each concurrency: the server and the in-process API back to back, so drift hits both.
        for model, art in arts.items():
            with trtformer.load(art) as session:
                local_call = in_process_call(session, model, rows.get(model), prompt, gen)
                calls = {"server": server_call(serving.url("grpc"), model, requests[model]), "in-process": local_call}
                for mode in MODES:  # warm-up: sessions, clients, the server's first batch
                    closed_loop(1, 3, args.seconds, calls[mode])
                for clients in args.concurrency:
                    for mode in MODES:
                        stats = closed_loop(clients, args.requests, args.seconds, calls[mode])
                        results.append({"model": model, "mode": mode, "concurrency": clients, **stats})
                        log.info("%-9s %-10s c=%-2d %7.1f req/s  p50 %8.2f ms  p99 %8.2f ms", model, mode, clients,
                                 stats["requests_per_s"], stats["p50_ms"], stats["p99_ms"])
        batches = {m: batch_histogram(serving.url("http"), m) for m in ("minilm", "bert-base")}
    return {"machine": machine_info(threads=0), "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)},
            "results": results, "server_batches": batches, "targets": targets(results, args.concurrency)}  # fmt: skip


def batch_histogram(url: str, model: str) -> dict[int, int]:
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(url)
    stats = c.get_inference_statistics(model)["model_stats"][0].get("batch_stats", [])
    c.close()
    return {int(e["batch_size"]): int(e["compute_infer"]["count"]) for e in stats}


def row(results, model, mode, clients):
    return next((r for r in results if (r["model"], r["mode"], r["concurrency"]) == (model, mode, clients)), None)


def targets(results, concurrency) -> dict:
    server, local = row(results, "bert-base", "server", 1), row(results, "bert-base", "in-process", 1)
    overhead = server["p50_ms"] / local["p50_ms"] - 1 if server and local else None
    one, sixteen = row(results, "minilm", "server", 1), row(results, "minilm", "server", 16)
    speedup = sixteen["requests_per_s"] / one["requests_per_s"] if one and sixteen else None
    return {
        "bert-base: server p50 over in-process p50 - 1, concurrency 1": {
            "value": overhead, "target": f"<= {OVERHEAD_TARGET}", "met": None if overhead is None else overhead <= OVERHEAD_TARGET},
        "minilm: server requests/s at concurrency 16 over concurrency 1": {
            "value": speedup, "target": f">= {SPEEDUP_TARGET}", "met": None if speedup is None else speedup >= SPEEDUP_TARGET},
    }  # fmt: skip


def markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    lines = ["# Serving load: Triton (trtformer serve, gRPC) against the in-process API", "",
             f"{m['cpu']}, {m['cpu_count']} cores, load average at start {m['load_average_at_start'][0]:.2f}; "
             f"ort-cpu, one model instance each; at most {s['requests']} requests or {s['seconds']:.0f} s per row; "
             f"encoders batch with a {s['max_queue_delay_us']} us queue delay.", "",
             "| model | clients | server req/s | p50 ms | p99 ms | in-process req/s | p50 ms | p99 ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        if r["mode"] != "server":
            continue
        loc = row(report["results"], r["model"], "in-process", r["concurrency"])
        lines.append(f"| {r['model']} | {r['concurrency']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
                     f"| {loc['requests_per_s']:.1f} | {loc['p50_ms']:.2f} | {loc['p99_ms']:.2f} |")
    lines += ["", "Server batches (batch size: executions): " + "; ".join(
        f"{k} {dict(sorted(v.items()))}" for k, v in report["server_batches"].items()), "", "Targets:"]
    return "\n".join(lines + target_lines(report["targets"])) + "\n"


def plot(report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in report["results"]))
    fig, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 7), squeeze=False)
    for col, model in enumerate(models):
        for mode, style in zip(MODES, ("o-", "s--"), strict=True):
            rs = [r for r in report["results"] if r["model"] == model and r["mode"] == mode]
            xs = [r["concurrency"] for r in rs]
            axes[0][col].plot(xs, [r["requests_per_s"] for r in rs], style, label=mode)
            axes[1][col].plot(xs, [r["p50_ms"] for r in rs], style, label=f"{mode} p50")
            axes[1][col].plot(xs, [r["p99_ms"] for r in rs], style, alpha=0.4, label=f"{mode} p99")
        axes[0][col].set_title(model)
        axes[0][col].set_ylabel("requests/s")
        axes[1][col].set_ylabel("latency ms")
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent clients")
            ax.legend(fontsize=7)
    return fig


def main(argv=None) -> int:
    args = parse_args(argv)
    run_and_write("serve_load", args.out, lambda tmp: run(args, tmp), markdown, plot, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
