"""T5 (v1.0, v1.1 and flan-style configs): pre-norm blocks with RMS LayerNorm and no biases, a bucketed
relative-position bias instead of absolute positions, ReLU or gated-GELU feed-forward.

Parameter names follow the checkpoints (`shared`, `encoder.block.{i}.layer.0.SelfAttention.q`,
`decoder.block.{i}.layer.1.EncDecAttention`, `...layer.{-1}.DenseReluDense.wi_0`, `lm_head`). The relative-position
bias lives in the first layer of each stack and is shared by all its layers: bidirectional buckets in the encoder,
causal ones in the decoder, no bias in cross-attention. Attention scores are not scaled (T5 folds the scale into
its initialisation). A tied LM head rescales the decoder output by d_model ** -0.5 first; an untied one does not.

Precision: T5's feed-forward is known to overflow fp16 (activations past 65504 in v1.1 and flan checkpoints). At
every precision the residual stream and each feed-forward's output projection `wo` stay fp32 (the `keeps_fp32`
modules below); the other matmuls run at the export precision. In fp32 all of it is one path.

As BART's, forward runs the encoder graph, a decoder step with its self-attention cache and the cross-attention
keys and values computed once per sequence, or the whole seq2seq forward, by what it is given.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .bart import KV, TiedLMHead, at_dtype, named_cache
from .layers import Linear32, activation, merge_heads, split_heads

Head = Literal["generation", "encoder"]
HEADS: tuple[str, ...] = ("generation", "encoder")


@dataclass(frozen=True)
class T5Config:
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int = 6
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"  # relu (T5 v1.0) | gated-gelu (v1.1, flan) | gated-ACT
    tie_word_embeddings: bool = True  # the LM head is `shared`; False: its own lm_head
    scale_decoder_outputs: bool = True  # d_model ** -0.5 before the LM head (transformers: a tied head)
    n_positions: int = 512  # the lengths the manifest allows; relative positions have no table to run out of
    head: Head = "generation"
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    initializer_factor: float = 1.0

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(f"feed_forward_proj must be ACT or gated-ACT, got {self.feed_forward_proj!r}")
        activation(self.act)  # known

    @property
    def gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def act(self) -> str:
        act = self.feed_forward_proj.split("-")[-1]
        return "gelu_new" if act == "gelu" and self.gated else act  # transformers: gated-gelu is the tanh GELU

    @property
    def head_dim(self) -> int:
        return self.d_kv

    def to_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    """T5's LayerNorm: scale only, no mean subtraction, no bias; statistics in fp32. Returns `dtype`."""

    keeps_fp32 = True  # precision: parameters stay fp32

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        x = x.float()
        return (self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))).to(dtype)


class OutputProjection(nn.Linear):
    """The feed-forward's `wo`, computed in fp32 at every precision (fp16 overflows here); returns fp32."""

    keeps_fp32 = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.float(), self.weight)


