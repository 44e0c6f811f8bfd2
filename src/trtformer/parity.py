"""Parity: any backend against the torch reference, on generated cases.

Cases cover several batch sizes and lengths with padding (full forwards; global tokens and sequences up to 1000
tokens for sliding-window models), and for models with state, incremental decoding carried over many steps
compared with full recomputation at every step (KV cache), or many consecutive segments with the memory carried
on both sides (Transformer-XL). Each output gets max abs, max rel, cosine and pass/fail against tolerances that
depend on the artifact's precision.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .artifact import Artifact, shapes, write_json_atomic
from .artifact.examples import example_feeds, example_sizes
from .artifact.store import manifest_lock
from .errors import InputError
from .runtime.generate import context_limit
from .runtime.seq2seq import Seq2Seq, is_seq2seq
from .runtime.session import Session
from .runtime.stream import Stream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    min_cosine: float
    # Half precision rounds every intermediate to ~3 significant digits, so its absolute error grows with
    # the size of the values: atol is then relative to the reference's peak magnitude (when above 1).
    atol_scales_with_peak: bool = False

    def effective_atol(self, ref: np.ndarray) -> float:
        if self.atol_scales_with_peak and ref.size:
            return self.atol * max(1.0, float(np.abs(ref).max()))
        return self.atol


# Compared with the fp32 reference; fp16/bf16 graphs keep LayerNorm, softmax and logits in fp32.
TOLERANCES = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3, min_cosine=0.99999),
    "fp16": Tolerance(atol=5e-3, rtol=1e-2, min_cosine=0.999, atol_scales_with_peak=True),
    "bf16": Tolerance(atol=4e-2, rtol=5e-2, min_cosine=0.995, atol_scales_with_peak=True),
}


@dataclass(frozen=True)
class Agreement:
    """How quantised graphs are judged: they round every weight, so atol means nothing; what must hold is
    that hidden states point the same way (cosine) and that predictions agree (argmax, or the sign of a
    per-token binary logit), pooled over all generated cases."""

    min_cosine: float = 0.99
    min_agreement: float = 0.99


AGREEMENT = Agreement()


@dataclass
class Comparison:
    case: str
    output: str
    shape: list[int]
    max_abs: float
    max_rel: float
    cosine: float
    passed: bool | None  # None: informational; the pooled row of the same output decides
    criterion: str = "tolerance"  # tolerance | cosine | argmax | sign
    agreement: float | None = None  # fraction of predictions that agree (argmax, sign)
    samples: int | None = None  # predictions compared
    growth: float | None = None  # error of the last segments over the first (segment cases)


def compare(case: str, name: str, got: np.ndarray, ref: np.ndarray, tol: Tolerance, valid: np.ndarray | None = None) -> Comparison:
    """Compare where `valid` (broadcast to the shape) is true: outputs at padding positions mean nothing."""
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    shape = list(got.shape)
    if got.shape != ref.shape:
        return Comparison(case, name, shape, float("inf"), float("inf"), 0.0, False)
    if valid is not None:
        keep = np.broadcast_to(valid, got.shape)
        got, ref = got[keep], ref[keep]
    if got.size == 0:
        return Comparison(case, name, shape, 0.0, 0.0, 1.0, True)
    diff = np.abs(got - ref)
    max_rel = float((diff / np.maximum(np.abs(ref), 1e-6)).max())
    denom = np.linalg.norm(got) * np.linalg.norm(ref)
    cosine = float((got * ref).sum() / denom) if denom > 0 else float(np.array_equal(got, ref))
    finite = bool(np.isfinite(got).all())
    within = bool((diff <= tol.effective_atol(ref) + tol.rtol * np.abs(ref)).all())
    return Comparison(case, name, shape, float(diff.max()), max_rel, cosine, finite and within and cosine >= tol.min_cosine)


def agreement_criterion(name: str, spec_shape: list) -> str:
    """cosine for hidden states, sign for a per-token binary logit ([batch, seq]: ELECTRA's discriminator),
    argmax over the last axis for other logits (classes, vocabulary, or positions for start/end logits)."""
    if not name.endswith("logits"):
        return "cosine"
    if name == "logits" and list(spec_shape) == ["batch", "seq"]:
        return "sign"
    return "argmax"


def compare_agreement(case: str, name: str, criterion: str, got: np.ndarray, ref: np.ndarray, valid: np.ndarray | None, rule: Agreement) -> Comparison:
    base = compare(case, name, got, ref, TOLERANCES["fp32"], valid)  # for its max abs, max rel and cosine
    if criterion == "cosine":
        return Comparison(case, name, base.shape, base.max_abs, base.max_rel, base.cosine, base.cosine >= rule.min_cosine, "cosine")
    keep = np.ones(got.shape, bool) if valid is None else np.broadcast_to(valid, got.shape)
    if criterion == "sign":
        hits = ((got > 0) == (ref > 0))[keep]
    elif got.ndim == 2 and valid is not None:  # start/end logits: the argmax over real positions only
        low = np.finfo(np.float64).min
        hits = np.where(keep, got, low).argmax(-1) == np.where(keep, ref, low).argmax(-1)
    else:  # [..., classes]: one prediction per real position
        hits = (got.argmax(-1) == ref.argmax(-1))[keep.all(-1)]
    agreement = float(hits.mean()) if hits.size else 1.0
    return Comparison(case, name, base.shape, base.max_abs, base.max_rel, base.cosine, None, criterion, agreement, int(hits.size))


def pooled_agreement(comparisons: list[Comparison], rule: Agreement) -> list[Comparison]:
    """One deciding row per argmax/sign output: its agreement over every case."""
    rows = []
    for name in dict.fromkeys(c.output for c in comparisons if c.passed is None):
        mine = [c for c in comparisons if c.output == name and c.passed is None]
        n = sum(c.samples for c in mine)
        agreement = sum(c.agreement * c.samples for c in mine) / n if n else 1.0
        worst = max(mine, key=lambda c: c.max_abs)
        rows.append(Comparison(f"all {len(mine)} cases", name, [], worst.max_abs, worst.max_rel, min(c.cosine for c in mine),
                               agreement >= rule.min_agreement, mine[0].criterion, agreement, n))
    return rows


@dataclass
class ParityReport:
    artifact: str
    backend: str
    precision: str
    tolerance: Tolerance
    comparisons: list[Comparison] = field(default_factory=list)

    criterion: str = "tolerance"  # or "agreement" for quantised graphs
    graph: str = "default"
    written: str | None = None  # where the report was recorded (None: not written, or the artifact is read-only)

    @property
    def passed(self) -> bool:
        judged = [c for c in self.comparisons if c.passed is not None]
        return bool(judged) and all(c.passed for c in judged)

    def to_dict(self) -> dict:
        return {
            "artifact": self.artifact,
            "backend": self.backend,
            "precision": self.precision,
            "graph": self.graph,
            "criterion": self.criterion,
            "tolerance": asdict(self.tolerance),
            "passed": self.passed,
            "comparisons": [asdict(c) for c in self.comparisons],
        }

    def table(self) -> str:
        if self.criterion == "agreement":
            rule = f"agreement: cosine >= {AGREEMENT.min_cosine} for hidden states, argmax/sign agreement >= {AGREEMENT.min_agreement} for logits over all cases"
        else:
            rule = f"atol {self.tolerance.atol}, rtol {self.tolerance.rtol}, cosine >= {self.tolerance.min_cosine}"
        rows = [f"parity of {self.backend} ({self.graph} graph) vs torch reference ({self.precision}; {rule})"]
        rows.append(f"{'case':<28} {'output':<24} {'max abs':>10} {'max rel':>10} {'cosine':>10} {'agr|grow':>8}  result")
        for c in self.comparisons:
            agree = f"{c.agreement:>8.4f}" if c.agreement is not None else f"{c.growth:>7.2f}x" if c.growth is not None else f"{'':>8}"
            result = "info" if c.passed is None else "pass" if c.passed else "FAIL"
            rows.append(f"{c.case:<28} {c.output:<24} {c.max_abs:>10.2e} {c.max_rel:>10.2e} {c.cosine:>10.6f} {agree}  {result}")
        judged = [c for c in self.comparisons if c.passed is not None]
        n_fail = sum(not c.passed for c in judged)
        rows.append(f"{len(judged) - n_fail} passed, {n_fail} failed")
        if any(c.agreement is not None or c.growth is not None for c in self.comparisons):
            rows.append("agr|grow: share of predictions that agree (int8), or error growth over the segments (x)")
        return "\n".join(rows)


# ---------------------------------------------------------------------------------------------- cases


def padded_feeds(session: Session, batch: int, seq: int, pad: bool, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random stateless inputs from the graph's input roles; with pad=True each row but the first is padded by a
    random amount, on the side the model pads (left for decoders, right for encoders)."""
    sizes = example_sizes(session.graph, batch, seq)
    return example_feeds(session.graph, sizes, rng, names=session.stateless_inputs, pad=pad)


def valid_positions(session: Session, name: str, array: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
    """Where `name`'s values belong to real tokens, from the sequence axis of its spec (logits, hidden states,
    state outputs); None when the output has no sequence axis, or the mask is not [batch, seq]."""
    spec, ids = session.outputs[name], session.graph.role_input("ids")
    axis = session.graph.sequence_axis(spec)
    if mask is None or mask.ndim != 2 or axis is None or ids is None or spec.shape[0] != ids.shape[0]:
        return None
    valid = mask[:, -array.shape[axis]:].astype(bool)  # the last positions: new tokens come at the end
    return shapes.along_axis(valid, axis, array.ndim)


def compare_outputs(session, case, got: dict, want: dict, tol: Tolerance | Agreement, mask) -> list[Comparison]:
    out = []
    for n in got:
        valid = valid_positions(session, n, got[n], mask)
        if isinstance(tol, Agreement):
            criterion = agreement_criterion(n, list(session.outputs[n].shape))
            out.append(compare_agreement(case, n, criterion, got[n], want[n], valid, tol))
        else:
            out.append(compare(case, n, got[n], want[n], tol, valid))
    return out


FORWARD_CASES = [(1, 1, False), (1, 17, False), (3, 9, True), (4, 33, True)]
# Agreement is a rate, so quantised graphs get one more, larger case for enough predictions to count.
AGREEMENT_CASES = [*FORWARD_CASES, (16, 48, True)]
# Sliding-window models (a global_attention_mask input) get long cases too: many windows, dilated bands and global
# tokens far apart, beyond the length the graph was traced at.
LONG_CASES = [(3, 257, True), (3, 1000, True)]


def full_forward_cases(session: Session, reference: Session, tol: Tolerance | Agreement, rng) -> list[Comparison]:
    cases = AGREEMENT_CASES if isinstance(tol, Agreement) else FORWARD_CASES
    graph = session.graph
    limit = min(v for v in [*graph.limits.values(), 64])
    if graph.role_input("global-mask") is not None:
        limit = min(v for v in [*graph.limits.values(), max(s for _, s, _ in LONG_CASES)])
        cases = [*cases, *LONG_CASES]
    mask_in = graph.role_input("padding-mask")
    out = []
    for batch, seq, pad in cases:
        seq = min(seq, limit)
        pad = pad and mask_in is not None  # Transformer-XL has no padding
        feeds = padded_feeds(session, batch, seq, pad, rng)
        case = f"forward b{batch} s{seq}{' padded' if pad else ''}"
        if session.has_state:
            got, state = session.step(feeds)
            want, ref_state = reference.step(feeds)
            got.update(named_state(session, state))
            want.update(named_state(reference, ref_state))
        else:
            got, want = session.run(feeds), reference.run(feeds)
        out += compare_outputs(session, case, got, want, tol, feeds.get(mask_in.name) if mask_in else None)
    return out


def named_state(session: Session, state) -> dict[str, np.ndarray]:
    """A state's arrays under their output names (present.*), as a forward returns them."""
    return {session.state_pairs[n].output: a for n, a in session.state_to_numpy(state).items()}


def decode_cases(session: Session, reference: Session, tol: Tolerance, rng, steps: int) -> list[Comparison]:
    """Prefill, then `steps` single-token steps with the state carried on the backend; each step's logits and
    the final present states are compared with the reference recomputing the whole sequence at once."""
    limit = context_limit(session.graph) or 10**9
    batch, prompt = 2, 5
    steps = min(steps, limit - prompt)
    total = prompt + steps
    full = padded_feeds(session, batch, total, False, rng)
    ids_in, mask_in = session.graph.role_input("ids").name, session.graph.role_input("padding-mask").name
    full[mask_in][1, :3] = 0  # row 1 left-padded
    ids, mask = full[ids_in], full[mask_in]
    out = []
    got, state = session.step({ids_in: ids[:, :prompt], mask_in: mask[:, :prompt]})
    logits = [got["logits"]]
    for t in range(prompt, total):
        got, state = session.step({ids_in: ids[:, t : t + 1], mask_in: mask[:, : t + 1]}, state)
        logits.append(got["logits"])
    want, ref_state = reference.step(full)
    want.update(named_state(reference, ref_state))
    got = {"logits": np.concatenate(logits, axis=1), **named_state(session, state)}
    out += compare_outputs(session, f"decode {steps} steps", got, want, tol, mask)
    per_step = [compare(f"decode step {i}", "logits", logits[i][:, -1], want["logits"][:, prompt - 1 + i], tol) for i in range(len(logits))]
    worst = max(per_step, key=lambda c: c.max_abs)
    out.append(Comparison(f"decode worst step ({per_step.index(worst)})", "logits", worst.shape, worst.max_abs, worst.max_rel, worst.cosine, all(c.passed for c in per_step)))
    return out


# Error that moves within rounding noise between segments is no growth: up to this factor between the mean of the
# last half of the segments and the first half, or any factor while every error stays below a tenth of atol.
GROWTH_LIMIT = 4.0


def error_growth(name: str, rows: list[Comparison], tol: Tolerance, ref_peak: float) -> Comparison:
    """One row for how `name`'s error moves over the segments: the last half's mean max abs over the first half's."""
    errors = np.array([c.max_abs for c in rows])
    half = len(errors) // 2
    first, last = errors[:half].mean(), errors[-half:].mean()
    growth = float(last / first) if first > 0 else (1.0 if last == 0 else float("inf"))
    negligible = errors.max() <= 0.1 * tol.atol * (max(1.0, ref_peak) if tol.atol_scales_with_peak else 1.0)
    case = f"growth {len(rows) - half + 1}-{len(rows)} / 1-{half}"
    return Comparison(case, name, rows[-1].shape, float(errors[-1]), rows[-1].max_rel, min(c.cosine for c in rows),
                      growth <= GROWTH_LIMIT or bool(negligible), "growth", growth=growth)


def segment_cases(session: Session, reference: Session, tol: Tolerance, rng, segments: int) -> list[Comparison]:
    """`segments` consecutive segments, the memory carried on the backend and on the reference each on its own:
    every segment's head output and new memories (all layers in one row) compared, then the error's growth."""
    if segments < 2:
        raise InputError(f"the segment case needs at least 2 segments to see how the error moves, got {segments}")
    streams = Stream(session, batch=2), Stream(reference, batch=2)
    seg = min(64, (streams[0].memory_limit or 15) // 3 + 1)  # the memory fills in a few segments, then slides
    memories = [p.output for p in session.state_pairs.values()]
    label = os.path.commonprefix(memories) + "*" if len(memories) > 1 else memories[0]  # new_mems.*
    rows: dict[str, list[Comparison]] = {}
    peaks: dict[str, float] = {}
    for k in range(segments):
        ids = padded_feeds(session, 2, seg, False, rng)[streams[0].ids_name]
        case = f"segment {k + 1} ({streams[0].memory_length}+{seg} rows)"
        got, want = ({s.head: s.feed(ids), label: np.stack(list(s.memory().values()))} for s in streams)
        for name in got:
            rows.setdefault(name, []).append(compare(case, name, got[name], want[name], tol))
            peaks[name] = max(peaks.get(name, 0.0), float(np.abs(want[name]).max()))
    out = [c for k in range(segments) for name in rows for c in [rows[name][k]]]
    return out + [error_growth(name, mine, tol, peaks[name]) for name, mine in rows.items()]


def check_parity(artifact: str | Path, backend: str = "ort-cpu", decode_steps: int = 16, seed: int = 0, write: bool = True,
                 segments: int = 8, graph: str | None = None, **backend_options) -> ParityReport:
    """Compare graph `graph` (the artifact's only one by default) on `backend` with the torch reference on generated
    cases; record the report in parity.json."""
    for what, value, low in (("decode_steps", decode_steps, 1), ("segments", segments, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InputError(f"{what} must be an integer >= {low}, got {value!r}")
    art = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact)
    if graph is None and is_seq2seq(art):
        return check_seq2seq_parity(art, backend, decode_steps, seed, write, **backend_options)
    with Session.open(art, backend=backend, graph=graph, **backend_options) as session, \
            Session.open(session.artifact, backend="torch", graph=graph) as reference:
        report = _compare(session, reference, backend, decode_steps, seed, segments, backend_options.get("model", "default"))
    if write:
        key = backend if report.graph in ("reference", "engine", session.graph.variant()) else f"{backend}:{report.graph}"
        record_report(Path(session.artifact.path) / "parity.json", key if graph is None else f"{key}@{graph}", report)
    return report


def record_report(path: Path, key: str, report: ParityReport) -> None:
    """Add the report to the artifact's parity.json. An artifact it cannot write (read-only, full disk) keeps the one
    it has: the report is still returned, and the failure is logged, never raised after the whole run."""
    import json

    try:
        with manifest_lock(path.parent):  # another parity run may record its report at the same time
            try:
                existing = json.loads(path.read_text()) if path.is_file() else {}
            except (OSError, ValueError):
                existing = {}
            existing = existing if isinstance(existing, dict) else {}
            existing[key] = report.to_dict()
            write_json_atomic(path, existing)
        report.written = str(path)
    except OSError as exc:
        log.warning("the report could not be recorded in %s (%s)", path, exc.strerror or exc)


def computed_precision(session: Session) -> str:
    """The precision the backend computes at: the artifact's, or the one a torch backend was asked to run at."""
    return getattr(session.backend, "precision", None) or session.artifact.manifest.precision


def _compare(session: Session, reference: Session, backend: str, decode_steps: int, seed: int, segments: int,
             model: str) -> ParityReport:
    precision = computed_precision(session)
    graph = (session.graph.variant(model) if backend.startswith("ort") else "engine" if backend == "tensorrt" else "reference")
    quantized = graph == "int8"
    report = ParityReport(str(session.artifact.path), backend, precision, TOLERANCES[precision],
                          criterion="agreement" if quantized else "tolerance", graph=graph)  # fmt: skip
    tol = AGREEMENT if quantized else report.tolerance
    rng = np.random.default_rng(seed)
    log.info("parity: full forwards on %s (%s graph)", backend, graph)
    report.comparisons += full_forward_cases(session, reference, tol, rng)
    if quantized:
        report.comparisons += pooled_agreement(report.comparisons, tol)
    kinds = session.graph.state_kinds
    if "kv-cache" in kinds:
        log.info("parity: %d decode steps with state on %s", decode_steps, backend)
        report.comparisons += decode_cases(session, reference, tol, rng, decode_steps)
    if "memory" in kinds and not quantized:
        log.info("parity: %d segments with memory on %s", segments, backend)
        report.comparisons += segment_cases(session, reference, tol, rng, segments)
    return report


# ---------------------------------------------------------------------------------------------- encoder-decoders


def check_seq2seq_parity(artifact: Artifact, backend: str = "ort-cpu", decode_steps: int = 16, seed: int = 0,
                         write: bool = True, **backend_options) -> ParityReport:
    """Both graphs of an encoder-decoder against the torch reference: the encoder's outputs (hidden states and the
    cross-attention keys and values) on the forward cases, then decoding: the backend's encoder once and
    `decode_steps` decoder steps with the cache carried on the backend, against the reference recomputing the whole
    target at every length (one decoder call from an empty cache)."""
    with Seq2Seq.open(artifact, backend, **backend_options) as model, Seq2Seq.open(artifact, "torch") as reference:
        graph = model.decoder.graph.variant(backend_options.get("model", "default")) if backend.startswith("ort") else \
            "engine" if backend == "tensorrt" else "reference"  # fmt: skip
        quantized = graph == "int8"
        precision = computed_precision(model.decoder)
        report = ParityReport(str(artifact.path), backend, precision, TOLERANCES[precision],
                              criterion="agreement" if quantized else "tolerance", graph=graph)  # fmt: skip
        tol = AGREEMENT if quantized else report.tolerance
        rng = np.random.default_rng(seed)
        log.info("parity: encoder forwards and %d decoder steps on %s (%s graphs)", decode_steps, backend, graph)
        for batch, seq, pad in AGREEMENT_CASES if quantized else FORWARD_CASES:
            feeds = padded_feeds(model.encoder, batch, seq, pad, rng)
            got, want = model.encoder.run(feeds), reference.encoder.run(feeds)
            report.comparisons += compare_outputs(model.encoder, f"encoder b{batch} s{seq}{' padded' if pad else ''}", got, want,
                                                  tol, feeds[model.source_mask])  # fmt: skip
        report.comparisons += seq2seq_decode_cases(model, reference, tol, rng, decode_steps)
        if quantized:
            report.comparisons += pooled_agreement(report.comparisons, tol)
    if write:
        record_report(Path(artifact.path) / "parity.json", backend if graph in ("reference", "engine", model.decoder.graph.variant())
                      else f"{backend}:{graph}", report)  # fmt: skip
    return report


def seq2seq_decode_cases(model: Seq2Seq, reference: Seq2Seq, tol: Tolerance | Agreement, rng, steps: int) -> list[Comparison]:
    """Padded sources of 9 tokens (3; 16 for an agreement rate over enough predictions); each step's logits and the
    final cache of the backend's chain against the reference's whole-target recomputation."""
    steps = min(steps, context_limit(model.decoder.graph) or steps)
    batch = 16 if isinstance(tol, Agreement) else 3
    source = padded_feeds(model.encoder, batch, 9, True, rng)
    target = rng.integers(0, model.config["vocab_size"], (batch, steps)).astype(np.int64)
    target[:, 0] = model.config["decoder_start_token_id"]
    encoded, state, logits = model.encode(source[model.source_ids], source[model.source_mask]), None, []
    for t in range(steps):
        out, state = model.step(target[:, t : t + 1], encoded, state)
        logits.append(out)
    ref_encoded = reference.encode(source[reference.source_ids], source[reference.source_mask])
    want, ref_state = reference.decoder.step({reference.ids_name: target, **ref_encoded})
    got = {"logits": np.concatenate(logits, axis=1), **named_state(model.decoder, state)}
    want.update(named_state(reference.decoder, ref_state))
    case = f"decode {steps} steps"
    if isinstance(tol, Agreement):
        return [compare_agreement(case, n, agreement_criterion(n, list(model.decoder.outputs[n].shape)), got[n], want[n], None, tol)
                for n in got]  # fmt: skip
    out = [compare(case, n, got[n], want[n], tol) for n in got]
    per_step = [compare(f"decode step {i}", "logits", logits[i][:, -1], want["logits"][:, i], tol) for i in range(steps)]
    worst = max(per_step, key=lambda c: c.max_abs)
    out.append(Comparison(f"decode worst step ({per_step.index(worst)})", "logits", worst.shape, worst.max_abs, worst.max_rel,
                          worst.cosine, all(c.passed for c in per_step)))  # fmt: skip
    return out
