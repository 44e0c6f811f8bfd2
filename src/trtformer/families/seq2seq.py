"""The graph I/O that encoder-decoder families share (BART, T5): an encoder graph, a decoder step graph, the links
between them, and the whole-forward graph "model" that the registry's `spec` describes.

- encoder: input_ids, attention_mask [batch, enc] -> encoder_hidden_states [batch, enc, d_model] and every decoder
  layer's cross-attention keys and values `cross.{i}.key|value` [batch, heads, enc, head_dim], computed once per
  sequence.
- decoder: decoder_input_ids [batch, seq], encoder_attention_mask [batch, enc], the self-attention cache
  `past.{i}.key|value` [batch, heads, past, head_dim] (past 0 on the first step) and `cross.{i}.key|value` ->
  logits [batch, seq, vocab] (fp32) and `present.{i}.key|value` [batch, heads, past + seq, head_dim].
- links: each `cross.*` output of the encoder is the decoder's `cross.*` input, of kind "cache": read unchanged at
  every step, never grown. (The decoder's encoder_attention_mask is the encoder's attention_mask input.)

Decoder rows never need padding (every row starts with the decoder start token and gains one token a step), so the
only mask is the encoder's, padded on the right in both graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..artifact import DimSpec, GraphSpec, Link, StatePair, TensorSpec

ENCODER, DECODER = "encoder", "decoder"


@dataclass(frozen=True)
class Seq2SeqShape:
    """What the graphs' I/O depends on."""

    vocab_size: int
    d_model: int
    decoder_layers: int
    heads: int  # decoder attention heads
    head_dim: int
    max_source: int  # encoder positions
    max_target: int  # decoder positions
    dtype: str  # hidden states and caches; logits are float32


def _ids(name: str, s: Seq2SeqShape, length: str, what: str) -> TensorSpec:
    return TensorSpec(name, "int64", ("batch", length), (0, s.vocab_size - 1), what, role="ids")


def _mask(name: str) -> TensorSpec:
    return TensorSpec(name, "int64", ("batch", "enc"), (0, 1), "1 = real source token, 0 = padding (on the right)",
                      role="padding-mask")  # fmt: skip


def _kv(prefix: str, s: Seq2SeqShape, length: str, role: str = "") -> list[TensorSpec]:
    shape = ("batch", s.heads, length, s.head_dim)
    return [TensorSpec(f"{prefix}.{i}.{part}", s.dtype, shape, role=role) for i in range(s.decoder_layers) for part in ("key", "value")]


def _dims(s: Seq2SeqShape, *names: str) -> dict[str, DimSpec]:
    every = {
        "batch": DimSpec(1, None, 1, "sequences in the batch (beams included)"),
        "enc": DimSpec(1, s.max_source, min(128, s.max_source), "source tokens"),
        "seq": DimSpec(1, s.max_target, 1, "new target tokens in this call"),
        "past": DimSpec(0, s.max_target - 1, min(64, s.max_target - 1), "cached target tokens"),
    }
    return {n: every[n] for n in names}


def encoder_graph(s: Seq2SeqShape) -> GraphSpec:
    inputs = (_ids("input_ids", s, "enc", "source token ids"), _mask("attention_mask"))
    outputs = (TensorSpec("encoder_hidden_states", s.dtype, ("batch", "enc", s.d_model)), *_kv("cross", s, "enc"))
    return GraphSpec(ENCODER, inputs, outputs, {}, (), _dims(s, "batch", "enc"), {"enc": s.max_source}, padding_side="right")


def decoder_graph(s: Seq2SeqShape) -> GraphSpec:
    inputs = [_ids("decoder_input_ids", s, "seq", "target token ids (the decoder start token first)"),
              _mask("encoder_attention_mask"), *_kv("past", s, "past", "state"), *_kv("cross", s, "enc", "features")]  # fmt: skip
    outputs = [TensorSpec("logits", "float32", ("batch", "seq", s.vocab_size)), *_kv("present", s, "past + seq")]
    state = tuple(StatePair(f"past.{i}.{part}", f"present.{i}.{part}", 2, "kv-cache")
                  for i in range(s.decoder_layers) for part in ("key", "value"))  # fmt: skip
    return GraphSpec(DECODER, tuple(inputs), tuple(outputs), {}, state, _dims(s, "batch", "seq", "past", "enc"),
                     {"past + seq": s.max_target}, padding_side="right")  # fmt: skip


def links(s: Seq2SeqShape) -> tuple[Link, ...]:
    names = [t.name for t in _kv("cross", s, "enc")]
    return tuple(Link(ENCODER, n, DECODER, n, "cache") for n in names)


def full_graph(s: Seq2SeqShape) -> GraphSpec:
    """Graph "model": the whole seq2seq forward recomputed for given target tokens (no cache); the reference the
    decoder's steps are checked against, and the registry's spec of a generation head."""
    inputs = (_ids("input_ids", s, "enc", "source token ids"), _mask("attention_mask"),
              _ids("decoder_input_ids", s, "seq", "target token ids"))  # fmt: skip
    outputs = (TensorSpec("logits", "float32", ("batch", "seq", s.vocab_size)),
               TensorSpec("encoder_hidden_states", s.dtype, ("batch", "enc", s.d_model)))  # fmt: skip
    return GraphSpec("model", inputs, outputs, {}, (), _dims(s, "batch", "enc", "seq"),
                     {"enc": s.max_source, "seq": s.max_target}, padding_side="right")  # fmt: skip


def to_kwargs(named: dict) -> dict:
    """Flattened inputs -> keyword arguments: `past.*` and `cross.*` become lists of (key, value) per layer."""
    kwargs = {k: v for k, v in named.items() if not k.startswith(("past.", "cross."))}
    for prefix in ("past", "cross"):
        n = sum(1 for k in named if k.startswith(f"{prefix}.") and k.endswith(".key"))
        if n:
            kwargs[prefix] = [(named[f"{prefix}.{i}.key"], named[f"{prefix}.{i}.value"]) for i in range(n)]
    return kwargs
