"""BART: a BERT-like bidirectional encoder and a GPT-like causal decoder with cross-attention, post-LayerNorm.

Parameter names follow `BartModel` with its `model.` prefix dropped (`shared`, `encoder.layers.{i}.self_attn.q_proj`,
`decoder.layers.{i}.encoder_attn`, ...), so loading is a rename. Positions are learned with BART's offset of 2,
`layernorm_embedding` follows the embeddings, token embeddings are scaled by sqrt(d_model) when `scale_embedding`,
and the LM head is tied to `shared` plus `final_logits_bias`.

Seq2seq generation runs as two graphs with explicit state (see `forward`): the encoder (ids -> hidden states and,
once per sequence, every decoder layer's cross-attention keys and values), and a decoder step that reads those
cross keys and values unchanged and grows its self-attention cache (past length 0 on the first step). The
classification and QA heads are one graph: encoder and decoder over the same tokens, shifted right for the decoder,
as transformers' BartForSequenceClassification and BartForQuestionAnswering do.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LayerNorm32, Linear32, activation, init_normal_, masked_softmax_attention, merge_heads, split_heads

Head = Literal["generation", "sequence-classification", "question-answering"]
HEADS: tuple[str, ...] = ("generation", "sequence-classification", "question-answering")
POSITION_OFFSET = 2  # BART's learned positions start at index 2 (a fairseq legacy)

KV = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class BartConfig:
    vocab_size: int = 50265
    max_position_embeddings: int = 1024
    d_model: int = 768
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_attention_heads: int = 12
    decoder_attention_heads: int = 12
    encoder_ffn_dim: int = 3072
    decoder_ffn_dim: int = 3072
    activation_function: str = "gelu"
    scale_embedding: bool = False
    layer_norm_eps: float = 1e-5
    head: Head = "generation"
    num_labels: int = 3
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    decoder_start_token_id: int = 2
    forced_bos_token_id: int | None = None  # generation: the first new token, when set
    forced_eos_token_id: int | None = 2  # generation: the token at the length limit, when set
    init_std: float = 0.02

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        for heads in (self.encoder_attention_heads, self.decoder_attention_heads):
            if self.d_model % heads:
                raise ValueError(f"d_model {self.d_model} is not divisible by {heads} heads")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.decoder_attention_heads

    def to_dict(self) -> dict:
        return asdict(self)


class Attention(nn.Module):
    """Multi-head attention with biased projections; keys and values come in already split into heads, so the same
    module serves self-attention (keys from the cache plus the new tokens) and cross-attention (keys computed once)."""

    def __init__(self, width: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.scale = 1.0 / math.sqrt(width // n_head)
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def keys_values(self, x: torch.Tensor) -> KV:  # [batch, len, width] -> 2 x [batch, heads, len, head_dim]
        return split_heads(self.k_proj(x), self.n_head), split_heads(self.v_proj(x), self.n_head)

    def forward(
        self,
        x: torch.Tensor,  # [batch, q_len, width]
        key: torch.Tensor,  # [batch, heads, k_len, head_dim]
        value: torch.Tensor,  # [batch, heads, k_len, head_dim]
        allowed: torch.Tensor,  # bool, broadcastable to [batch, heads, q_len, k_len]
    ) -> torch.Tensor:  # [batch, q_len, width]
        q = split_heads(self.q_proj(x), self.n_head)  # [batch, heads, q_len, head_dim]
        return self.out_proj(merge_heads(masked_softmax_attention(q, key, value, allowed, self.scale)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: BartConfig):
        super().__init__()
        self.self_attn = Attention(cfg.d_model, cfg.encoder_attention_heads)
        self.self_attn_layer_norm = LayerNorm32(cfg.d_model, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(cfg.d_model, cfg.encoder_ffn_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_dim, cfg.d_model)
        self.act = activation(cfg.activation_function)
        self.final_layer_norm = LayerNorm32(cfg.d_model, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:  # post-norm, as BERT
        x = self.self_attn_layer_norm(x + self.self_attn(x, *self.self_attn.keys_values(x), allowed))
        return self.final_layer_norm(x + self.fc2(self.act(self.fc1(x))))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: BartConfig):
        super().__init__()
        self.self_attn = Attention(cfg.d_model, cfg.decoder_attention_heads)
        self.self_attn_layer_norm = LayerNorm32(cfg.d_model, eps=cfg.layer_norm_eps)
        self.encoder_attn = Attention(cfg.d_model, cfg.decoder_attention_heads)
        self.encoder_attn_layer_norm = LayerNorm32(cfg.d_model, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(cfg.d_model, cfg.decoder_ffn_dim)
        self.fc2 = nn.Linear(cfg.decoder_ffn_dim, cfg.d_model)
        self.act = activation(cfg.activation_function)
        self.final_layer_norm = LayerNorm32(cfg.d_model, eps=cfg.layer_norm_eps)

    def forward(self, x, past: KV, cross: KV, causal: torch.Tensor, cross_allowed: torch.Tensor):
        k, v = self.self_attn.keys_values(x)
        key = torch.cat([past[0], k], dim=2)  # [batch, heads, past + seq, head_dim]
        value = torch.cat([past[1], v], dim=2)
        x = self.self_attn_layer_norm(x + self.self_attn(x, key, value, causal))
        x = self.encoder_attn_layer_norm(x + self.encoder_attn(x, cross[0], cross[1], cross_allowed))
        return self.final_layer_norm(x + self.fc2(self.act(self.fc1(x)))), key, value


class Stack(nn.Module):
    """Learned positions, `layernorm_embedding` and the layers of the encoder or the decoder."""

    def __init__(self, cfg: BartConfig, layers: list[nn.Module]):
        super().__init__()
        self.embed_positions = nn.Embedding(cfg.max_position_embeddings + POSITION_OFFSET, cfg.d_model)
        self.layernorm_embedding = LayerNorm32(cfg.d_model, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(layers)

    def embed(self, tokens: torch.Tensor, start: int | torch.SymInt, dtype: torch.dtype) -> torch.Tensor:
        """[batch, len, d_model] token embeddings -> plus positions start.., normalised, at `dtype`."""
        positions = torch.arange(tokens.shape[1], device=tokens.device) + start + POSITION_OFFSET  # [len]
        return self.layernorm_embedding(tokens + self.embed_positions(positions)[None]).to(dtype)


class Bart(nn.Module):
    """BART with one of three heads; see BartConfig.head and forward()."""

    def __init__(self, cfg: BartConfig):
        super().__init__()
        self.config = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.embed_scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        self.encoder = Stack(cfg, [EncoderLayer(cfg) for _ in range(cfg.encoder_layers)])
        self.decoder = Stack(cfg, [DecoderLayer(cfg) for _ in range(cfg.decoder_layers)])
        if cfg.head == "generation":  # the LM head is tied to `shared`
            self.lm_head = TiedLMHead()
            self.register_buffer("final_logits_bias", torch.zeros(1, cfg.vocab_size))
        elif cfg.head == "sequence-classification":
            self.classification_head = ClassificationHead(cfg.d_model, cfg.num_labels)
        else:
            self.qa_outputs = Linear32(cfg.d_model, 2)

    def init_weights(self, seed: int = 0) -> Bart:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        init_normal_(self, self.config.init_std)
        torch.random.set_rng_state(gen_state)
        return self

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.encoder.layers[0].self_attn.q_proj.weight.dtype

    def empty_past(self, batch: int) -> list[KV]:
        cfg = self.config
        empty = torch.zeros(batch, cfg.decoder_attention_heads, 0, cfg.head_dim, dtype=self.compute_dtype, device=self.shared.weight.device)
        return [(empty, empty)] * cfg.decoder_layers

    # --- the two halves ------------------------------------------------------------------------------------

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[batch, enc] ids and 0/1 mask (right-padded) -> [batch, enc, d_model] encoder hidden states."""
        x = self.encoder.embed(self.shared(input_ids) * self.embed_scale, 0, self.compute_dtype)
        allowed = (attention_mask != 0)[:, None, None, :]  # [batch, 1, 1, enc]
        for layer in self.encoder.layers:
            x = layer(x, allowed)
        return x

    def cross_keys_values(self, encoder_hidden_states: torch.Tensor) -> list[KV]:
        """Every decoder layer's cross-attention keys and values: computed once per sequence, then only read."""
        return [layer.encoder_attn.keys_values(encoder_hidden_states) for layer in self.decoder.layers]

    def decode(
        self,
        decoder_input_ids: torch.Tensor,  # [batch, seq]
        encoder_attention_mask: torch.Tensor,  # [batch, enc]
        cross: list[KV],  # decoder_layers x 2 x [batch, heads, enc, head_dim]
        past: list[KV],  # decoder_layers x 2 x [batch, heads, past, head_dim]
    ) -> tuple[torch.Tensor, list[KV]]:  # [batch, seq, d_model], the grown self-attention cache
        cross = at_dtype(cross, self.compute_dtype)
        past_len = past[0][0].shape[2]
        x = self.decoder.embed(self.shared(decoder_input_ids) * self.embed_scale, past_len, self.compute_dtype)
        seq = decoder_input_ids.shape[1]
        key_pos = torch.arange(past_len + seq, device=x.device)  # [past + seq]
        causal = (key_pos[None, :] <= key_pos[past_len:, None])[None, None]  # [1, 1, seq, past + seq]
        cross_allowed = (encoder_attention_mask != 0)[:, None, None, :]  # [batch, 1, 1, enc]
        presents = []
        for layer, layer_past, layer_cross in zip(self.decoder.layers, past, cross, strict=True):
            x, key, value = layer(x, layer_past, layer_cross, causal, cross_allowed)
            presents.append((key, value))
        return x, presents

    def lm_logits(self, x: torch.Tensor) -> torch.Tensor:  # [batch, seq, d_model] -> [batch, seq, vocab], fp32
        return self.lm_head(x, self.shared.weight, self.final_logits_bias)

    # --- graphs --------------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # [batch, enc]
        attention_mask: torch.Tensor | None = None,  # [batch, enc], 1 = real token (right padding)
        decoder_input_ids: torch.Tensor | None = None,  # [batch, seq]
        encoder_attention_mask: torch.Tensor | None = None,  # [batch, enc]: the decoder step's mask
        past: list[KV] | None = None,  # decoder_layers x ([batch, heads, past, head_dim],) * 2
        cross: list[KV] | None = None,  # decoder_layers x ([batch, heads, enc, head_dim],) * 2
    ) -> dict[str, torch.Tensor]:
        """What is given says which graph runs, each a whole computation (no flag changes the math):

        - generation, `input_ids` alone: the encoder graph -> encoder_hidden_states, cross.{i}.key/value
        - generation, `decoder_input_ids` with `cross`: one decoder step -> logits, present.{i}.key/value
        - generation, `input_ids` and `decoder_input_ids`: the whole seq2seq forward, recomputed -> logits,
          encoder_hidden_states
        - classification and QA heads, `input_ids`: encoder and decoder over the tokens shifted right
        """
        cfg = self.config
        if input_ids is None:
            logits, presents = self._step(decoder_input_ids, encoder_attention_mask, cross, past)
            return {"logits": logits, **named_cache("present", presents)}
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encode(input_ids, attention_mask)  # [batch, enc, d_model]
        if cfg.head == "generation" and decoder_input_ids is None:
            return {"encoder_hidden_states": hidden, **named_cache("cross", self.cross_keys_values(hidden))}
        if cfg.head == "generation":
            logits, _ = self._step(decoder_input_ids, attention_mask, self.cross_keys_values(hidden), None)
            return {"logits": logits, "encoder_hidden_states": hidden}
        shifted = shift_right(input_ids, cfg.decoder_start_token_id)
        x, _ = self.decode(shifted, attention_mask, self.cross_keys_values(hidden), self.empty_past(input_ids.shape[0]))
        if cfg.head == "sequence-classification":
            # The last eos token of each row, as transformers pools (it requires one in every row).
            positions = torch.arange(input_ids.shape[1], device=x.device)
            last_eos = (positions * (input_ids == cfg.eos_token_id)).argmax(-1)  # [batch]
            pooled = x[torch.arange(x.shape[0], device=x.device), last_eos]  # [batch, d_model]
            return {"logits": self.classification_head(pooled)}  # [batch, num_labels], fp32
        start, end = self.qa_outputs(x).unbind(-1)  # 2 x [batch, enc], fp32
        return {"start_logits": start, "end_logits": end}

    def _step(self, decoder_input_ids, encoder_attention_mask, cross, past):
        past = past if past is not None else self.empty_past(decoder_input_ids.shape[0])
        x, presents = self.decode(decoder_input_ids, encoder_attention_mask, cross, past)
        return self.lm_logits(x), presents


