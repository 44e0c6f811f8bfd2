"""Encoder-decoder generation (BART, T5): the encoder once per request, then decoder steps with the self-attention
cache carried as backend state, greedy, sampling or beam search.

The artifact's manifest says how its graphs chain: each link's source (an encoder output) is the decoder input of
the same name at every step, and the decoder's padding mask is the encoder's. The encoder computes every layer's
cross-attention keys and values once; the decoder only reads them (links of kind "cache"). Sources pad on the
right; decoder rows need no padding, as each starts with the decoder start token and gains one token a step.

Greedy and sampling share runtime.generate's loop and token choice, so they behave as GPT's do. Beam search follows
transformers' (vectorised, since 4.50): 2 x num_beams candidates a step, a finished beam scored by its summed
log-probability over length ** length_penalty, the same early-stopping rules, and the best finished beam returned;
on a backend that matches the reference it gives transformers' tokens. Forced first and last tokens
(`forced_bos_token_id`, `forced_eos_token_id` of BART's config) apply as transformers applies them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifact import Artifact
from ..artifact.dtypes import dtype
from ..artifact.examples import pad_rows
from ..errors import InputError
from .generate import GenerationConfig, GenerationResult, check_prompts, context_limit, special_tokens, token_loop
from .session import Session

ENCODER, DECODER = "encoder", "decoder"


def is_seq2seq(artifact: Artifact) -> bool:
    """Whether the artifact is an encoder-decoder: graphs "encoder" and "decoder", the encoder feeding the decoder."""
    m = artifact.manifest
    return {ENCODER, DECODER} <= set(m.graphs) and any(k.source_graph == ENCODER for k in m.links_into(DECODER))


class Seq2Seq:
    """An encoder-decoder artifact on one backend: a session per graph, chained by the manifest's links."""

    def __init__(self, encoder: Session, decoder: Session):
        self.encoder, self.decoder = encoder, decoder
        self.links = encoder.artifact.manifest.links_into(DECODER)
        graph = decoder.graph
        self.ids_name = graph.role_input("ids").name
        self.mask_name = graph.role_input("padding-mask").name
        self.source_ids = encoder.graph.role_input("ids").name
        self.source_mask = encoder.graph.role_input("padding-mask").name

    @classmethod
    def open(cls, path: str | Path | Artifact, backend: str = "ort-cpu", verify: bool = True, **options) -> Seq2Seq:
        artifact = path if isinstance(path, Artifact) else Artifact.load(path, verify=verify)
        if not is_seq2seq(artifact):
            raise InputError(f"{artifact.path} is no encoder-decoder artifact (it has the graphs {', '.join(artifact.manifest.graphs)})",
                             hint="generate with a decoder artifact through runtime.generate")  # fmt: skip
        encoder = Session.open(artifact, backend, graph=ENCODER, **options)
        try:
            return cls(encoder, Session.open(artifact, backend, graph=DECODER, **options))
        except BaseException:
            encoder.close()
            raise

    def close(self) -> None:
        self.encoder.close()
        self.decoder.close()

    def __enter__(self) -> Seq2Seq:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def name(self) -> str:
        return self.decoder.name

    @property
    def config(self) -> dict:
        return self.decoder.config

    @property
    def artifact(self) -> Artifact:
        return self.decoder.artifact

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """Run the encoder once; return what every decoder step reads unchanged: the linked outputs under their
        decoder names (at the decoder's dtypes: the torch reference returns fp32 whatever the artifact's precision)
        and the source mask."""
        out = self.encoder.run({self.source_ids: input_ids, self.source_mask: attention_mask}, fetch=[k.source for k in self.links])
        feeds = {k.target: np.asarray(out[k.source], dtype(self.decoder.inputs[k.target].dtype).host) for k in self.links}
        return {**feeds, self.mask_name: attention_mask}

    def step(self, tokens: np.ndarray, encoded: dict[str, np.ndarray], state=None):
        """One decoder step: [batch, seq] tokens after the cached ones -> ([batch, seq, vocab] logits, new state)."""
        out, state = self.decoder.step({self.ids_name: tokens, **encoded}, state, fetch=["logits"])
        return out["logits"], state


@dataclass
class Seq2SeqResult(GenerationResult):
    """`prompts` are the sources; `tokens` the target tokens after the decoder start token; step_seconds[0] includes
    the encoder."""

    scores: list[float] | None = None  # beam search: each returned beam's length-penalised log-probability


def generate_seq2seq(model: Seq2Seq, sources: Sequence[Sequence[int]], cfg: GenerationConfig | None = None, **overrides) -> Seq2SeqResult:
    """Target tokens for each source: up to cfg.max_new_tokens, a row stopping at eos (beam search: its best beam)."""
    cfg = (cfg or GenerationConfig()).apply(overrides)
    sources = check_prompts(sources, "source")
    config = model.config
    eos, pad = special_tokens(cfg, config)
    limit = context_limit(model.decoder.graph)
    if limit is not None and cfg.max_new_tokens > limit:
        raise InputError(f"{cfg.max_new_tokens} new tokens exceed the decoder's {limit} positions", hint="lower --max-new-tokens")
    start = config.get("decoder_start_token_id")
    if start is None:
        raise InputError("the model's config has no decoder_start_token_id")
    t0 = time.perf_counter()
    ids, mask = pad_rows(sources, "right", pad)
    encoded = model.encode(ids, mask)
    encoder_seconds = time.perf_counter() - t0
    forced = Forced(config.get("forced_bos_token_id"), config.get("forced_eos_token_id"), cfg.max_new_tokens)
    if cfg.num_beams > 1:
        result = beam_search(model, encoded, len(sources), start, eos, pad, cfg, forced)
    else:
        state = None

        def step(previous: np.ndarray | None) -> np.ndarray:
            nonlocal state
            tokens = np.full((len(sources), 1), start, np.int64) if previous is None else previous[:, None]
            logits, state = model.step(tokens, encoded, state)
            return logits[:, -1, :]

        result = Seq2SeqResult(sources, *token_loop(step, len(sources), cfg, eos, pad, forced))
    result.prompts = sources
    result.step_seconds[0] += encoder_seconds
    return result


