"""Text generation on any backend: KV cache carried as backend state, left-padded batches, greedy and sampling.

Greedy decoding picks argmax, so on a backend that matches the torch reference it yields the reference's
tokens. Sampling draws from a seeded numpy Generator after temperature, top-k and top-p filtering. The
configuration, the token choice and the special-token rules here serve encoder-decoders too (runtime.seq2seq),
which add beam search.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..artifact import shapes
from ..artifact.examples import pad_rows
from ..errors import InputError
from .ids import id_rows


@dataclass
class GenerationConfig:
    max_new_tokens: int = 20
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None
    eos_token_id: int | None = None  # None: the model's
    pad_token_id: int | None = None  # None: the model's, else eos, else 0
    ignore_eos: bool = False  # always generate max_new_tokens (benchmarks, tests)
    # Beam search (encoder-decoders): beams per row, the exponent of the length that divides a finished beam's
    # log-probability, and when to stop: True once num_beams beams have finished, False when no running beam can
    # still beat them at its current length, "never" at its best possible length (transformers' meanings).
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False

    def check(self) -> None:
        for name in ("temperature", "top_p"):  # nan passes every comparison below, and inf breaks the softmax
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
                raise InputError(f"{name} must be a finite number, got {value!r}")
        for name in ("max_new_tokens", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{name} must be an integer, got {value!r}")
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if isinstance(self.num_beams, bool) or not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise InputError(f"num_beams must be an integer >= 1, got {self.num_beams!r}")
        if not np.isfinite(self.length_penalty):
            raise InputError(f"length_penalty must be a finite number, got {self.length_penalty}")
        if self.early_stopping not in (True, False, "never"):
            raise InputError(f"early_stopping must be True, False or 'never', got {self.early_stopping!r}")
        if self.num_beams > 1 and self.temperature > 0:
            raise InputError("beam search here is deterministic; sampling takes num_beams=1",
                             hint="drop --temperature or --num-beams")  # fmt: skip

    def apply(self, overrides: dict) -> GenerationConfig:
        """This config with `overrides` set, checked."""
        for k, v in overrides.items():
            if not hasattr(self, k):
                raise InputError(f"generation has no setting {k!r}")
            setattr(self, k, v)
        self.check()
        return self


@dataclass
class GenerationResult:
    prompts: list[list[int]]
    tokens: list[list[int]]  # new tokens per row, cut after eos (eos included)
    finished: list[bool]  # True where the row stopped at eos
    step_seconds: list[float] = field(default_factory=list)  # [prefill, decode 1, decode 2, ...]

    @property
    def sequences(self) -> list[list[int]]:
        return [p + t for p, t in zip(self.prompts, self.tokens, strict=True)]


def filter_logits(logits: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """Top-k then nucleus filtering on [batch, vocab] logits; removed entries become -inf."""
    out = logits.astype(np.float64, copy=True)
    if top_k and top_k < out.shape[-1]:
        kth = np.partition(out, -top_k, axis=-1)[:, -top_k][:, None]
        out[out < kth] = -np.inf
    if top_p < 1.0:
        order = np.argsort(-out, axis=-1)
        sorted_logits = np.take_along_axis(out, order, axis=-1)
        probs = np.exp(sorted_logits - sorted_logits[:, :1])
        probs /= probs.sum(-1, keepdims=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop_sorted = np.cumsum(probs, axis=-1) - probs >= top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        out[drop] = -np.inf
    return out


def next_tokens(logits: np.ndarray, cfg: GenerationConfig, rng: np.random.Generator) -> np.ndarray:
    """[batch, vocab] logits -> [batch] token ids."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    scores = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return np.array([rng.choice(probs.shape[-1], p=row) for row in probs], dtype=np.int64)


