"""BART-base and T5-small greedy generation: trtformer on ONNX Runtime (fp32 and int8) against transformers' generate(),
same weights.

    python benchmarks/seq2seq_decode.py                       # bart-base-random, t5-small-random; 512 source tokens
    python benchmarks/seq2seq_decode.py --quick --out /tmp/q  # tiny presets, a few tokens: seconds, for tests

A request is one source batch of --source-len random tokens and --new-tokens greedy target tokens (eos ignored, so
every run makes the same number of steps): the encoder once, then the decoder steps with the caches. Tokens/s counts
target tokens over the whole request (encoder included), for trtformer and for generate() alike; the decoder's
per-step latency (p50/p90/p99) is reported beside it. Backends interleave in rounds. The int8 rows report how many
of their tokens equal the fp32 graph's. Writes seq2seq_decode.{json,md,png} into --out.
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
from bench_common import NOISY, Neighbours, machine_info, noisy_label, run_and_write, step_clock, target_lines

import trtformer
from trtformer.artifact import Artifact
from trtformer.bench import latency_stats
from trtformer.runtime.seq2seq import Seq2Seq, generate_seq2seq

log = logging.getLogger("seq2seq_decode")

FULL = {"models": ["bart-base-random", "t5-small-random"], "source_len": 512, "new_tokens": 64, "runs": 3, "warmup": 1}
QUICK = {"models": ["tiny-bart", "tiny-t5"], "source_len": 32, "new_tokens": 8, "runs": 1, "warmup": 1}
ROWS = ("ort fp32", "ort int8", "transformers")
TARGETS = {"ort fp32": 2.0, "ort int8": 3.0}  # tokens/s over transformers at batch 1
HF_TOLERANCE = 1e-4


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny presets and a few tokens, for smoke tests")
    p.add_argument("--models", nargs="+", help="presets to export (default: bart-base-random t5-small-random)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--source-len", type=int)
    p.add_argument("--new-tokens", type=int)
    p.add_argument("--runs", type=int, help="measured rounds")
    p.add_argument("--warmup", type=int, help="discarded runs per row, in the first round")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# --- transformers with the artifact's weights -------------------------------------------------------------------


def hf_model(artifact: Artifact):
    """transformers' model of the artifact's family, loaded with its reference weights (strict, tied heads)."""
    import transformers as T
    from safetensors.torch import load_file

    c, state = artifact.config, load_file(artifact.reference_path)
    if artifact.family == "bart":
        keys = ("vocab_size", "max_position_embeddings", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
                "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "activation_function", "scale_embedding",
                "pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id", "forced_bos_token_id",
                "forced_eos_token_id")  # fmt: skip
        model = T.BartForConditionalGeneration(T.BartConfig(**{k: c[k] for k in keys}))
        state = {("" if k == "final_logits_bias" else "model.") + k: v for k, v in state.items()}
    else:
        keys = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads", "relative_attention_num_buckets",
                "relative_attention_max_distance", "layer_norm_epsilon", "feed_forward_proj", "pad_token_id", "eos_token_id",
                "decoder_start_token_id")  # fmt: skip
        model = T.T5ForConditionalGeneration(T.T5Config(**{k: c[k] for k in keys}, tie_word_embeddings=c["tie_word_embeddings"]))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if k.endswith(("embed_tokens.weight", "lm_head.weight"))}
    if set(missing) - tied or unexpected:
        raise SystemExit(f"weight mapping is off: missing {sorted(set(missing) - tied)}, unexpected {unexpected}")
    return model.eval()


def check_hf_weights(hf, reference: Seq2Seq, vocab: int, seed: int) -> dict:
    """transformers' logits against the trtformer torch reference for a few target tokens: the same weights."""
    rng = np.random.default_rng(seed + 1)
    ids, target = rng.integers(3, vocab, (2, 9)), rng.integers(3, vocab, (2, 5))
    mask = np.ones_like(ids)
    encoded = reference.encode(ids, mask)
    ref, _ = reference.step(target, encoded)
    with torch.no_grad():
        got = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), decoder_input_ids=torch.from_numpy(target)).logits
    diff = float(np.abs(got.numpy() - ref).max())
    return {"max_abs_diff": diff, "tolerance": HF_TOLERANCE, "passed": diff < HF_TOLERANCE}