@dataclass(frozen=True)
class Forced:
    """transformers' forced BOS (the first new token) and forced EOS (the token at the length limit), on scores."""

    bos: int | None
    eos: int | None
    max_new_tokens: int

    def __call__(self, scores: np.ndarray, i: int) -> np.ndarray:
        token = self.bos if i == 0 else self.eos if i == self.max_new_tokens - 1 else None
        if token is None:
            return scores
        out = np.full_like(scores, -np.inf)
        out[:, token] = 0
        return out


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest of each row, largest first."""
    part = np.argpartition(-scores, k - 1, axis=-1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, -1), axis=-1, kind="stable")
    return np.take_along_axis(part, order, -1)


def beam_search(model: Seq2Seq, encoded: dict, batch: int, start: int, eos: int | None, pad: int, cfg: GenerationConfig,
                forced: Forced) -> Seq2SeqResult:
    """transformers' beam search (generation/utils.py `_beam_search`) on [batch, beams] arrays, in float32 as it runs.

    A step scores 2 x beams continuations of every row; those ending in eos (or at the length limit) may enter the
    row's finished beams with their score divided by length ** length_penalty, the best others run on. The cache's
    rows follow the beams they continue."""
    K, lp, stop = cfg.num_beams, cfg.length_penalty, cfg.early_stopping
    keep = 2 * K  # transformers: max(2, 1 + number of eos tokens) * beams, with one eos token or none
    max_length = 1 + cfg.max_new_tokens  # the start token and the new ones
    encoded = {n: np.repeat(a, K, axis=0) for n, a in encoded.items()}  # each row's encoder outputs, once per beam
    running = np.full((batch, K, max_length), pad, np.int64)
    running[:, :, 0] = start
    finished_seqs = running.copy()
    running_scores = np.zeros((batch, K), np.float32)
    running_scores[:, 1:] = -1e9  # only the first beam's continuations count at the first step
    beam_scores = np.full((batch, K), -1e9, np.float32)
    is_finished = np.zeros((batch, K), bool)
    may_improve = np.ones((batch, 1), bool)
    top_mask = np.arange(keep) < K
    rows = np.arange(batch)[:, None]
    state, timings, cur = None, [], 1
    while True:
        t0 = time.perf_counter()
        logits, state = model.step(running[:, :, cur - 1].reshape(batch * K, 1), encoded, state)
        timings.append(time.perf_counter() - t0)
        logp = forced(log_softmax(logits[:, -1, :].astype(np.float32)), cur - 1)
        vocab = logp.shape[-1]
        flat = (logp.reshape(batch, K, vocab) + running_scores[:, :, None]).reshape(batch, K * vocab)
        idx = top_k(flat, keep)  # [batch, keep]
        cand_scores = np.take_along_axis(flat, idx, -1)
        origin, token = idx // vocab, idx % vocab
        cand = running[rows, origin].copy()  # [batch, keep, max_length]
        cand[:, :, cur] = token
        hits = np.full(token.shape, cur + 1 >= max_length) | ((token == eos) if eos is not None else False)
        # The best unfinished candidates run on.
        run_scores = cand_scores + hits.astype(np.float32) * np.float32(-1e9)
        nxt = top_k(run_scores, K)
        running, running_scores, parent = cand[rows, nxt], np.take_along_axis(run_scores, nxt, -1), np.take_along_axis(origin, nxt, -1)
        # Finished candidates among the top K join the row's finished beams when they score better.
        done_scores = cand_scores / np.float32((cur + 1 - 1) ** lp)
        full = is_finished.all(-1, keepdims=True) & (stop is True)
        just = hits & top_mask[None, :]
        done_scores = done_scores + (full | ~may_improve | ~just).astype(np.float32) * np.float32(-1e9)
        merged = np.concatenate([beam_scores, done_scores], 1)
        best = top_k(merged, K)
        finished_seqs = np.concatenate([finished_seqs, cand], 1)[rows, best]
        beam_scores = np.take_along_axis(merged, best, -1)
        is_finished = np.take_along_axis(np.concatenate([is_finished, just], 1), best, -1)
        cur += 1
        best_length = (max_length - 1) if stop == "never" and lp > 0 else (cur - 1)
        best_running = running_scores[:, :1] / np.float32(best_length**lp)
        worst_done = np.where(is_finished, beam_scores.min(-1, keepdims=True), np.float32(-1e9))
        may_improve = may_improve & (best_running > worst_done).any(-1, keepdims=True)
        if not may_improve.any() or (is_finished.all() and stop is True) or hits.all():
            break
        flat_parent = (np.arange(batch)[:, None] * K + parent).reshape(-1)
        if not np.array_equal(flat_parent, np.arange(batch * K)):  # the cache's rows follow their beams
            arrays = model.decoder.state_to_numpy(state)
            state = model.decoder.state_from_numpy({n: a[flat_parent] for n, a in arrays.items()})
    tokens, ended = [], []
    for row in finished_seqs[:, 0, 1:]:
        stops = np.flatnonzero(row == eos) if eos is not None else []
        n = int(stops[0]) + 1 if len(stops) else len(row)
        tokens.append(row[:n].tolist())
        ended.append(bool(len(stops)))
    return Seq2SeqResult([], tokens, ended, timings, scores=beam_scores[:, 0].astype(float).tolist())
