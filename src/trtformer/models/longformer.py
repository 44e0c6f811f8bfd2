"""Longformer: a RoBERTa encoder whose self-attention is a sliding window with global tokens.

Each layer's attention is one call of the custom op `trtformer::sliding_window_attention` (ops/sliding_window.py),
which takes any sequence length: unlike transformers, the model does not pad to a multiple of the window (the op's
output equals transformers' at the input length). Embeddings, the attention output, the MLP blocks and the heads are
bert.py's, configured as RoBERTa (positions count real tokens from pad_token_id + 1).

Parameter names follow transformers' `Longformer*` checkpoints (`longformer.embeddings.*`,
`longformer.encoder.layer.{i}.attention.self.{query,key,value,query_global,key_global,value_global}`,
`classifier.dense`/`out_proj`, `qa_outputs`); families/longformer.py renames the few the bert.py blocks name otherwise
(`lm_head.layer_norm`, `lm_head.bias`) and adds `longformer.` to a bare model's keys.

Dilation (per layer and head, `attention_dilation`) is an extension: transformers has none, and a checkpoint
without the key gets 1 everywhere.

Global attention comes in as `global_attention_mask`. When it is None the heads use transformers' defaults:
the first token for sequence classification, the tokens before the first `sep_token_id` for question answering,
none otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from ..ops.sliding_window import check_attributes, sliding_window_attention
from . import bert
from .layers import Linear32, init_normal_, inverse_sqrt, merge_heads, split_heads

Head = Literal["base", "masked-lm", "sequence-classification", "token-classification", "question-answering"]
HEADS: tuple[str, ...] = ("base", "masked-lm", "sequence-classification", "token-classification", "question-answering")
DEFAULT_WINDOW = 512  # transformers' default attention_window


@dataclass(frozen=True)
class LongformerConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 1
    sep_token_id: int = 2
    attention_window: tuple[int, ...] | int = DEFAULT_WINDOW  # keys w/2 each side; one per layer (an int for all)
    attention_dilation: tuple[tuple[int, ...], ...] | None = None  # [layer][head]; None = 1 everywhere
    head: Head = "base"
    num_labels: int = 2
    initializer_range: float = 0.02

    def __post_init__(self):
        # Ints and JSON lists become per-layer tuples, so configs stay hashable and compare equal.
        n = self.num_hidden_layers
        window = self.attention_window
        window = (window,) * n if isinstance(window, int) else tuple(window)
        dilation = self.attention_dilation
        dilation = ((1,) * self.num_attention_heads,) * n if dilation is None else tuple(map(tuple, dilation))
        object.__setattr__(self, "attention_window", window)
        object.__setattr__(self, "attention_dilation", dilation)
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if len(window) != n or len(dilation) != n:
            raise ValueError(f"attention_window and attention_dilation need one entry per layer ({n})")
        for w, d in zip(window, dilation, strict=True):
            check_attributes(self.num_attention_heads, w, list(d))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def bert_config(self) -> bert.BertConfig:
        """The RoBERTa configuration of the shared blocks (embeddings, MLP, heads)."""
        shared = {k: v for k, v in asdict(self).items() if k in bert.BertConfig.__dataclass_fields__}
        return bert.BertConfig(variant="roberta", **shared)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["attention_window"] = list(self.attention_window)
        out["attention_dilation"] = [list(heads) for heads in self.attention_dilation]
        return out


class SelfAttention(nn.Module):
    """Local and global projections; the attention itself is the custom op."""

    def __init__(self, cfg: LongformerConfig, layer_idx: int):
        super().__init__()
        width = cfg.hidden_size
        self.n_head = cfg.num_attention_heads
        self.window = cfg.attention_window[layer_idx]
        self.dilation = list(cfg.attention_dilation[layer_idx])
        self.scale = inverse_sqrt(cfg.head_dim)
        self.query, self.key, self.value = (nn.Linear(width, width) for _ in range(3))
        self.query_global, self.key_global, self.value_global = (nn.Linear(width, width) for _ in range(3))

    def forward(
        self,
        x: torch.Tensor,  # [batch, seq, hidden]
        real: torch.Tensor,  # [batch, seq] bool
        is_global: torch.Tensor,  # [batch, seq] bool
    ) -> torch.Tensor:  # [batch, seq, hidden]
        projections = (self.query, self.key, self.value, self.query_global, self.key_global, self.value_global)
        qkv = [split_heads(p(x), self.n_head) for p in projections]  # 6 x [batch, heads, seq, head_dim]
        out = sliding_window_attention(*qkv, real, is_global, self.window, self.dilation, self.scale)
        return merge_heads(out)


class Attention(nn.Module):
    def __init__(self, cfg: LongformerConfig, layer_idx: int):
        super().__init__()
        self.self = SelfAttention(cfg, layer_idx)
        self.output = bert.DenseResidualNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, real: torch.Tensor, is_global: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, real, is_global), x)


class Layer(nn.Module):
    def __init__(self, cfg: LongformerConfig, layer_idx: int):
        super().__init__()
        self.attention = Attention(cfg, layer_idx)
        self.intermediate = bert.Intermediate(cfg.bert_config())
        self.output = bert.DenseResidualNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, real: torch.Tensor, is_global: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, real, is_global)
        return self.output(self.intermediate(a), a)


class Encoder(nn.Module):
    def __init__(self, cfg: LongformerConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg, i) for i in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, real: torch.Tensor, is_global: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, real, is_global)  # [batch, seq, hidden]
        return x


class LongformerModel(nn.Module):
    """Embeddings and the layer stack (transformers' `longformer.` submodule); the pooler for the bare model."""

    def __init__(self, cfg: LongformerConfig):
        super().__init__()
        self.embeddings = bert.Embeddings(cfg.bert_config())
        self.encoder = Encoder(cfg)
        if cfg.head == "base":
            self.pooler = bert.Summary(cfg.bert_config())  # dense + tanh on the first token


class ClassificationHead(bert.Summary):
    """transformers' LongformerClassificationHead: the first token through dense + tanh, then out_proj."""

    def __init__(self, cfg: LongformerConfig):
        super().__init__(cfg.bert_config())
        self.out_proj = Linear32(cfg.hidden_size, cfg.num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [batch, seq, hidden] -> [batch, num_labels]
        return self.out_proj(super().forward(x))


class Longformer(nn.Module):
    """Longformer encoder + one head; outputs carry transformers' names (see LongformerConfig.head)."""

    def __init__(self, cfg: LongformerConfig):
        super().__init__()
        self.config = cfg
        self.longformer = LongformerModel(cfg)
        if cfg.head == "masked-lm":
            self.lm_head = bert.MaskedLMHead(cfg.bert_config())
        elif cfg.head == "sequence-classification":
            self.classifier = ClassificationHead(cfg)
        elif cfg.head == "token-classification":
            self.classifier = Linear32(cfg.hidden_size, cfg.num_labels)
        elif cfg.head == "question-answering":
            self.qa_outputs = Linear32(cfg.hidden_size, 2)

    def init_weights(self, seed: int = 0) -> Longformer:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        init_normal_(self, self.config.initializer_range)
        if self.config.head == "masked-lm":
            with torch.no_grad():  # tied, as in trained checkpoints
                self.lm_head.decoder.weight.copy_(self.longformer.embeddings.word_embeddings.weight)
        torch.random.set_rng_state(gen_state)
        return self

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.longformer.encoder.layer[0].attention.self.query.weight.dtype

    def default_global_mask(self, input_ids: torch.Tensor) -> torch.Tensor:  # [batch, seq] bool
        """transformers' per-head default when no global_attention_mask is given (shape-static, no sync)."""
        if self.config.head == "sequence-classification":
            return torch.arange(input_ids.shape[1], device=input_ids.device)[None, :].expand_as(input_ids) == 0
        if self.config.head == "question-answering":
            return (input_ids == self.config.sep_token_id).long().cumsum(-1) == 0  # the question, before the first sep
        return torch.zeros_like(input_ids, dtype=torch.bool)

    def forward(
        self,
        input_ids: torch.Tensor,  # [batch, seq]
        attention_mask: torch.Tensor | None = None,  # [batch, seq], 1 = real token
        global_attention_mask: torch.Tensor | None = None,  # [batch, seq], 1 = global token
        token_type_ids: torch.Tensor | None = None,  # [batch, seq]
    ) -> dict[str, torch.Tensor]:
        cfg = self.config
        real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask != 0
        if global_attention_mask is None:
            global_attention_mask = self.default_global_mask(input_ids)
        is_global = (global_attention_mask != 0) & real  # [batch, seq]; padding is never global (as transformers)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)

        x = self.longformer.embeddings(input_ids, token_type_ids).to(self.compute_dtype)  # [batch, seq, hidden]
        x = self.longformer.encoder(x, real, is_global)  # [batch, seq, hidden]

        if cfg.head == "base":
            return {"last_hidden_state": x, "pooler_output": self.longformer.pooler(x).to(x.dtype)}
        if cfg.head == "masked-lm":
            return {"logits": self.lm_head(x)}  # [batch, seq, vocab], fp32
        if cfg.head in ("sequence-classification", "token-classification"):
            return {"logits": self.classifier(x)}  # [batch, num_labels] or [batch, seq, num_labels], fp32
        start, end = self.qa_outputs(x).unbind(-1)  # 2 x [batch, seq], fp32
        return {"start_logits": start, "end_logits": end}