# --- measuring ----------------------------------------------------------------------------------------------------


def measure_trtformer(model: Seq2Seq, ids: list[list[int]], new_tokens: int) -> dict:
    t0 = time.perf_counter()
    result = generate_seq2seq(model, ids, max_new_tokens=new_tokens, ignore_eos=True)
    total = time.perf_counter() - t0
    return {"total_s": total, "decode_step_s": result.step_seconds[1:], "tokens": result.tokens}


def measure_hf(hf, ids: list[list[int]], new_tokens: int) -> dict:
    from transformers import LogitsProcessorList

    clock = step_clock()
    source = torch.tensor(ids)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = hf.generate(input_ids=source, attention_mask=torch.ones_like(source), do_sample=False, num_beams=1,
                          max_new_tokens=new_tokens, min_new_tokens=new_tokens, logits_processor=LogitsProcessorList([clock]))  # fmt: skip
    total = time.perf_counter() - t0
    return {"total_s": total, "decode_step_s": np.diff(clock.stamps).tolist(), "tokens": out[:, 1:].tolist()}


def run(args: argparse.Namespace, tmp: Path) -> dict:
    threads = torch.get_num_threads()
    report = {"benchmark": "seq2seq_decode", "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine_info(threads),
              "settings": {k: getattr(args, k) for k in ("batches", "source_len", "new_tokens", "runs", "warmup", "seed")},
              "models": {}}  # fmt: skip
    for preset in args.models:
        log.info("exporting %s (fp32, and int8 from %s)", preset, "the fused graph" if "bart" in preset else "the plain graph")
        path = trtformer.export(preset, tmp / preset, optimize="bart" in preset, quantize="int8-dynamic")
        artifact = Artifact.load(path)
        fp32 = "optimized" if "optimized" in artifact.graph("decoder").models else "plain"
        runners = {"ort fp32": Seq2Seq.open(artifact, "ort-cpu", model=fp32, threads=threads),
                   "ort int8": Seq2Seq.open(artifact, "ort-cpu", model="int8", threads=threads)}  # fmt: skip
        hf = hf_model(artifact)
        with Seq2Seq.open(artifact, "torch") as reference:
            check = check_hf_weights(hf, reference, artifact.config["vocab_size"], args.seed)
        if not check["passed"]:
            raise SystemExit(f"{preset}: transformers differs from the reference by {check['max_abs_diff']:.2e}")
        torch.set_num_threads(threads)
        rng = np.random.default_rng(args.seed)
        sources = {b: rng.integers(3, artifact.config["vocab_size"], (b, args.source_len)).tolist() for b in args.batches}
        parts: dict = defaultdict(list)
        meter = Neighbours()
        for rnd in range(args.runs):
            for batch in args.batches:
                for row in ROWS:
                    for i in range(args.warmup + 1 if rnd == 0 else 1):
                        with meter.watch((row, batch)):
                            r = measure_hf(hf, sources[batch], args.new_tokens) if row == "transformers" else \
                                measure_trtformer(runners[row], sources[batch], args.new_tokens)  # fmt: skip
                        if i == (args.warmup if rnd == 0 else 0):
                            parts[(row, batch)].append(r)
                log.info("%s round %d batch %d: %s", preset, rnd + 1, batch,
                         ", ".join(f"{row} {parts[(row, batch)][-1]['total_s']:.2f} s" for row in ROWS))  # fmt: skip
        for runner in runners.values():
            runner.close()
        rows = []
        for (row, batch), runs in parts.items():
            total = float(np.median([x["total_s"] for x in runs]))
            rows.append({"row": row, "batch": batch, "request_s_p50": total, "tokens_per_s": batch * args.new_tokens / total,
                         "decode_ms_per_token": latency_stats([s for x in runs for s in x["decode_step_s"]]),
                         "other_processes_cpu_share": meter.share((row, batch)), "tokens": runs[-1]["tokens"]})  # fmt: skip
        by = {(r["row"], r["batch"]): r for r in rows}
        agreement = {str(b): float(np.mean(np.array(by[("ort int8", b)]["tokens"]) == np.array(by[("ort fp32", b)]["tokens"])))
                     for b in args.batches}  # fmt: skip
        ratios = {row: {str(b): by[(row, b)]["tokens_per_s"] / by[("transformers", b)]["tokens_per_s"] for b in args.batches}
                  for row in TARGETS}  # fmt: skip
        first = str(args.batches[0])
        report["models"][preset] = {
            "config": artifact.config, "ort_fp32_graph": fp32, "fusions": artifact.graph("decoder").fusions,
            "hf_weight_check": check, "int8_token_agreement_with_fp32": agreement, "ratio_over_transformers": ratios,
            "targets": {f"{row} / transformers tokens/s at batch {first}": {"value": ratios[row][first], "target": f">= {t}x",
                        "met": ratios[row][first] >= t} for row, t in TARGETS.items()},
            "results": [{k: v for k, v in r.items() if k != "tokens"} for r in rows],
        }  # fmt: skip
    return report


