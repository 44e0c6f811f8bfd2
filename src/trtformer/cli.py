"""The `trtformer` command. The only module that prints; errors become one line with a hint and exit 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from .errors import InputError, TrtformerError

EXIT_OK, EXIT_PARITY_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


# ---------------------------------------------------------------------------------------------- commands


def cmd_export(args) -> int:
    from .exporter.export import export

    out = export(args.source, args.out, form=args.form, precision=args.precision, opset=args.opset,
                 overwrite=args.overwrite, reference=not args.no_reference, optimize=args.optimize)
    print(f"exported {args.source} -> {out}")
    return EXIT_OK


def cmd_info(args) -> int:
    from .runtime.artifact import Artifact

    art = Artifact.load(args.artifact, verify=not args.no_verify)
    m = art.manifest
    if args.json:
        print(json.dumps(m, indent=2))
        return EXIT_OK
    cfg = m["config"]
    print(f"artifact   {art.path}")
    print(f"family     {m['family']} ({cfg.get('variant', '')} {cfg.get('head', '')}), from {m.get('source')}")
    print(f"form       {m['form']}, precision {m['precision']}, opset {m['opset']}, graphs {m['models']}")
    if m.get("fusions"):
        print("fusions    " + ", ".join(f"{k} x{v}" for k, v in m["fusions"].items()))
    print("config     " + ", ".join(f"{k}={v}" for k, v in cfg.items() if v is not None))
    print("inputs")
    for t in m["inputs"]:
        print(f"  {t['name']:<22} {t['dtype']:<8} [{', '.join(map(str, t['shape']))}]")
    print("outputs")
    for t in m["outputs"]:
        print(f"  {t['name']:<22} {t['dtype']:<8} [{', '.join(map(str, t['shape']))}]")
    if m["state"]:
        print(f"state      {len(m['state'])} pairs: {m['state'][0]['input']} -> {m['state'][0]['output']} ... ({m['state'][0]['kind']})")
    if m.get("limits"):
        print("limits     " + ", ".join(f"{k} <= {v}" for k, v in m["limits"].items()))
    print("files")
    for name, f in m["files"].items():
        print(f"  {name:<30} {f['bytes']:>12,d} B  sha256 {f['sha256'][:16]}...")
    print("versions   " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()))
    return EXIT_OK


def cmd_parity(args) -> int:
    from .parity import check_parity

    report = check_parity(args.artifact, backend=args.backend, decode_steps=args.decode_steps, seed=args.seed)
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return EXIT_OK if report.passed else EXIT_PARITY_FAILED


def cmd_generate(args) -> int:
    from .runtime.generate import GenerationConfig, generate
    from .runtime.session import Session
    from .runtime.tokenizer import load_tokenizer

    session = Session.open(args.artifact, backend=args.backend)
    tokenizer = None
    if args.prompt is not None:
        tokenizer = load_tokenizer(session.artifact.tokenizer_dir)
        prompt_ids = tokenizer.encode(args.prompt).ids
    elif args.prompt_ids is not None:
        prompt_ids = args.prompt_ids
    else:
        raise InputError("give a prompt with --prompt-ids 1,2,3 or --prompt TEXT")
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, seed=args.seed, eos_token_id=args.eos_token_id,
                           ignore_eos=args.ignore_eos)
    result = generate(session, [prompt_ids], cfg)
    new = result.tokens[0]
    print(f"prompt ids  {','.join(map(str, prompt_ids))}")
    print(f"new ids     {','.join(map(str, new))}{'  (stopped at eos)' if result.finished[0] else ''}")
    if tokenizer is not None:
        print(f"text        {tokenizer.decode(prompt_ids + new)}")
    decode = result.step_seconds[1:]
    if decode:
        print(f"speed       prefill {result.step_seconds[0] * 1e3:.1f} ms, decode {1e3 * sum(decode) / len(decode):.2f} ms/token on {session.name}")
    return EXIT_OK


def cmd_bench(args) -> int:
    from . import bench
    from .runtime.session import Session

    session = Session.open(args.artifact, backend=args.backend, **({"threads": args.threads} if args.threads else {}))
    if not session.has_state:
        raise InputError("bench measures decoding; this artifact has no KV cache")
    rows = [bench.measure_decode(session, batch=b, prompt_len=args.prompt_len, new_tokens=args.new_tokens, warmup=args.warmup, runs=args.runs)
            for b in args.batch]
    print(f"{'backend':<10} {'batch':>5} {'prefill ms':>10} {'p50 ms/tok':>10} {'p90':>8} {'p99':>8} {'tokens/s':>10}")  # tokens/s from p50
    for r in rows:
        d = r["decode_ms_per_token"]
        print(f"{r['backend']:<10} {r['batch']:>5} {r['prefill_ms_p50']:>10.2f} {d['p50_ms']:>10.2f} {d['p90_ms']:>8.2f} {d['p99_ms']:>8.2f} {r['tokens_per_s_p50']:>10.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from .runtime.backends import names as backend_names

    p = argparse.ArgumentParser(prog="trtformer", description="Export transformers to ONNX / ONNX Runtime / TensorRT and prove parity with PyTorch.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress and library details")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("export", help="export a checkpoint directory or preset to an artifact directory")
    e.add_argument("source", help="HF checkpoint directory or preset (tiny-gpt2, tiny-openai-gpt, gpt2-small-random)")
    e.add_argument("-o", "--out", required=True, help="artifact directory to write")
    e.add_argument("--form", default="portable", choices=["portable", "plugin"])
    e.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    e.add_argument("--opset", type=int, default=20)
    e.add_argument("--overwrite", action="store_true", help="replace an existing artifact")
    e.add_argument("--optimize", action="store_true", help="add ONNX Runtime's transformer fusions (model.opt.onnx, used by ort-* backends)")
    e.add_argument("--no-reference", action="store_true", help="do not store the torch reference weights (parity then needs them elsewhere)")
    e.set_defaults(func=cmd_export)

    i = sub.add_parser("info", help="show an artifact's manifest")
    i.add_argument("artifact")
    i.add_argument("--json", action="store_true", help="print the raw manifest")
    i.add_argument("--no-verify", action="store_true", help="skip the checksum verification")
    i.set_defaults(func=cmd_info)

    pa = sub.add_parser("parity", help="compare a backend with the torch reference")
    pa.add_argument("artifact")
    pa.add_argument("--backend", default="ort-cpu", choices=backend_names())
    pa.add_argument("--decode-steps", type=int, default=16)
    pa.add_argument("--seed", type=int, default=0)
    pa.add_argument("--json", help="also write the report here (it always goes to ARTIFACT/parity.json)")
    pa.set_defaults(func=cmd_parity)

    g = sub.add_parser("generate", help="generate tokens with the KV cache carried on the backend")
    g.add_argument("artifact")
    g.add_argument("--prompt-ids", type=int_list)
    g.add_argument("--prompt", help="text, encoded with the tokenizer kept in the artifact")
    g.add_argument("--max-new-tokens", type=int, default=20)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int)
    g.add_argument("--eos-token-id", type=int, help="stop token (default: the model's)")
    g.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens tokens")
    g.add_argument("--backend", default="ort-cpu", choices=backend_names())
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("bench", help="decode latency per token and tokens/s")
    b.add_argument("artifact")
    b.add_argument("--backend", default="ort-cpu", choices=backend_names())
    b.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    b.add_argument("--prompt-len", type=int, default=32)
    b.add_argument("--new-tokens", type=int, default=64)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--runs", type=int, default=3)
    b.add_argument("--threads", type=int)
    b.add_argument("--json")
    b.set_defaults(func=cmd_bench)
    return p


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("trtformer").setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        # torch.onnx and onnxscript narrate every pass at INFO; a user wants only trtformer's progress.
        for name in ("onnxscript", "onnx_ir", "torch"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.func(args)
    except TrtformerError as exc:
        print(f"error: {exc.one_line()}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
