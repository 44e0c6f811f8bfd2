"""The `trtformer` command. The only module that prints; errors become one line with a hint and exit 2."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import warnings
from pathlib import Path

from .errors import InputError, TrtformerError

EXIT_OK, EXIT_PARITY_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error contract: one line with a hint, exit 2 (argparse prints usage lines too)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {message} (hint: see `{self.prog} --help`)\n")


def emit(text: str = "") -> None:
    """The CLI's output, also handed to the commands that live in other modules: the library itself never prints."""
    print(text, flush=True)


def int_list(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    big = next((v for v in values if not -(2**63) <= v < 2**63), None)
    if big is not None:
        raise argparse.ArgumentTypeError(f"{big} does not fit in int64")
    return values


def count(low: int):
    """An argparse type: an integer >= low."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def finite(text: str) -> float:
    """An argparse type: a finite float (nan and inf would turn sampling into noise or a crash)."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def output_file(path: str | None, what: str) -> Path | None:
    """A file the command will write, checked before any work: its directory exists, it is not a directory."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{what} {path} is a directory, not a file")
    if not p.parent.is_dir():
        raise InputError(f"{what} {path}: the directory {p.parent} does not exist", hint="create it first")
    return p


def add_backend_args(parser: argparse.ArgumentParser, names: list[str]) -> None:
    parser.add_argument("--backend", default="ort-cpu", choices=names)
    parser.add_argument("--engine", metavar="NAME", help="tensorrt: which of the artifact's engines to run, e.g. "
                        "engines/tensorrt-0123456789abcdef.engine (default: the newest that fits the toolkit and GPU)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="tensorrt and torch-cuda*: replay CUDA graphs of fixed-shape steps (GPT decode over a static KV cache, "
                        "Transformer-XL segments over a full memory, encoder shape buckets; on by default on torch-cuda-compile)")


def backend_options(args, **extra) -> dict:
    """Keyword arguments for the chosen backend; a flag meant for another backend is an input error, not ignored."""
    from .runtime import backends

    flags = {k: v for k, v in (("engine", args.engine), ("cuda_graphs", args.cuda_graphs)) if v}
    for option in flags:
        why = backends.misplaced(option, args.backend, "--" + option.replace("_", "-"))
        if why:
            raise InputError(why, hint=f"add --backend {backends.taking(option)[0]}")
    if extra.get("threads") and args.backend == "tensorrt":
        raise InputError("--threads sets CPU threads, and the tensorrt backend runs on the GPU")
    return {**flags, **{k: v for k, v in extra.items() if v}}


# ---------------------------------------------------------------------------------------------- commands


def cmd_export(args) -> int:
    from .exporter.export import export

    out = export(args.source, args.out, form=args.form, precision=args.precision, opset=args.opset,
                 overwrite=args.overwrite, reference=not args.no_reference, optimize=args.optimize,
                 quantize=args.quantize)
    print(f"exported {args.source} -> {out}")
    return EXIT_OK


def cmd_info(args) -> int:
    from .artifact import Artifact

    art = Artifact.load(args.artifact, verify=not args.no_verify)
    m = art.manifest
    if args.json:
        print(json.dumps(m.to_dict(), indent=2))
        return EXIT_OK
    cfg = m.config
    print(f"artifact   {art.path}")
    kind = " ".join(v for v in (cfg.get("variant"), cfg.get("head")) if v)
    print(f"family     {m.family}{f' ({kind})' if kind else ''}, from {m.source}")
    print(f"form       {m.form}, precision {m.precision}, opset {m.opset}, schema {m.read_schema}")
    if m.plugins:
        print("plugins    " + ", ".join(f"{p.domain}::{p.name} x{p.nodes} (plugin version {p.plugin_version})" for p in m.plugins))
    print("config     " + ", ".join(f"{k}={v}" for k, v in cfg.items() if v is not None))
    for graph in m.graphs.values():
        print_graph(graph, several=len(m.graphs) > 1)
    for link in m.links:
        print(f"link       {link.source_graph}.{link.source} -> {link.target_graph}.{link.target} ({link.kind})")
    print("files")
    for name, f in m.files.items():
        print(f"  {name:<30} {f.bytes:>12,d} B  sha256 {f.sha256[:16]}...")
    print("versions   " + ", ".join(f"{k} {v}" for k, v in m.versions.items()))
    print_engines(art, verify=not args.no_verify)
    return EXIT_OK


def print_graph(graph, several: bool) -> None:
    indent = "  " if several else ""
    if several:
        print(f"graph      {graph.name}")
    print(f"{indent}files      {graph.models}")
    if graph.fusions:
        print(f"{indent}fusions    " + ", ".join(f"{k} x{v}" for k, v in graph.fusions.items()))
    for title, tensors in (("inputs", graph.inputs), ("outputs", graph.outputs)):
        print(f"{indent}{title}")
        for t in tensors:
            role = f"  ({t.role})" if t.role else ""
            print(f"{indent}  {t.name:<22} {t.dtype:<8} [{', '.join(map(str, t.shape))}]{role}")
    if graph.state:
        first = graph.state[0]
        print(f"{indent}state      {len(graph.state)} pairs: {first.input} -> {first.output} ... ({first.kind})")
    if graph.limits:
        print(f"{indent}limits     " + ", ".join(f"{k} <= {v}" for k, v in graph.limits.items()))


def profile_text(record) -> str:
    return ", ".join(f"{k} {d['min']}:{d['opt']}:{d['max']}" for k, d in record.profiles[0]["dims"].items())


def print_engines(art, verify: bool) -> None:
    from .engines import cache

    records = art.manifest.engines
    print(f"engines    {len(records) or 'none (trtformer build ARTIFACT makes one)'}")
    for name, r in records.items():
        problem = cache.problem(art.path, name, r, art.manifest, verify=verify)
        graph = f" graph {r.graph}," if len(art.manifest.graphs) > 1 else ""
        print(f"  {name}  {r.bytes / 1e6:.1f} MB {graph} {r.flavor} {r.version}, compute capability "
              f"{', '.join(r.compute_capability)}, built {r.created}{f'  [{problem}]' if problem else ''}")
        if r.plugins:
            print("    plugin layers " + ", ".join(r.plugins))
        print("    profile " + profile_text(r))


def cmd_build(args) -> int:
    from .engines import build_engine

    result = build_engine(args.artifact, graph=args.graph_name, flavor=args.flavor, profile=args.profile,
                          compute_capability=args.compute_capability, timing_cache=args.timing_cache, rebuild=args.rebuild)
    r = result.record
    how = "reused cached" if result.cached else f"built in {result.seconds:.1f} s:"
    print(f"{how} {result.path} ({r.bytes / 1e6:.1f} MB)")
    print(f"toolkit    {r.flavor} {r.version}, compute capability {', '.join(r.compute_capability)}")
    print("profile    " + profile_text(r))
    print(f"from       {r.onnx} (sha256 {r.onnx_sha256[:16]}...)")
    return EXIT_OK


def cmd_parity(args) -> int:
    from .parity import check_parity

    options = backend_options(args, model=args.graph if args.backend.startswith("ort") else None)
    json_path = output_file(args.json, "--json")
    report = check_parity(args.artifact, backend=args.backend, decode_steps=args.decode_steps, seed=args.seed,
                          segments=args.segments, graph=args.graph_name, **options)
    print(report.table())
    if report.written is None:
        print(f"note: the report could not be recorded in {Path(args.artifact) / 'parity.json'} (see the warning above)")
    if json_path:
        json_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return EXIT_OK if report.passed else EXIT_PARITY_FAILED


def cmd_generate(args) -> int:
    from .artifact import Artifact
    from .runtime.generate import GenerationConfig, generate
    from .runtime.seq2seq import Seq2Seq, generate_seq2seq, is_seq2seq
    from .runtime.session import Session
    from .runtime.tokenizer import load_tokenizer

    artifact = Artifact.load(args.artifact)
    seq2seq = is_seq2seq(artifact)  # an encoder-decoder: the prompt is the encoder's input
    runner = (Seq2Seq if seq2seq else Session).open(artifact, backend=args.backend, **backend_options(args))
    tokenizer = None
    if args.prompt is not None:
        tokenizer = load_tokenizer(artifact.tokenizer_dir)
        prompt_ids = tokenizer.encode(args.prompt).ids
    elif args.prompt_ids is not None:
        prompt_ids = args.prompt_ids
    else:
        raise InputError("give a prompt with --prompt-ids 1,2,3 or --prompt TEXT")
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, seed=args.seed, eos_token_id=args.eos_token_id,
                           ignore_eos=args.ignore_eos, num_beams=args.num_beams, length_penalty=args.length_penalty,
                           early_stopping={"true": True, "false": False}.get(args.early_stopping, args.early_stopping))
    result = (generate_seq2seq if seq2seq else generate)(runner, [prompt_ids], cfg)
    new = result.tokens[0]
    print(f"{'source' if seq2seq else 'prompt'} ids  {','.join(map(str, prompt_ids))}")
    print(f"new ids     {','.join(map(str, new))}{'  (stopped at eos)' if result.finished[0] else ''}")
    if tokenizer is not None:
        print(f"text        {tokenizer.decode(new if seq2seq else prompt_ids + new)}")
    decode = result.step_seconds[1:]
    if decode:
        first = "encoder + first step" if seq2seq else "prefill"
        print(f"speed       {first} {result.step_seconds[0] * 1e3:.1f} ms, decode {1e3 * sum(decode) / len(decode):.2f} ms/token"
              f"{f' ({cfg.num_beams} beams)' if cfg.num_beams > 1 else ''} on {runner.name}")
    return EXIT_OK


def read_id_rows(path: str) -> list[list[int]]:
    """Token ids from a file: .npy (2-D integer array), .json (list of lists), or text with one sequence per
    line, ids separated by commas or spaces."""
    import numpy as np

    from .runtime.ids import id_rows

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{path} does not exist" if not p.exists() else f"{path} is not a file")
    try:
        if p.suffix == ".npy":
            data = np.load(p, allow_pickle=False)
            data = data[None, :] if data.ndim == 1 else data
        elif p.suffix == ".json":
            data = json.loads(p.read_text())
        else:
            data = [[int(t) for t in line.replace(",", " ").split()] for line in p.read_text().splitlines() if line.strip()]
    except (ValueError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read token ids from {path}: {str(exc) or type(exc).__name__}") from exc
    if isinstance(data, list) and data and not isinstance(data[0], list):
        data = [data]  # one sequence written as a flat list
    return id_rows(path, data)


def cmd_encode(args) -> int:
    import numpy as np

    from .runtime.encode import encode
    from .runtime.session import Session
    from .runtime.tokenizer import load_tokenizer

    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; it must be a directory for one .npy per output")
    session = Session.open(args.artifact, backend=args.backend, **backend_options(args))
    types = None
    if args.text:
        if args.text_pair and len(args.text_pair) != len(args.text):
            raise InputError(f"--text-pair given {len(args.text_pair)} times, --text {len(args.text)} times; they pair up")
        tokenizer = load_tokenizer(session.artifact.tokenizer_dir, "--input-ids FILE")
        encodings = [tokenizer.encode(t, *([args.text_pair[i]] if args.text_pair else [])) for i, t in enumerate(args.text)]
        rows, types = [e.ids for e in encodings], [e.type_ids for e in encodings]
        if session.graph.role_input("token-types") is None:
            types = None
    elif args.input_ids:
        rows = read_id_rows(args.input_ids)
        types = read_id_rows(args.token_type_ids) if args.token_type_ids else None
    else:
        raise InputError("give token ids with --input-ids FILE or text with --text")
    glob = None
    if args.global_tokens is not None:
        from .runtime.encode import global_mask_rows

        text = args.global_tokens.strip()
        listed = text.replace(",", "").replace(" ", "").replace("-", "")
        positions = int_list(text) if listed.isdigit() and not Path(text).is_file() else read_id_rows(text)
        glob = global_mask_rows(rows, positions)
    result = encode(session, rows, types, batch_size=args.batch_size, global_attention_mask=glob)
    if args.out:
        out.mkdir(parents=True, exist_ok=True)
        for name, array in {**result.outputs, "attention_mask": result.attention_mask}.items():
            np.save(out / f"{name}.npy", array)
        print(f"wrote {', '.join(sorted(result.outputs))} and attention_mask as .npy to {out}")
    for name, array in result.outputs.items():
        line = f"{name:<24} {str(list(array.shape)):<18} {array.dtype}"
        if name.endswith("logits") and array.ndim >= 2:
            line += f"  argmax {array.argmax(-1).tolist() if array.ndim == 2 else '(per token, see .npy)'}"
        print(line)
    return EXIT_OK


def read_token_stream(path: str) -> list[int]:
    """One long sequence from a token file (any layout read_id_rows takes; lines follow each other)."""
    return [t for row in read_id_rows(path) for t in row]


def cmd_stream(args) -> int:
    from .runtime.session import Session
    from .runtime.stream import log_likelihood

    tokens = read_token_stream(args.tokens)
    session = Session.open(args.artifact, backend=args.backend, **backend_options(args))
    result = log_likelihood(session, tokens, args.seg_len)
    print(f"tokens      {result.tokens} ({result.scored} scored: each given the ones before it)")
    print(f"segments    {result.segments} of up to {result.segment_length} tokens, memory carried on {session.name}")
    print(f"nll         {result.nll:.4f} nats/token")
    print(f"perplexity  {result.perplexity:.2f}")
    print(f"speed       {result.ms_per_segment:.2f} ms/segment")
    return EXIT_OK


def cmd_bench(args) -> int:
    from . import bench
    from .runtime.session import Session

    json_path = output_file(args.json, "--json")
    session = Session.open(args.artifact, backend=args.backend, **backend_options(args, threads=args.threads))
    if not session.has_state:
        raise InputError("bench measures decoding; this artifact has no KV cache")
    rows = [bench.measure_decode(session, batch=b, prompt_len=args.prompt_len, new_tokens=args.new_tokens, warmup=args.warmup, runs=args.runs)
            for b in args.batch]
    print(f"{'backend':<10} {'batch':>5} {'prefill ms':>10} {'p50 ms/tok':>10} {'p90':>8} {'p99':>8} {'tokens/s':>10}")  # tokens/s from p50
    for r in rows:
        d = r["decode_ms_per_token"]
        print(f"{r['backend']:<10} {r['batch']:>5} {r['prefill_ms_p50']:>10.2f} {d['p50_ms']:>10.2f} {d['p90_ms']:>8.2f} {d['p99_ms']:>8.2f} {r['tokens_per_s_p50']:>10.1f}")
    if json_path:
        json_path.write_text(json.dumps(rows, indent=2) + "\n")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from .runtime.backends import names as backend_names
    from .trt.flavors import FLAVOR_CHOICES

    backends = backend_names()

    p = Parser(prog="trtformer", description="Export transformers to ONNX / ONNX Runtime / TensorRT and prove parity with PyTorch.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress and library details")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    e = sub.add_parser("export", help="export a checkpoint directory or preset to an artifact directory")
    e.add_argument("source", help="HF checkpoint directory or a preset name (tiny-gpt2, tiny-bert, ...; see README)")
    e.add_argument("-o", "--out", required=True, help="artifact directory to write")
    e.add_argument("--form", default="portable", choices=["portable", "plugin"])
    e.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    e.add_argument("--opset", type=int, default=20)
    e.add_argument("--overwrite", action="store_true", help="replace an existing artifact")
    e.add_argument("--optimize", action="store_true", help="add ONNX Runtime's transformer fusions (model.opt.onnx, used by ort-* backends)")
    e.add_argument("--quantize", choices=["int8-dynamic"], help="add a dynamic int8 graph for CPU (model.int8.onnx, then used by ort-* backends)")
    e.add_argument("--no-reference", action="store_true", help="do not store the torch reference weights (parity then needs them elsewhere)")
    e.set_defaults(func=cmd_export)

    i = sub.add_parser("info", help="show an artifact's manifest")
    i.add_argument("artifact")
    i.add_argument("--json", action="store_true", help="print the raw manifest")
    i.add_argument("--no-verify", action="store_true", help="skip the checksum verification")
    i.set_defaults(func=cmd_info)

    bu = sub.add_parser("build", help="build a TensorRT / TensorRT-RTX engine from an artifact's ONNX into ARTIFACT/engines/")
    bu.add_argument("artifact", help="artifact directory; the engine goes to ARTIFACT/engines/ and into its manifest")
    bu.add_argument("--flavor", default="auto", choices=FLAVOR_CHOICES,
                    help="auto: full TensorRT where it is installed and a GPU is visible, else TensorRT-RTX")
    bu.add_argument("--profile", nargs="+", action="extend", metavar="NAME=MIN:OPT:MAX",
                    help="override one dim's range (or NAME=N to fix it), e.g. batch=1:4:32 past=0:256:1023")
    bu.add_argument("--compute-capability", nargs="+", action="extend", metavar="CC",
                    help="TensorRT-RTX targets such as 8.6 12.0, or current (default: all it knows but 7.5)")
    bu.add_argument("--timing-cache", type=Path, metavar="PATH", help="read and update this timing cache (full TensorRT)")
    bu.add_argument("--rebuild", action="store_true", help="build even when an engine with the same inputs is cached")
    bu.add_argument("--graph-name", metavar="NAME", help="which graph of a several-graph artifact (default: its only one)")
    bu.set_defaults(func=cmd_build)

    pa = sub.add_parser("parity", help="compare a backend with the torch reference")
    pa.add_argument("artifact")
    add_backend_args(pa, backends)
    pa.add_argument("--graph", default="default", choices=["default", "plain", "optimized", "int8"],
                    help="which ONNX graph of the artifact an ort-* backend runs (default: int8, else optimized, else plain)")
    pa.add_argument("--graph-name", metavar="NAME", help="which graph of a several-graph artifact (default: its only one)")
    pa.add_argument("--decode-steps", type=count(1), default=16)
    pa.add_argument("--segments", type=count(2), default=8, help="consecutive segments with memory carried (Transformer-XL)")
    pa.add_argument("--seed", type=int, default=0)
    pa.add_argument("--json", help="also write the report here (it always goes to ARTIFACT/parity.json)")
    pa.set_defaults(func=cmd_parity)

    g = sub.add_parser("generate", help="generate tokens with the KV cache carried on the backend (decoders; "
                                        "encoder-decoders take the prompt as the source)")
    g.add_argument("artifact")
    g.add_argument("--prompt-ids", type=int_list)
    g.add_argument("--prompt", help="text, encoded with the tokenizer kept in the artifact")
    g.add_argument("--max-new-tokens", type=count(1), default=20)
    g.add_argument("--temperature", type=finite, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=count(0), default=0)
    g.add_argument("--top-p", type=finite, default=1.0)
    g.add_argument("--seed", type=int)
    g.add_argument("--eos-token-id", type=int, help="stop token (default: the model's)")
    g.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens tokens")
    g.add_argument("--num-beams", type=count(1), default=1, help="beam search with this many beams (encoder-decoders)")
    g.add_argument("--length-penalty", type=finite, default=1.0,
                   help="beam search: a finished beam's log-probability is divided by its length ** this")
    g.add_argument("--early-stopping", choices=["true", "false", "never"], default="false",
                   help="beam search: stop once --num-beams beams finished (true), when no running beam can beat them "
                        "at its current length (false) or at its longest (never)")
    add_backend_args(g, backends)
    g.set_defaults(func=cmd_generate)

    en = sub.add_parser("encode", help="run an encoder (BERT family, Longformer) over token ids or text")
    en.add_argument("artifact")
    en.add_argument("--input-ids", help="token ids: .npy, .json (list of lists) or text with one sequence per line")
    en.add_argument("--token-type-ids", help="segment ids in the same layout as --input-ids")
    en.add_argument("--text", action="append", help="text, encoded with the artifact's tokenizer (repeatable)")
    en.add_argument("--text-pair", action="append", help="second segment for each --text (NSP, QA)")
    en.add_argument("--global-tokens", metavar="POSITIONS|FILE",
                    help="Longformer's global tokens: positions for every sequence (0,5), or a file with one line of "
                         "positions per sequence (default: the head's, e.g. the first token for classification)")
    en.add_argument("--batch-size", type=count(1), default=32)
    en.add_argument("--out", help="directory for one .npy per output (default: print shapes only)")
    add_backend_args(en, backends)
    en.set_defaults(func=cmd_encode)

    st = sub.add_parser("stream", help="log-likelihood and perplexity of a long sequence, segment by segment (Transformer-XL)")
    st.add_argument("artifact")
    st.add_argument("--tokens", required=True, help="token ids: .npy, .json or text (lines are one sequence, in order)")
    st.add_argument("--seg-len", type=count(1), help="tokens per segment (default: the model's memory length)")
    add_backend_args(st, backends)
    st.set_defaults(func=cmd_stream)

    b = sub.add_parser("bench", help="decode latency per token and tokens/s")
    b.add_argument("artifact")
    add_backend_args(b, backends)
    b.add_argument("--batch", type=count(1), nargs="+", default=[1, 8])
    b.add_argument("--prompt-len", type=count(1), default=32)
    b.add_argument("--new-tokens", type=count(1), default=64)
    b.add_argument("--warmup", type=count(0), default=1)
    b.add_argument("--runs", type=count(1), default=3)
    b.add_argument("--threads", type=count(1))
    b.add_argument("--json")
    b.set_defaults(func=cmd_bench)

    # Commands whose code lives in their own modules: each module's add_commands(sub, add_backend_args, emit) adds its
    # subparsers and sets their func (the module imports what it needs inside func, so --help stays fast).
    for module in EXTENSION_COMMANDS:
        importlib.import_module(module).add_commands(sub, add_backend_args, emit)
    return p


EXTENSION_COMMANDS: tuple[str, ...] = ("trtformer.serve.commands", "trtformer.doctor")


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
