"""GPT-2 greedy decode: trtformer (ONNX Runtime, torch reference) against transformers' generate(), same weights.

    python benchmarks/gpt_decode.py                      # GPT-2 small (random weights), batch 1 and 8
    python benchmarks/gpt_decode.py --quick --out /tmp/q # tiny-gpt2, a few tokens: seconds, for tests

Measures per-token decode latency (p50/p90/p99) and tokens/s for each backend and batch, and writes
gpt_decode.json, gpt_decode.md and gpt_decode.png into --out. A decode "token" is one forward of the whole
batch with the KV cache; its latency runs from one step's logits to the next step's logits, which is what
a timestamp taken in a LogitsProcessor measures inside generate(), so the three rows are comparable.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from bench_common import NOISY, Neighbours, machine_info, noisy_label, setup_logging, step_clock

import trtformer
from trtformer import bench
from trtformer.artifact import Artifact

log = logging.getLogger("gpt_decode")

FULL = {"preset": "gpt2-small-random", "prompt_len": 32, "new_tokens": 64, "runs": 3, "warmup": 1, "out": "benchmarks/results"}
QUICK = {"preset": "tiny-gpt2", "prompt_len": 8, "new_tokens": 8, "runs": 1, "warmup": 1, "out": "benchmarks/results"}
BACKENDS = ("ort-cpu", "torch")  # trtformer backends; "transformers" is the baseline
BASELINE = "transformers"
LABELS = {"ort-cpu": "trtformer ORT (ort-cpu)", "torch": "trtformer torch reference", BASELINE: "transformers generate()"}
HF_TOLERANCE = 1e-4


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny-gpt2 and a few tokens, for smoke tests")
    p.add_argument("--preset", help=f"preset to export (default {FULL['preset']}; {QUICK['preset']} with --quick)")
    p.add_argument("--artifact", type=Path, help="reuse an exported artifact instead of exporting the preset")
    p.add_argument("--optimize", action="store_true",
                   help="export with ONNX Runtime's transformer fusions (model.opt.onnx), which ort-cpu then runs")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--prompt-len", type=int)
    p.add_argument("--new-tokens", type=int, help="decode steps measured per run (after prefill)")
    p.add_argument("--runs", type=int, help="measured runs per backend and batch")
    p.add_argument("--warmup", type=int, help="discarded runs before the measured ones")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    p.add_argument("--out", type=Path, help="directory for gpt_decode.{json,md,png}")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():  # explicit flags win over the mode's defaults
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = Path(args.out)
    return args


# --- transformers baseline ---------------------------------------------------------------------------------

def hf_model(artifact: Artifact):
    """GPT2LMHeadModel with the artifact's reference weights (Linear [out,in] -> Conv1D [in,out], tied head)."""
    from safetensors.torch import load_file
    from transformers import GPT2Config, GPT2LMHeadModel

    c = artifact.config
    if artifact.family != "gpt" or c.get("variant") != "gpt2" or c.get("head") != "lm":
        kind = f"{artifact.family}/{c.get('variant')}/{c.get('head')}"
        raise SystemExit(f"the transformers baseline covers GPT-2 LM models; {artifact.path} is {kind}")
    config = GPT2Config(
        vocab_size=c["vocab_size"], n_positions=c["n_positions"], n_embd=c["n_embd"], n_layer=c["n_layer"],
        n_head=c["n_head"], n_inner=c["n_inner"], activation_function=c["activation"],
        layer_norm_epsilon=c["layer_norm_epsilon"], scale_attn_weights=c["scale_attn_weights"],
        scale_attn_by_inverse_layer_idx=c["scale_attn_by_inverse_layer_idx"],
        bos_token_id=c["bos_token_id"], eos_token_id=c["eos_token_id"], pad_token_id=c["pad_token_id"],
        tie_word_embeddings=True,
    )
    model = GPT2LMHeadModel(config)
    conv1d = (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")
    state = {f"transformer.{k}": (v.t().contiguous() if k.endswith(conv1d) else v) for k, v in load_file(artifact.reference_path).items()}
    result = model.load_state_dict(state, strict=False)
    # lm_head.weight is tied to wte, so it is the only key the reference may lack.
    if set(result.missing_keys) - {"lm_head.weight"} or result.unexpected_keys:
        raise SystemExit(f"weight mapping is off: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    if model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr():
        raise SystemExit("lm_head is not tied to wte after loading")
    return model.eval()


def check_hf_weights(hf, reference, vocab: int, seed: int) -> dict:
    """HF logits against the trtformer torch reference on a short prompt: proves the weights are the same."""
    ids = bench.prompt_ids(vocab, 2, 8, seed + 1)
    mask = np.ones_like(ids)
    ref, _ = reference.step({"input_ids": ids, "attention_mask": mask}, fetch=["logits"])
    with torch.no_grad():
        got = hf(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    diff = float(np.abs(got - ref["logits"]).max())
    return {"prompt_shape": list(ids.shape), "max_abs_diff": diff, "tolerance": HF_TOLERANCE, "passed": diff < HF_TOLERANCE}


def measure_hf(hf, vocab: int, batch: int, prompt_len: int, new_tokens: int, warmup: int, runs: int, seed: int) -> dict:
    """generate() timed per token by a LogitsProcessor; same prompt, same number of decode forwards as bench."""
    from transformers import LogitsProcessorList

    ids = torch.from_numpy(bench.prompt_ids(vocab, batch, prompt_len, seed))
    mask = torch.ones_like(ids)
    # bench makes new_tokens decode forwards after prefill and so picks new_tokens + 1 tokens; match it.
    n = new_tokens + 1
    prefills, steps, tokens = [], [], None
    for i in range(warmup + runs):
        clock = step_clock()
        t0 = time.perf_counter()
        out = hf.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1, max_new_tokens=n, min_new_tokens=n,
            pad_token_id=hf.config.eos_token_id, logits_processor=LogitsProcessorList([clock]),
        )
        if len(clock.stamps) != n:
            raise SystemExit(f"generate() called the clock {len(clock.stamps)} times, expected {n}")
        tokens = out[:, prompt_len:].numpy()
        if i >= warmup:
            prefills.append(clock.stamps[0] - t0)  # includes generate()'s own setup
            steps.extend(np.diff(clock.stamps).tolist())
    return bench.decode_result(BASELINE, batch, prompt_len, new_tokens, prefills, steps, tokens)


# --- reporting ------------------------------------------------------------------------------------------------

def ratios(results: list[dict], backend: str) -> dict:
    """tokens/s of `backend` over transformers at each batch, p50- and mean-based."""
    base = {r["batch"]: r for r in results if r["backend"] == BASELINE}
    out = {}
    for r in results:
        if r["backend"] == backend and r["batch"] in base:
            b = base[r["batch"]]
            out[str(r["batch"])] = {k: r[k] / b[k] for k in ("tokens_per_s_p50", "tokens_per_s_mean")}
    return out


def agreement(results: list[dict]) -> dict:
    """Fraction of greedy tokens each backend shares with transformers (informational: random weights make
    near-ties common, and generate() masks EOS under min_new_tokens, so exact equality is not required)."""
    base = {r["batch"]: np.asarray(r["tokens"]) for r in results if r["backend"] == BASELINE}
    out = {}
    for r in results:
        if r["backend"] != BASELINE and r["batch"] in base:
            out.setdefault(r["backend"], {})[str(r["batch"])] = float((np.asarray(r["tokens"]) == base[r["batch"]]).mean())
    return out


def markdown_table(results: list[dict]) -> str:
    base = {r["batch"]: r["tokens_per_s_mean"] for r in results if r["backend"] == BASELINE}
    lines = [
        "| backend | batch | prefill ms | p50 ms/token | p90 ms/token | p99 ms/token | tokens/s (mean) | tokens/s (p50) "
        "| speedup vs transformers (mean) | other procs' CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(results, key=lambda r: (r["batch"], list(LABELS).index(r["backend"]))):
        d = r["decode_ms_per_token"]
        speed = f"{r['tokens_per_s_mean'] / base[r['batch']]:.2f}x" if r["batch"] in base else "n/a"
        other = noisy_label(r.get("other_processes_cpu_share"))
        lines.append(
            f"| {LABELS[r['backend']]} | {r['batch']} | {r['prefill_ms_p50']:.1f} | {d['p50_ms']:.2f} | {d['p90_ms']:.2f} "
            f"| {d['p99_ms']:.2f} | {r['tokens_per_s_mean']:.1f} | {r['tokens_per_s_p50']:.1f} | {speed} | {other} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    backends = [b for b in LABELS if any(r["backend"] == b for r in results)]
    batches = sorted({r["batch"] for r in results})
    by = {(r["backend"], r["batch"]): r for r in results}
    x = np.arange(len(batches))
    width = 0.8 / len(backends)
    fig, (ax_tps, ax_lat) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, b in enumerate(backends):
        rows = [by.get((b, n)) for n in batches]
        pos = x + (i - (len(backends) - 1) / 2) * width
        tps = [r["tokens_per_s_mean"] if r else 0 for r in rows]
        bars = ax_tps.bar(pos, tps, width, label=LABELS[b])
        ax_tps.bar_label(bars, fmt="%.0f", fontsize=8)
        p50 = np.array([r["decode_ms_per_token"]["p50_ms"] if r else 0 for r in rows])
        p99 = np.array([r["decode_ms_per_token"]["p99_ms"] if r else 0 for r in rows])
        ax_lat.bar(pos, p50, width, yerr=[np.zeros_like(p50), p99 - p50], capsize=3, label=LABELS[b])
    for ax, ylabel in ((ax_tps, "tokens/s (higher is better)"), (ax_lat, "ms per decode step: bar p50, whisker p99")):
        ax.set_xticks(x, [f"batch {n}" for n in batches])
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    ax_tps.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- main -----------------------------------------------------------------------------------------------------

def run(args: argparse.Namespace, artifact_path: Path) -> dict:
    threads = torch.get_num_threads()  # one thread count for torch, ORT and transformers
    artifact = Artifact.load(artifact_path)
    vocab = artifact.config["vocab_size"]
    shape = {"prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "seed": args.seed}

    sessions = {}
    for backend in BACKENDS:
        log.info("loading %s (threads %d)", backend, threads)
        sessions[backend] = trtformer.load(artifact_path, backend=backend, threads=threads)
    log.info("building the transformers model from the reference weights")
    hf = hf_model(artifact)
    check = check_hf_weights(hf, sessions["torch"], vocab, args.seed)
    log.info("transformers vs trtformer torch logits: max abs diff %.2e (%s)", check["max_abs_diff"], "ok" if check["passed"] else "FAILED")
    if not check["passed"]:
        raise SystemExit(f"transformers logits differ from the reference by {check['max_abs_diff']:.3e}: the weights are not the same")
    torch.set_num_threads(threads)  # the torch backend set it already; transformers runs on the same pool

    def measure(backend: str, batch: int, warmup: int) -> dict:
        if backend == BASELINE:
            return measure_hf(hf, vocab, batch, warmup=warmup, runs=1, **shape)
        return bench.measure_decode(sessions[backend], batch, warmup=warmup, runs=1, **shape)

    # Rounds interleave the backends, one run each per round, so that the machine's drift over minutes
    # (a shared host, other processes) lands on every backend alike rather than on whichever ran then.
    parts: dict[tuple[str, int], list[dict]] = defaultdict(list)
    meter = Neighbours()
    for rnd in range(args.runs):
        for batch in args.batches:
            summary = []
            for backend in (*BACKENDS, BASELINE):
                with meter.watch((backend, batch)):
                    r = measure(backend, batch, args.warmup if rnd == 0 else 0)  # warm up in the first round only
                parts[(backend, batch)].append(r)
                summary.append(f"{backend} {r['decode_ms_per_token']['p50_ms']:.2f}")
            log.info("round %d/%d, batch %d: ms/token p50: %s", rnd + 1, args.runs, batch, ", ".join(summary))
    sessions.clear()
    gc.collect()

    results = []
    for (backend, batch), runs in parts.items():
        r = bench.decode_result(backend, batch, args.prompt_len, args.new_tokens,
                                [t for x in runs for t in x["prefill_s"]], [t for x in runs for t in x["decode_step_s"]], runs[-1]["tokens"])
        r["other_processes_cpu_share"] = share = meter.share((backend, batch))
        if share is not None and share > NOISY:
            log.warning("other processes took %.0f%% of the CPU while %s ran at batch %d: that row is noisy", 100 * share, backend, batch)
        results.append(r)

    report = {
        "benchmark": "gpt_decode",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"source": artifact.manifest.source, "precision": artifact.manifest.precision,
                  "ort_graph": artifact.model_path().name, "fusions": artifact.graph().fusions,
                  "config": artifact.config},
        "settings": {"batches": args.batches, **shape, "warmup": args.warmup, "runs": args.runs, "greedy": True,
                     "order": "rounds: each round runs every backend once per batch, warm-up runs in the first round only",
                     "latency": "per decode step, from one step's logits to the next (argmax and feeding included)",
                     "tokens_per_s_mean": "batch * steps / total decode time", "tokens_per_s_p50": "batch / p50 step latency",
                     "other_processes_cpu_share": "CPU other processes used during a row, as a share of all cores"},
        "machine": machine_info(threads),
        "hf_weight_check": check,
        "ratio_ort_over_transformers": ratios(results, "ort-cpu"),
        "ratio_torch_over_transformers": ratios(results, "torch"),
        "token_agreement_with_transformers": agreement(results),
        "results": [{k: v for k, v in r.items() if k not in ("tokens", "prefill_s", "decode_step_s")} for r in results],
    }
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging(log)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpt_decode-") as tmp:
        artifact_path = args.artifact
        if artifact_path is None:
            artifact_path = Path(tmp) / "artifact"
            log.info("exporting %s (fp32%s) to a temporary artifact", args.preset, ", optimized" if args.optimize else "")
            trtformer.export(args.preset, artifact_path, precision="fp32", overwrite=True, optimize=args.optimize)
        report = run(args, artifact_path)

    results = report["results"]
    table = markdown_table(results)
    m = report["machine"]
    title = (f"{report['model']['source']} fp32 greedy decode (ORT graph {report['model']['ort_graph']}), "
             f"prompt {args.prompt_len}, {args.new_tokens} new tokens; "
             f"{m['cpu']} x{m['cpu_count']}, {m['threads']} threads")
    check = report["hf_weight_check"]
    ratio_lines = [
        f"- trtformer ORT / transformers tokens/s at batch {b}: "
        f"{v['tokens_per_s_mean']:.2f}x (mean), {v['tokens_per_s_p50']:.2f}x (p50)"
        for b, v in report["ratio_ort_over_transformers"].items()
    ]
    agree = "; ".join(f"{LABELS[k]} " + ", ".join(f"batch {b} {100 * v:.0f}%" for b, v in per.items())
                      for k, per in report["token_agreement_with_transformers"].items())
    md = "\n".join([
        "# GPT decode benchmark", "", title, "", table, "",
        *ratio_lines,
        f"- same weights: transformers logits vs trtformer torch reference, "
        f"max abs diff {check['max_abs_diff']:.2e} (< {check['tolerance']:g})",
        f"- greedy tokens equal to transformers': {agree}",
        *(["- rows marked (noisy) ran while other processes took CPU from this one: rerun on an idle machine"]
          if any((r.get("other_processes_cpu_share") or 0) > NOISY for r in results) else []),
        f"- versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
        f"- command: `{report['command']}`", "",
    ])
    (args.out / "gpt_decode.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gpt_decode.md").write_text(md)
    plot(results, title, args.out / "gpt_decode.png")
    print(md)
    log.info("wrote %s/gpt_decode.{json,md,png}", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