def bucket_table(bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """The relative-position bucket of each distance 0..max_distance, by transformers' formula evaluated once here in
    fp32: the graph then looks buckets up instead of taking a log, so no backend's rounding can move a position across
    a bucket boundary (several distances land exactly on one)."""
    if bidirectional:
        num_buckets //= 2
    max_exact = num_buckets // 2
    d = torch.arange(max_distance + 1)
    large = max_exact + (torch.log(d.float() / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)).to(torch.long)
    return torch.where(d < max_exact, d, large.clamp(max=num_buckets - 1))


class RelativePositionBias(nn.Embedding):
    """A [heads] bias per bucket of the key's position relative to the query's -> a [1, heads, q, k] fp32 bias.
    An Embedding of [num_buckets, heads], so that its weight has the checkpoints' name."""

    def __init__(self, cfg: T5Config, bidirectional: bool):
        super().__init__(cfg.relative_attention_num_buckets, cfg.num_heads)
        self.bidirectional = bidirectional
        self.half = cfg.relative_attention_num_buckets // 2
        self.register_buffer("table", bucket_table(bidirectional, cfg.relative_attention_num_buckets,
                                                   cfg.relative_attention_max_distance), persistent=False)  # fmt: skip

    def forward(self, query_pos: torch.Tensor, key_pos: torch.Tensor) -> torch.Tensor:  # [q], [k]
        relative = key_pos[None, :] - query_pos[:, None]  # [q, k]
        cap = self.table.shape[0] - 1
        if self.bidirectional:  # keys after the query use the upper half of the buckets
            buckets = self.table[relative.abs().clamp(max=cap)] + (relative > 0).long() * self.half
        else:  # only keys before the query are told apart
            buckets = self.table[(-relative).clamp(min=0, max=cap)]
        return F.embedding(buckets, self.weight).permute(2, 0, 1)[None].float()  # [1, heads, q, k]


class Attention(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        inner = cfg.num_heads * cfg.d_kv
        self.n_head = cfg.num_heads
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.k = nn.Linear(cfg.d_model, inner, bias=False)
        self.v = nn.Linear(cfg.d_model, inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)

    def keys_values(self, x: torch.Tensor) -> KV:  # [batch, len, d_model] -> 2 x [batch, heads, len, d_kv]
        return split_heads(self.k(x), self.n_head), split_heads(self.v(x), self.n_head)

    def forward(
        self,
        x: torch.Tensor,  # [batch, q_len, d_model]
        key: torch.Tensor,  # [batch, heads, k_len, d_kv]
        value: torch.Tensor,  # [batch, heads, k_len, d_kv]
        bias: torch.Tensor,  # fp32, broadcastable to [batch, heads, q_len, k_len]: positions plus the mask
    ) -> torch.Tensor:  # [batch, q_len, d_model]
        q = split_heads(self.q(x), self.n_head)
        scores = torch.matmul(q, key.transpose(-1, -2)).float() + bias  # unscaled, as T5
        return self.o(merge_heads(torch.matmul(torch.softmax(scores, dim=-1).to(value.dtype), value)))


class FeedForward(nn.Module):
    """relu: wo(act(wi x)); gated-ACT: wo(act(wi_0 x) * wi_1 x). Named DenseReluDense as in the checkpoints."""

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.gated = cfg.gated
        if self.gated:
            self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
            self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        else:
            self.wi = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = OutputProjection(cfg.d_ff, cfg.d_model, bias=False)
        self.act = activation(cfg.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [batch, len, d_model] -> fp32
        h = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        return self.wo(h)


class SubLayer(nn.Module):
    """Pre-norm residual branch: x + f(layer_norm(x)), the residual stream in fp32. Named layer.{j} in checkpoints;
    its attention is `SelfAttention` or `EncDecAttention`, its feed-forward `DenseReluDense`."""

    def __init__(self, cfg: T5Config, kind: str):
        super().__init__()
        self.layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        setattr(self, kind, Attention(cfg) if kind.endswith("Attention") else FeedForward(cfg))


class EncoderBlock(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.layer = nn.ModuleList([SubLayer(cfg, "SelfAttention"), SubLayer(cfg, "DenseReluDense")])

    def forward(self, x: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:  # x fp32
        attn, ff = self.layer
        h = attn.layer_norm(x, dtype)
        x = x + attn.SelfAttention(h, *attn.SelfAttention.keys_values(h), bias).float()
        return x + ff.DenseReluDense(ff.layer_norm(x, dtype))


class DecoderBlock(nn.Module):
    def __init__(self, cfg: T5Config):
        super().__init__()
        self.layer = nn.ModuleList([SubLayer(cfg, "SelfAttention"), SubLayer(cfg, "EncDecAttention"), SubLayer(cfg, "DenseReluDense")])

    def forward(self, x, past: KV, cross: KV, self_bias, cross_bias, dtype):
        attn, cross_attn, ff = self.layer
        h = attn.layer_norm(x, dtype)
        k, v = attn.SelfAttention.keys_values(h)
        key, value = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # [batch, heads, past + seq, d_kv]
        x = x + attn.SelfAttention(h, key, value, self_bias).float()
        x = x + cross_attn.EncDecAttention(cross_attn.layer_norm(x, dtype), cross[0], cross[1], cross_bias).float()
        return x + ff.DenseReluDense(ff.layer_norm(x, dtype)), key, value


class Stack(nn.Module):
    def __init__(self, cfg: T5Config, blocks: list[nn.Module], bidirectional: bool):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.final_layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        # Checkpoints keep the bias in the first block's self-attention; the model reads it from there.
        self.block[0].layer[0].SelfAttention.relative_attention_bias = RelativePositionBias(cfg, bidirectional)

    @property
    def position_bias(self) -> RelativePositionBias:
        return self.block[0].layer[0].SelfAttention.relative_attention_bias


def mask_bias(mask: torch.Tensor) -> torch.Tensor:  # [batch, len] 0/1 -> [batch, 1, 1, len] fp32
    return (mask[:, None, None, :] == 0).float() * torch.finfo(torch.float32).min


class T5(nn.Module):
    """T5 for conditional generation, or its encoder alone (T5EncoderModel); see T5Config.head and forward()."""

    # What a low-precision export computes in fp32 beyond the usual contract; the manifest records it.
    fp32_compute = "the residual stream and each feed-forward output projection (wo), which overflow fp16"

    def __init__(self, cfg: T5Config):
        super().__init__()
        self.config = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Stack(cfg, [EncoderBlock(cfg) for _ in range(cfg.num_layers)], bidirectional=True)
        if cfg.head == "generation":
            self.decoder = Stack(cfg, [DecoderBlock(cfg) for _ in range(cfg.num_decoder_layers)], bidirectional=False)
            self.lm_head = TiedLMHead() if cfg.tie_word_embeddings else Linear32(cfg.d_model, cfg.vocab_size, bias=False)

    def init_weights(self, seed: int = 0) -> T5:
        """transformers' T5 init: normal weights scaled by fan-in, unit norms."""
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        f = self.config.initializer_factor
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=f * m.in_features**-0.5)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=f)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
        torch.random.set_rng_state(gen_state)
        return self

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.encoder.block[0].layer[0].SelfAttention.q.weight.dtype

    def empty_past(self, batch: int) -> list[KV]:
        cfg = self.config
        empty = torch.zeros(batch, cfg.num_heads, 0, cfg.d_kv, dtype=self.compute_dtype, device=self.shared.weight.device)
        return [(empty, empty)] * cfg.num_decoder_layers

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[batch, enc] ids and 0/1 mask -> [batch, enc, d_model] encoder hidden states (compute dtype)."""
        dtype = self.compute_dtype
        x = self.shared(input_ids).float()  # the residual stream, fp32
        pos = torch.arange(input_ids.shape[1], device=x.device)
        bias = self.encoder.position_bias(pos, pos) + mask_bias(attention_mask)  # [batch, heads, enc, enc]
        for block in self.encoder.block:
            x = block(x, bias, dtype)
        return self.encoder.final_layer_norm(x, dtype)

    def cross_keys_values(self, encoder_hidden_states: torch.Tensor) -> list[KV]:
        return [block.layer[1].EncDecAttention.keys_values(encoder_hidden_states) for block in self.decoder.block]

    def decode(self, decoder_input_ids, encoder_attention_mask, cross: list[KV], past: list[KV]):
        """[batch, seq] ids over a cache of `past` positions -> [batch, seq, d_model] (compute dtype), the grown cache."""
        cross = at_dtype(cross, self.compute_dtype)
        dtype = self.compute_dtype
        past_len = past[0][0].shape[2]
        x = self.shared(decoder_input_ids).float()
        key_pos = torch.arange(past_len + decoder_input_ids.shape[1], device=x.device)  # [past + seq]
        query_pos = key_pos[past_len:]  # [seq]
        causal = torch.where(key_pos[None, :] <= query_pos[:, None], 0.0, torch.finfo(torch.float32).min)  # [seq, past + seq]
        self_bias = self.decoder.position_bias(query_pos, key_pos) + causal  # [1, heads, seq, past + seq]
        cross_bias = mask_bias(encoder_attention_mask)  # cross-attention has no position bias
        presents = []
        for block, layer_past, layer_cross in zip(self.decoder.block, past, cross, strict=True):
            x, key, value = block(x, layer_past, layer_cross, self_bias, cross_bias, dtype)
            presents.append((key, value))
        return self.decoder.final_layer_norm(x, dtype), presents

    def lm_logits(self, x: torch.Tensor) -> torch.Tensor:  # [batch, seq, d_model] -> [batch, seq, vocab], fp32
        x = x.float()
        if self.config.scale_decoder_outputs:
            x = x * self.config.d_model**-0.5
        return self.lm_head(x, self.shared.weight) if self.config.tie_word_embeddings else self.lm_head(x)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # [batch, enc]
        attention_mask: torch.Tensor | None = None,  # [batch, enc]
        decoder_input_ids: torch.Tensor | None = None,  # [batch, seq]
        encoder_attention_mask: torch.Tensor | None = None,  # [batch, enc]: the decoder step's mask
        past: list[KV] | None = None,
        cross: list[KV] | None = None,
    ) -> dict[str, torch.Tensor]:
        """As Bart.forward: `input_ids` alone -> the encoder graph (encoder head: last_hidden_state); with
        `decoder_input_ids` too -> the whole forward; `decoder_input_ids` with `cross` -> one decoder step."""
        if input_ids is None:
            logits, presents = self._step(decoder_input_ids, encoder_attention_mask, cross, past)
            return {"logits": logits, **named_cache("present", presents)}
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encode(input_ids, attention_mask)
        if self.config.head == "encoder":
            return {"last_hidden_state": hidden}
        if decoder_input_ids is None:
            return {"encoder_hidden_states": hidden, **named_cache("cross", self.cross_keys_values(hidden))}
        logits, _ = self._step(decoder_input_ids, attention_mask, self.cross_keys_values(hidden), None)
        return {"logits": logits, "encoder_hidden_states": hidden}

    def _step(self, decoder_input_ids, encoder_attention_mask, cross, past):
        past = past if past is not None else self.empty_past(decoder_input_ids.shape[0])
        x, presents = self.decode(decoder_input_ids, encoder_attention_mask, cross, past)
        return self.lm_logits(x), presents


__all__ = ["HEADS", "T5", "T5Config", "bucket_table"]