class TiedLMHead(nn.Module):
    """An LM head that projects with the token embedding: fp32 logits at every precision. A module of its own (with
    no parameters) so that the exported nodes carry its name, which int8 quantisation leaves fp32 as every head."""

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x.float(), weight.float(), None if bias is None else bias.float().reshape(-1))


class ClassificationHead(nn.Module):
    """dense -> tanh -> out_proj on the pooled eos state; fp32 as every head."""

    def __init__(self, width: int, num_labels: int):
        super().__init__()
        self.dense = Linear32(width, width)
        self.out_proj = Linear32(width, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.tanh(self.dense(x)))


def shift_right(input_ids: torch.Tensor, start_token_id: int) -> torch.Tensor:
    """[batch, len] -> the decoder's inputs: the start token, then the ids but the last."""
    start = torch.full_like(input_ids[:, :1], start_token_id)
    return torch.cat([start, input_ids[:, :-1]], dim=1)


def at_dtype(pairs: list[KV], dtype: torch.dtype) -> list[KV]:
    """Keys and values at the compute dtype: a no-op in an exported graph (its inputs have that dtype), a cast where a
    caller feeds the fp32 reference with another precision's arrays."""
    return [(k.to(dtype), v.to(dtype)) for k, v in pairs]


def named_cache(prefix: str, pairs: list[KV]) -> dict[str, torch.Tensor]:
    """[(key, value), ...] -> {"{prefix}.{i}.key": key, "{prefix}.{i}.value": value}: the graphs' state names."""
    return {f"{prefix}.{i}.{part}": t for i, pair in enumerate(pairs) for part, t in zip(("key", "value"), pair, strict=True)}