def generate(session, prompts: Sequence[Sequence[int]], cfg: GenerationConfig | None = None, **overrides) -> GenerationResult:
    """Continue each prompt by up to cfg.max_new_tokens tokens; a row stops at eos, the batch when all have."""
    cfg = (cfg or GenerationConfig()).apply(overrides)
    if cfg.num_beams != 1:
        raise InputError("beam search is for encoder-decoder artifacts (BART, T5); decoders sample or decode greedily",
                         hint="drop --num-beams")  # fmt: skip
    # Transformer-XL's memory is state too, but its segments take no attention mask: it streams instead.
    graph = session.graph
    ids_in, mask_in = graph.role_input("ids"), graph.role_input("padding-mask")
    if graph.state_kinds != {"kv-cache"} or "logits" not in session.outputs or ids_in is None or mask_in is None:
        raise InputError(f"generation needs a causal LM artifact with a KV cache; {session.artifact.path} has none",
                         hint="score Transformer-XL artifacts with `trtformer stream`")
    prompts = check_prompts(prompts)
    eos, pad = special_tokens(cfg, session.config)
    context = context_limit(graph)
    longest = max(len(p) for p in prompts)
    if context is not None and longest + cfg.max_new_tokens - 1 > context:
        raise InputError(
            f"prompt of {longest} tokens + {cfg.max_new_tokens} new tokens exceeds the context of {context}",
            hint="shorten the prompt or lower --max-new-tokens",
        )
    ids, mask = pad_rows(prompts, "left", pad)
    feeds = {ids_in.name: ids, mask_in.name: mask}
    state = None

    def step(previous: np.ndarray | None) -> np.ndarray:
        nonlocal feeds, state
        if previous is not None:
            feeds = {ids_in.name: previous[:, None], mask_in.name: np.pad(feeds[mask_in.name], ((0, 0), (0, 1)), constant_values=1)}
        out, state = session.step(feeds, state, fetch=["logits"])
        return out["logits"][:, -1, :]

    return GenerationResult(prompts, *token_loop(step, len(prompts), cfg, eos, pad))


def token_loop(step, batch: int, cfg: GenerationConfig, eos: int | None, pad: int, process=None) -> tuple[list, list, list]:
    """The decoding loop any model shares: `step(previous tokens or None)` -> [batch, vocab] logits of the newest
    position; `process(logits, i)` may change them (forced tokens); a row stops at eos, the loop when all rows have
    or after max_new_tokens. Returns (new tokens per row, finished per row, seconds per step)."""
    rng = np.random.default_rng(cfg.seed)
    tokens: list[list[int]] = [[] for _ in range(batch)]
    finished = np.zeros(batch, dtype=bool)
    timings, nxt = [], None
    for i in range(cfg.max_new_tokens):
        t0 = time.perf_counter()
        logits = step(nxt)
        timings.append(time.perf_counter() - t0)
        if process is not None:
            logits = process(logits, i)
        nxt = np.where(finished, pad, next_tokens(logits, cfg, rng)).astype(np.int64)  # finished rows idle on padding
        for row in np.flatnonzero(~finished):
            tokens[row].append(int(nxt[row]))
        if eos is not None:
            finished |= nxt == eos
        if finished.all():
            break
    return tokens, finished.tolist(), timings


def special_tokens(cfg: GenerationConfig, config: dict) -> tuple[int | None, int]:
    """(eos, pad) for a run: the config's, else the model's; pad falls back on eos, then 0. No eos with ignore_eos."""
    eos = None if cfg.ignore_eos else cfg.eos_token_id if cfg.eos_token_id is not None else config.get("eos_token_id")
    pad = next(v for v in (cfg.pad_token_id, config.get("pad_token_id"), eos, 0) if v is not None)
    vocab = config.get("vocab_size")
    for what, value in (("eos_token_id", eos), ("pad_token_id", pad)):
        if value is not None and vocab is not None and not 0 <= value < vocab:
            raise InputError(f"{what} {value} is outside the vocabulary [0, {vocab - 1}]")
    return eos, pad


def check_prompts(prompts: Sequence[Sequence[int]], what: str = "prompt") -> list[list[int]]:
    rows = id_rows(f"{what}s", prompts)  # integers only: int(1.9999) would be another token
    if not rows or any(len(p) == 0 for p in rows):
        raise InputError(f"every {what} needs at least one token")
    return rows


def context_limit(graph) -> int | None:
    """The most positions a sequence may reach: the limit on a sum of the sequence dim and the cache ("past + seq")."""
    seq = graph.sequence_dim
    found = [v for expr, v in graph.limits.items() if seq in shapes.symbols(expr) and len(shapes.symbols(expr)) > 1]
    return min(found) if found else None
