"""GPT-1 (OpenAI GPT) and GPT-2: causal decoders with the KV cache as explicit state.

One module serves both; `variant` picks the block layout (GPT-1 post-LayerNorm without a final norm, GPT-2
pre-LayerNorm with `ln_f`). Parameter names follow the GPT-2 checkpoints (`wte`, `h.{i}.attn.c_attn`, ...);
families/gpt.py maps GPT-1's `tokens_embed`/`positions_embed` and the Conv1D transposes onto them.

forward() takes the cache as a list of (key, value) pairs and returns every present state, so the same
graph serves prefill (past length 0) and decode; nothing is cached inside the module. With `cache_position` the pairs
are fixed-capacity caches instead ([batch, heads, capacity, head_dim], e.g. preallocated once per batch size on a GPU
so that a decode step has static shapes for CUDA graphs): the step's keys and values are written into them in place at
those positions (no concatenation, no growth), the attention mask spans the capacity (0 past the written positions),
and the caches themselves come back as the present states. The attention is the same masked softmax over more keys,
whose extra keys are masked.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LayerNorm32, Linear32, activation, init_normal_, masked_softmax_attention, merge_heads, split_heads

Variant = Literal["gpt1", "gpt2"]
Head = Literal["lm", "sequence-classification", "double-heads"]
HEADS: tuple[str, ...] = ("lm", "sequence-classification", "double-heads")


@dataclass(frozen=True)
class GPTConfig:
    variant: Variant = "gpt2"
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # MLP width; 4 * n_embd when None
    activation: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    head: Head = "lm"
    num_labels: int = 2  # sequence-classification classes; double-heads scores one per choice
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    initializer_range: float = 0.02
    extra: dict = field(default_factory=dict, compare=False)  # config.json keys kept for the manifest

    def __post_init__(self):
        if self.variant not in ("gpt1", "gpt2"):
            raise ValueError(f"variant must be 'gpt1' or 'gpt2', got {self.variant!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer_idx: int):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        scale = 1.0 / math.sqrt(cfg.head_dim) if cfg.scale_attn_weights else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            scale /= float(layer_idx + 1)
        self.scale = scale

    def forward(
        self,
        x: torch.Tensor,  # [batch, seq, n_embd]
        past_key: torch.Tensor,  # [batch, heads, past, head_dim]
        past_value: torch.Tensor,  # [batch, heads, past, head_dim]
        allowed: torch.Tensor,  # [batch, 1, seq, past + seq] bool ([batch, 1, seq, capacity] with cache_position)
        cache_position: torch.Tensor | None = None,  # [seq]: write into fixed-capacity caches at these positions
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = self.c_attn(x).split(x.shape[-1], dim=2)  # 3 x [batch, seq, n_embd]
        q = split_heads(q, self.n_head)  # [batch, heads, seq, head_dim]
        if cache_position is None:
            key = torch.cat([past_key, split_heads(k, self.n_head)], dim=2)  # [batch, heads, past + seq, head_dim]
            value = torch.cat([past_value, split_heads(v, self.n_head)], dim=2)
        else:  # in place: [batch, heads, capacity, head_dim], this step's rows at cache_position
            key = past_key.index_copy_(2, cache_position, split_heads(k, self.n_head))
            value = past_value.index_copy_(2, cache_position, split_heads(v, self.n_head))
        out = masked_softmax_attention(q, key, value, allowed, self.scale)  # [batch, heads, seq, head_dim]
        return self.c_proj(merge_heads(out)), key, value


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        inner = cfg.n_inner or 4 * cfg.n_embd
        self.c_fc = nn.Linear(cfg.n_embd, inner)
        self.c_proj = nn.Linear(inner, cfg.n_embd)
        self.act = activation(cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer_idx: int):
        super().__init__()
        self.pre_norm = cfg.variant == "gpt2"
        self.ln_1 = LayerNorm32(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = Attention(cfg, layer_idx)
        self.ln_2 = LayerNorm32(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)

    def forward(self, x, past_key, past_value, allowed, cache_position=None):
        if self.pre_norm:  # GPT-2
            a, key, value = self.attn(self.ln_1(x), past_key, past_value, allowed, cache_position)
            x = x + a
            return x + self.mlp(self.ln_2(x)), key, value
        a, key, value = self.attn(x, past_key, past_value, allowed, cache_position)  # GPT-1: post-norm
        n = self.ln_1(x + a)
        return self.ln_2(n + self.mlp(n)), key, value


class GPT(nn.Module):
    """GPT-1/GPT-2 with one of three heads; see GPTConfig.head."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = LayerNorm32(cfg.n_embd, eps=cfg.layer_norm_epsilon) if cfg.variant == "gpt2" else None
        # The LM head is tied to wte (both variants); the other heads add their own projection.
        if cfg.head == "sequence-classification":
            self.score = Linear32(cfg.n_embd, cfg.num_labels, bias=False)
        elif cfg.head == "double-heads":
            self.multiple_choice_head = Linear32(cfg.n_embd, 1)

    def init_weights(self, seed: int = 0) -> GPT:
        """Random init as the papers do; GPT-2 scales residual projections by 1/sqrt(2 * n_layer)."""
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        init_normal_(self, self.config.initializer_range)
        if self.config.variant == "gpt2":
            std = self.config.initializer_range / math.sqrt(2 * self.config.n_layer)
            for block in self.h:
                nn.init.normal_(block.attn.c_proj.weight, std=std)
                nn.init.normal_(block.mlp.c_proj.weight, std=std)
        torch.random.set_rng_state(gen_state)
        return self

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.h[0].attn.c_attn.weight.dtype

    def empty_past(self, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.config
        shape = (batch, cfg.n_head, 0, cfg.head_dim)
        dev = self.wte.weight.device
        return [
            (torch.zeros(shape, dtype=self.compute_dtype, device=dev),) * 2 for _ in range(cfg.n_layer)
        ]

    def forward(
        self,
        input_ids: torch.Tensor,  # [batch, seq] ([batch, choices, seq] for double-heads)
        attention_mask: torch.Tensor | None = None,  # [batch, past + seq], 1 = real token
        past: list[tuple[torch.Tensor, torch.Tensor]] | None = None,  # n_layer x ([batch, heads, past, head_dim],) * 2
        mc_token_ids: torch.Tensor | None = None,  # [batch, choices], double-heads only
        cache_position: torch.Tensor | None = None,  # [seq]: `past` holds fixed-capacity caches (module docstring)
    ) -> dict[str, torch.Tensor]:
        cfg = self.config
        if cache_position is not None and (cfg.head != "lm" or past is None or attention_mask is None):
            raise ValueError("cache_position needs the lm head, the caches as past and an attention_mask over their capacity")
        lead = input_ids.shape[:-1]
        input_ids = input_ids.reshape(-1, input_ids.shape[-1])  # [batch', seq]
        batch, seq = input_ids.shape
        if past is None:
            past = self.empty_past(batch)
        past_len = past[0][0].shape[2]  # the capacity with cache_position
        if attention_mask is None:
            attention_mask = torch.ones(batch, past_len + seq, dtype=torch.long, device=input_ids.device)
        mask = attention_mask.reshape(batch, -1).long()  # [batch, past + seq] ([batch, capacity] with cache_position)

        # Positions count real tokens only, so a left-padded row starts at 0 like an unpadded one.
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)  # [batch, keys]
        key_pos = torch.arange(mask.shape[1], device=mask.device)  # [keys]
        if cache_position is None:
            positions, query_pos = positions[:, past_len:], key_pos[past_len:]  # [batch, seq], [seq]
        else:  # gathered by index, so the step's shapes do not depend on where it writes
            positions, query_pos = positions[:, cache_position], cache_position
        causal = key_pos[None, :] <= query_pos[:, None]  # [seq, past + seq]
        allowed = causal[None, None] & (mask[:, None, None, :] != 0)  # [batch, 1, seq, past + seq]

        x = (self.wte(input_ids) + self.wpe(positions)).to(self.compute_dtype)  # [batch, seq, n_embd]
        out: dict[str, torch.Tensor] = {}
        presents: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self.h):
            x, key, value = block(x, past[i][0], past[i][1], allowed, cache_position)
            presents[f"present.{i}.key"] = key
            presents[f"present.{i}.value"] = value
        if self.ln_f is not None:
            x = self.ln_f(x)

        if cfg.head == "sequence-classification":
            # The rightmost real token, which is the last column under left padding.
            last = (key_pos[past_len:][None, :] * mask[:, past_len:]).argmax(-1)  # [batch]
            pooled = x[torch.arange(batch, device=x.device), last]  # [batch, n_embd]
            out["logits"] = self.score(pooled)  # [batch, num_labels], fp32
            return out
        logits = F.linear(x.float(), self.wte.weight.float())  # [batch, seq, vocab], fp32 by contract
        out["logits"] = logits.reshape(*lead, seq, -1)
        if cfg.head == "double-heads":
            if mc_token_ids is None:
                mc_token_ids = torch.full(lead, seq - 1, dtype=torch.long, device=x.device)
            idx = mc_token_ids.reshape(-1, 1, 1).expand(-1, 1, x.shape[-1])  # [batch', 1, n_embd]
            summary = x.gather(1, idx).squeeze(1).float()  # [batch', n_embd]
            mc = self.multiple_choice_head(summary)
            out["mc_logits"] = mc.reshape(lead)  # [batch, choices]
            return out
        out.update(presents)
        return out
