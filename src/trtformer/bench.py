"""Latency measurement for sessions: per-token decode latency and throughput, and plain forward latency.

Only numpy and the Session API are used, so it measures any backend the same way (torch is never imported
here). Everything a decode loop needs to know comes from the manifest: the state pairs give the cached
dim, the input specs give the shapes of masks, `vocab_size` bounds the random prompt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

import numpy as np

from .artifact import shapes
from .artifact.examples import example_feeds
from .errors import InputError

log = logging.getLogger(__name__)


def latency_stats(samples_seconds: list[float]) -> dict:
    """Count, mean and percentiles (linear interpolation) of latencies given in seconds, reported in ms."""
    if not samples_seconds:
        raise ValueError("no latency samples")
    ms = np.asarray(samples_seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "count": int(ms.size),
        "mean_ms": float(ms.mean()),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
    }


def prompt_ids(vocab_size: int, batch: int, prompt_len: int, seed: int = 0) -> np.ndarray:
    """The random prompt measure_decode uses, int64 [batch, prompt_len]; public so baselines can reuse it."""
    return np.random.default_rng(seed).integers(0, vocab_size, (batch, prompt_len), dtype=np.int64)


def _ids(session):
    """The token-id input a decode loop feeds its own argmax back into."""
    ids = session.graph.role_input("ids")
    if ids is None:
        raise InputError(f"decoding needs a token-id input; the model has {session.input_names}")
    return ids


def _vocab_size(session) -> int:
    vocab = session.config.get("vocab_size")
    if vocab is None:  # fall back on the declared id range
        rng = _ids(session).value_range
        if rng is None:
            raise InputError("the model declares neither config.vocab_size nor a value range for its token ids")
        vocab = rng[1] + 1
    return int(vocab)


def _decode_feeds(session, ids: np.ndarray, state, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The token ids plus every other stateless input from the example generator, without padding: masks all
    ones. Shapes such as [batch, past + seq] are resolved with the state's sizes, so the loop needs no knowledge
    of the family."""
    sizes = dict(state.sizes) if state is not None else session.empty_state_sizes()  # prefill: caches start empty
    name = _ids(session).name
    shapes.bind(session.inputs[name].shape, ids.shape, sizes)
    return example_feeds(session.graph, sizes, rng, names=session.stateless_inputs, given={name: ids})


def _decode_once(session, prompt: np.ndarray, new_tokens: int) -> tuple[float, list[float], np.ndarray]:
    """One prefill and `new_tokens` greedy steps: (prefill seconds, per-step seconds, tokens [batch, new_tokens + 1])."""
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    out, state = session.step(_decode_feeds(session, prompt, None, rng), None, fetch=["logits"])
    prefill = time.perf_counter() - t0
    tokens = [out["logits"][:, -1].argmax(-1)]
    steps = []
    for _ in range(new_tokens):
        # Timed from logits-in-hand to next logits-in-hand (argmax and feeds included), which is what a
        # per-call timestamp inside transformers' generate() measures too.
        t0 = time.perf_counter()
        ids = tokens[-1][:, None].astype(np.int64)
        out, state = session.step(_decode_feeds(session, ids, state, rng), state, fetch=["logits"])
        tokens.append(out["logits"][:, -1].argmax(-1))
        steps.append(time.perf_counter() - t0)
    return prefill, steps, np.stack(tokens, axis=1)


def measure_decode(session, batch: int, prompt_len: int, new_tokens: int, warmup: int = 1, runs: int = 3, seed: int = 0) -> dict:
    """Greedy decoding on a random prompt: prefill latency, per-token decode latency and tokens/s.

    Each run is one prefill plus `new_tokens` decode steps; the first `warmup` runs are discarded. The
    per-token stats pool every decode step of every measured run; see decode_result for the keys.
    """
    if not session.has_state:
        raise InputError("measure_decode needs a model with state (a KV cache); use measure_forward")
    _ids(session)
    if min(batch, prompt_len, new_tokens, runs) < 1 or warmup < 0:
        raise InputError(f"batch, prompt_len, new_tokens and runs must be >= 1 and warmup >= 0; got {batch}, {prompt_len}, "
                         f"{new_tokens}, {runs} and {warmup}")
    prompt = prompt_ids(_vocab_size(session), batch, prompt_len, seed)
    prefills, steps, tokens = [], [], None
    for i in range(warmup + runs):
        prefill, run_steps, tokens = _decode_once(session, prompt, new_tokens)
        if i >= warmup:
            prefills.append(prefill)
            steps.extend(run_steps)
        log.debug("%s batch %d run %d: prefill %.1f ms, decode %.2f ms/token", session.name, batch, i,
                  prefill * 1e3, 1e3 * sum(run_steps) / len(run_steps))
    return decode_result(session.name, batch, prompt_len, new_tokens, prefills, steps, tokens)


def decode_result(backend: str, batch: int, prompt_len: int, new_tokens: int, prefill_s: list[float],
                  decode_step_s: list[float], tokens) -> dict:
    """The measure_decode result from raw samples; public so that runs measured apart (interleaved with
    other backends, or by another library) can be pooled and reported the same way.

    tokens_per_s_p50 = batch / p50 step latency (typical speed); tokens_per_s_mean = batch * steps / total
    decode time (what a user waits). `tokens` [batch, new_tokens + 1] are the greedy tokens of the last
    run, the one chosen after prefill first, so backends can be compared for agreement. The raw samples
    stay in `prefill_s` and `decode_step_s`.
    """
    per_token = latency_stats(decode_step_s)
    return {
        "backend": backend,
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "runs": len(prefill_s),
        "prefill_ms_p50": latency_stats(prefill_s)["p50_ms"],
        "decode_ms_per_token": per_token,
        "tokens_per_s_p50": batch * 1e3 / per_token["p50_ms"],
        "tokens_per_s_mean": batch * 1e3 / per_token["mean_ms"],
        "tokens": np.asarray(tokens).tolist(),
        "prefill_s": list(prefill_s),
        "decode_step_s": list(decode_step_s),
    }


def measure_forward(session, feeds: Mapping[str, np.ndarray], warmup: int = 1, runs: int = 10) -> dict:
    """Latency of session.run(feeds) for stateless models (or a stateful one given its state as numpy)."""
    if runs < 1:
        raise InputError(f"runs must be >= 1, got {runs}")
    samples = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        session.run(feeds)
        if i >= warmup:
            samples.append(time.perf_counter() - t0)
    return {"backend": session.name, "warmup": warmup, "runs": runs, "latency": latency_stats(samples)}


def measure_segments(session, batch: int, seg: int, warmup: int = 4, runs: int = 10, seed: int = 0) -> dict:
    """Per-segment latency of a model with segment memory (Transformer-XL) at steady state: segments are fed until the
    memory stops growing, then `warmup` more (a backend with CUDA graphs captures in those), then `runs` timed ones, so
    every timed segment attends over a full memory."""
    from .runtime.stream import Stream

    if runs < 1:
        raise InputError(f"runs must be >= 1, got {runs}")
    stream = Stream(session, batch)
    ids = prompt_ids(_vocab_size(session), batch, seg, seed)
    fill = -(-(stream.memory_limit or seg) // seg)  # segments until the memory is full
    samples = []
    for i in range(fill + warmup + runs):
        t0 = time.perf_counter()
        stream.feed(ids)
        if i >= fill + warmup:
            samples.append(time.perf_counter() - t0)
    return {"backend": session.name, "batch": batch, "seg": seg, "memory": stream.memory_length, "warmup": warmup,
            "runs": runs, "latency": latency_stats(samples)}
