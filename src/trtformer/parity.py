"""Parity: any backend against the torch reference, on generated cases.

Cases cover several batch sizes and lengths with left padding (full forwards), and for models with state,
incremental decoding carried over many steps compared with full recomputation at every step. Each output
gets max abs, max rel, cosine and pass/fail against tolerances that depend on the artifact's precision.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .runtime import shapes
from .runtime.artifact import write_json_atomic
from .runtime.session import Session

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


@dataclass
class Comparison:
    case: str
    output: str
    shape: list[int]
    max_abs: float
    max_rel: float
    cosine: float
    passed: bool


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


@dataclass
class ParityReport:
    artifact: str
    backend: str
    precision: str
    tolerance: Tolerance
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.comparisons) and all(c.passed for c in self.comparisons)

    def to_dict(self) -> dict:
        return {
            "artifact": self.artifact,
            "backend": self.backend,
            "precision": self.precision,
            "tolerance": asdict(self.tolerance),
            "passed": self.passed,
            "comparisons": [asdict(c) for c in self.comparisons],
        }

    def table(self) -> str:
        rows = [f"parity of {self.backend} vs torch reference ({self.precision}; atol {self.tolerance.atol}, rtol {self.tolerance.rtol}, cosine >= {self.tolerance.min_cosine})"]
        rows.append(f"{'case':<28} {'output':<18} {'max abs':>10} {'max rel':>10} {'cosine':>10}  result")
        for c in self.comparisons:
            rows.append(f"{c.case:<28} {c.output:<18} {c.max_abs:>10.2e} {c.max_rel:>10.2e} {c.cosine:>10.6f}  {'pass' if c.passed else 'FAIL'}")
        n_fail = sum(not c.passed for c in self.comparisons)
        rows.append(f"{len(self.comparisons) - n_fail} passed, {n_fail} failed")
        return "\n".join(rows)


# ---------------------------------------------------------------------------------------------- cases


def padded_feeds(session: Session, batch: int, seq: int, pad: bool, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random stateless inputs; with pad=True each row but the first is left-padded by a random amount."""
    sizes = {"batch": batch, "seq": seq, "past": 0, "choices": 2}
    feeds = {}
    for name in session.stateless_inputs:
        spec = session.inputs[name]
        shape = shapes.resolve_shape(spec["shape"], sizes)
        if name == "attention_mask":
            mask = np.ones(shape, np.int64)
            if pad:
                for row in range(1, batch):
                    mask[row, ..., : rng.integers(1, seq)] = 0
            feeds[name] = mask
        elif name == "mc_token_ids":
            feeds[name] = rng.integers(0, seq, shape).astype(np.int64)
        else:
            lo, hi = spec.get("value_range") or (0, 1)
            feeds[name] = rng.integers(lo, hi + 1, shape).astype(np.int64)
    return feeds


def valid_positions(session: Session, name: str, array: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
    """Where `name`'s values belong to real tokens: the sequence axis of logits and of state outputs."""
    if mask is None or mask.ndim != 2:
        return None
    if name in session.output_to_state:  # [batch, heads, past + seq, head_dim]
        return mask[:, None, -array.shape[2]:, None].astype(bool)
    if array.ndim == 3:  # [batch, seq, vocab]
        return mask[:, -array.shape[1]:, None].astype(bool)
    return None


def compare_outputs(session, case, got: dict, want: dict, tol, mask) -> list[Comparison]:
    return [compare(case, n, got[n], want[n], tol, valid_positions(session, n, got[n], mask)) for n in got]


def full_forward_cases(session: Session, reference: Session, tol: Tolerance, rng) -> list[Comparison]:
    limit = min(v for v in [*session.artifact.limits.values(), 64])
    out = []
    for batch, seq, pad in [(1, 1, False), (1, min(17, limit), False), (3, min(9, limit), True), (4, min(33, limit), True)]:
        feeds = padded_feeds(session, batch, seq, pad, rng)
        case = f"forward b{batch} s{seq}{' padded' if pad else ''}"
        if session.has_state:
            got, state = session.step(feeds)
            want, ref_state = reference.step(feeds)
            got.update(named_state(session, state))
            want.update(named_state(reference, ref_state))
        else:
            got, want = session.run(feeds), reference.run(feeds)
        out += compare_outputs(session, case, got, want, tol, feeds.get("attention_mask"))
    return out


def named_state(session: Session, state) -> dict[str, np.ndarray]:
    """A state's arrays under their output names (present.*), as a forward returns them."""
    return {session.state_pairs[n]["output"]: a for n, a in session.state_to_numpy(state).items()}


def decode_cases(session: Session, reference: Session, tol: Tolerance, rng, steps: int) -> list[Comparison]:
    """Prefill, then `steps` single-token steps with the state carried on the backend; each step's logits and
    the final present states are compared with the reference recomputing the whole sequence at once."""
    limit = session.artifact.limits.get("past + seq", 10**9)
    batch, prompt = 2, 5
    steps = min(steps, limit - prompt)
    total = prompt + steps
    full = padded_feeds(session, batch, total, False, rng)
    full["attention_mask"][1, :3] = 0  # row 1 left-padded
    ids, mask = full["input_ids"], full["attention_mask"]
    out = []
    got, state = session.step({"input_ids": ids[:, :prompt], "attention_mask": mask[:, :prompt]})
    logits = [got["logits"]]
    for t in range(prompt, total):
        got, state = session.step({"input_ids": ids[:, t : t + 1], "attention_mask": mask[:, : t + 1]}, state)
        logits.append(got["logits"])
    want, ref_state = reference.step(full)
    want.update(named_state(reference, ref_state))
    got = {"logits": np.concatenate(logits, axis=1), **named_state(session, state)}
    out += compare_outputs(session, f"decode {steps} steps", got, want, tol, mask)
    per_step = [compare(f"decode step {i}", "logits", logits[i][:, -1], want["logits"][:, prompt - 1 + i], tol) for i in range(len(logits))]
    worst = max(per_step, key=lambda c: c.max_abs)
    out.append(Comparison(f"decode worst step ({per_step.index(worst)})", "logits", worst.shape, worst.max_abs, worst.max_rel, worst.cosine, all(c.passed for c in per_step)))
    return out


def check_parity(artifact: str | Path, backend: str = "ort-cpu", decode_steps: int = 16, seed: int = 0, write: bool = True, **backend_options) -> ParityReport:
    """Compare `backend` with the torch reference on generated cases; record the report in parity.json."""
    session = Session.open(artifact, backend=backend, **backend_options)
    reference = Session.open(artifact, backend="torch", verify=False)
    precision = session.artifact.manifest["precision"]
    tol = TOLERANCES[precision]
    report = ParityReport(str(artifact), backend, precision, tol)
    rng = np.random.default_rng(seed)
    log.info("parity: full forwards on %s", backend)
    report.comparisons += full_forward_cases(session, reference, tol, rng)
    if session.has_state:
        log.info("parity: %d decode steps with state on %s", decode_steps, backend)
        report.comparisons += decode_cases(session, reference, tol, rng, decode_steps)
    if write:
        path = Path(artifact) / "parity.json"
        try:
            import json

            existing = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:
            existing = {}
        existing[backend] = report.to_dict()
        write_json_atomic(path, existing)
    return report