# --- reporting ----------------------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    s, m = report["settings"], report["machine"]
    lines = ["# Seq2seq greedy generation benchmark", "",
             f"source {s['source_len']} tokens, {s['new_tokens']} new tokens (eos ignored), rounds {s['runs']}; "
             f"{m['cpu']} x{m['cpu_count']}, {m['threads']} threads", ""]  # fmt: skip
    for preset, r in report["models"].items():
        lines += [f"## {preset}", "", "| row | batch | request s (p50) | tokens/s | decode p50 ms/step | p99 | vs transformers | other procs' CPU |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        base = {x["batch"]: x["tokens_per_s"] for x in r["results"] if x["row"] == "transformers"}
        for x in sorted(r["results"], key=lambda x: (x["batch"], ROWS.index(x["row"]))):
            d = x["decode_ms_per_token"]
            lines.append(f"| {x['row']} | {x['batch']} | {x['request_s_p50']:.3f} | {x['tokens_per_s']:.1f} | {d['p50_ms']:.2f} "
                         f"| {d['p99_ms']:.2f} | {x['tokens_per_s'] / base[x['batch']]:.2f}x | {noisy_label(x['other_processes_cpu_share'])} |")
        lines += ["", *target_lines(r["targets"]),
                  "- int8 tokens equal to fp32's: " + ", ".join(f"batch {b} {100 * v:.0f}%" for b, v in r["int8_token_agreement_with_fp32"].items()),
                  f"- same weights: transformers logits vs the torch reference, max abs diff {r['hf_weight_check']['max_abs_diff']:.2e}",
                  *(["- rows marked (noisy) ran while other processes took CPU"] if any((x["other_processes_cpu_share"] or 0) > NOISY
                                                                                    for x in r["results"]) else []), ""]  # fmt: skip
    lines += [f"- command: `{report['command']}`", ""]
    return "\n".join(lines)


def plot(report: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(report["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, preset in zip(axes[0], models, strict=True):
        results = report["models"][preset]["results"]
        batches = sorted({x["batch"] for x in results})
        width = 0.8 / len(ROWS)
        for i, row in enumerate(ROWS):
            tps = [next(x["tokens_per_s"] for x in results if x["row"] == row and x["batch"] == b) for b in batches]
            bars = ax.bar(np.arange(len(batches)) + (i - 1) * width, tps, width, label=row)
            ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.set_xticks(np.arange(len(batches)), [f"batch {b}" for b in batches])
        ax.set_ylabel("target tokens/s, encoder included (higher is better)")
        ax.set_title(preset, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def main(argv=None) -> int:
    args = parse_args(argv)
    run_and_write("seq2seq_decode", args.out, lambda tmp: run(args, tmp), markdown, plot, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
