"""BERT and its variants (RoBERTa, ALBERT, ELECTRA): bidirectional encoders with their task heads.

The variants are configuration, not copies. What each one changes:
- RoBERTa: position ids count real tokens from `pad_token_id + 1` (padding keeps the padding position), and
  the sequence classifier is a dense + tanh + projection on the first token.
- ALBERT: a factorised embedding (size `embedding_size`, projected to `hidden_size`) and layers shared
  across depth (`num_hidden_groups` groups of `inner_group_num` layers each).
- ELECTRA: an embedding projection when `embedding_size` differs from `hidden_size`, no pooler, the
  replaced-token discriminator head, and a GELU sequence classifier.

Parameter names follow BERT's checkpoints with the `bert.` prefix dropped; families/bert.py maps the other
variants' names onto them. Every head returns transformers' output names (`last_hidden_state`, `logits`,
`start_logits`, ...). Heads compute in fp32 whatever the compute dtype (the logits contract in DESIGN.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from .layers import (
    LayerNorm32,
    Linear32,
    activation,
    biased_softmax_attention,
    init_normal_,
    merge_heads,
    padding_bias,
    split_heads,
)

Variant = Literal["bert", "roberta", "albert", "electra"]
VARIANTS: tuple[str, ...] = ("bert", "roberta", "albert", "electra")
HEADS: tuple[str, ...] = (
    "base",  # last_hidden_state (+ pooler_output where the variant has a pooler)
    "masked-lm",
    "next-sentence",  # BERT only
    "pretraining",  # BERT: MLM + NSP; ALBERT: MLM + sentence order; ELECTRA: the discriminator
    "sequence-classification",
    "token-classification",
    "question-answering",
)


@dataclass(frozen=True)
class BertConfig:
    variant: Variant = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    embedding_size: int | None = None  # ALBERT and ELECTRA; hidden_size when None
    num_hidden_groups: int = 1  # ALBERT: groups of shared layers
    inner_group_num: int = 1  # ALBERT: layers per group
    add_pooler: bool = True  # a `*Model` checkpoint may come without its pooler
    head: str = "base"
    num_labels: int = 2
    initializer_range: float = 0.02

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.head == "next-sentence" and self.variant != "bert":
            raise ValueError("the next-sentence head exists for BERT only")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}")
        if self.num_hidden_layers % self.num_hidden_groups:
            raise ValueError(f"num_hidden_layers {self.num_hidden_layers} is not a multiple of num_hidden_groups {self.num_hidden_groups}")

    @property
    def emb_size(self) -> int:
        return self.embedding_size or self.hidden_size

    @property
    def has_summary(self) -> bool:
        """Whether the first token goes through dense + activation: the pooler or the classifier's body."""
        if self.head == "base":
            return self.add_pooler and self.variant != "electra"
        sentence_pair = self.head == "pretraining" and self.variant != "electra"
        return self.head in ("sequence-classification", "next-sentence") or sentence_pair

    @property
    def summary_activation(self) -> str:
        """The activation between the first token's dense layer and the classifier."""
        return "gelu" if self.variant == "electra" else "tanh"

    @property
    def mlm_activation(self) -> str:
        # RoBERTa's and ELECTRA's LM heads use exact GELU whatever hidden_act says.
        return "gelu" if self.variant in ("roberta", "electra") else self.hidden_act

    @property
    def position_offset(self) -> int:
        return self.pad_token_id + 1 if self.variant == "roberta" else 0

    def to_dict(self) -> dict:
        return asdict(self)


ACTIVATIONS_EXTRA = {"tanh": torch.tanh}


def act_fn(name: str):
    return ACTIVATIONS_EXTRA.get(name) or activation(name)


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.emb_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.emb_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.emb_size)
        self.LayerNorm = LayerNorm32(cfg.emb_size, eps=cfg.layer_norm_eps)
        self.variant = cfg.variant
        self.pad_token_id = cfg.pad_token_id

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:  # [batch, seq]
        if self.variant == "roberta":
            # Real tokens count from pad + 1; padding tokens sit at the padding position (as transformers).
            real = (input_ids != self.pad_token_id).long()
            return real.cumsum(-1) * real + self.pad_token_id
        return torch.arange(input_ids.shape[1], device=input_ids.device)[None, :].expand_as(input_ids)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        x = self.word_embeddings(input_ids) + self.position_embeddings(self.position_ids(input_ids))
        x = x + self.token_type_embeddings(token_type_ids)  # [batch, seq, emb]
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.n_head = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:  # [batch, seq, hidden]
        q, k, v = (split_heads(p(x), self.n_head) for p in (self.query, self.key, self.value))  # [batch, heads, seq, d]
        return merge_heads(biased_softmax_attention(q, k, v, bias))


class DenseResidualNorm(nn.Module):
    """dense(x) + residual, then LayerNorm: BERT's `*.output` blocks."""

    def __init__(self, d_in: int, d_out: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = LayerNorm32(d_out, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = DenseResidualNorm(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, bias), x)


class Intermediate(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = activation(cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class Layer(nn.Module):
    """Post-LayerNorm encoder layer: attention, then the MLP, each with a residual and a LayerNorm."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = DenseResidualNorm(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        a = self.attention(x, bias)
        return self.output(self.intermediate(a), a)


class Encoder(nn.Module):
    """The layer stack. ALBERT keeps one set of weights per group and runs each group over several depths."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        n_distinct = cfg.num_hidden_groups * cfg.inner_group_num if cfg.variant == "albert" else cfg.num_hidden_layers
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(n_distinct))
        if cfg.variant == "albert":
            per_group = cfg.num_hidden_layers // cfg.num_hidden_groups
            self.order = [
                (i // per_group) * cfg.inner_group_num + j
                for i in range(cfg.num_hidden_layers)
                for j in range(cfg.inner_group_num)
            ]
        else:
            self.order = list(range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        for i in self.order:
            x = self.layer[i](x, bias)
        return x


class Summary(nn.Module):
    """The first token through dense + activation: BERT's pooler and RoBERTa/ELECTRA's classifier body."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = Linear32(cfg.hidden_size, cfg.hidden_size)
        self.act = act_fn(cfg.summary_activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [batch, seq, hidden] -> [batch, hidden]
        return self.act(self.dense(x[:, 0]))


class MaskedLMHead(nn.Module):
    """dense + activation + LayerNorm, then the decoder (tied to the word embeddings in every variant)."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        d_transform = cfg.emb_size if cfg.variant in ("albert", "electra") else cfg.hidden_size
        self.dense = Linear32(cfg.hidden_size, d_transform)
        self.act = act_fn(cfg.mlm_activation)
        self.LayerNorm = LayerNorm32(d_transform, eps=cfg.layer_norm_eps)
        self.decoder = Linear32(d_transform, cfg.vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [batch, seq, hidden] -> [batch, seq, vocab]
        return self.decoder(self.LayerNorm(self.act(self.dense(x))))


class Discriminator(nn.Module):
    """ELECTRA's replaced-token detector: one logit per token."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.dense = Linear32(cfg.hidden_size, cfg.hidden_size)
        self.act = activation(cfg.hidden_act)
        self.dense_prediction = Linear32(cfg.hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [batch, seq, hidden] -> [batch, seq]
        return self.dense_prediction(self.act(self.dense(x))).squeeze(-1)


class Bert(nn.Module):
    """Encoder + one head; see BertConfig.head for the outputs each head returns."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.embeddings_project = nn.Linear(cfg.emb_size, cfg.hidden_size) if cfg.emb_size != cfg.hidden_size else None
        self.encoder = Encoder(cfg)
        head, electra = cfg.head, cfg.variant == "electra"
        if cfg.has_summary:
            self.pooler = Summary(cfg)
        if head == "masked-lm" or (head == "pretraining" and not electra):
            self.mlm = MaskedLMHead(cfg)
        if head == "next-sentence" or (head == "pretraining" and not electra):
            # Next sentence (BERT, always 2 classes) or sentence order (ALBERT, num_labels classes).
            self.nsp = Linear32(cfg.hidden_size, cfg.num_labels if cfg.variant == "albert" else 2)
        if head in ("sequence-classification", "token-classification"):
            self.classifier = Linear32(cfg.hidden_size, cfg.num_labels)
        if head == "question-answering":
            self.qa_outputs = Linear32(cfg.hidden_size, 2)
        if head == "pretraining" and electra:
            self.discriminator = Discriminator(cfg)

    def init_weights(self, seed: int = 0) -> Bert:
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        init_normal_(self, self.config.initializer_range)
        if hasattr(self, "mlm"):
            with torch.no_grad():
                self.mlm.decoder.weight.copy_(self.embeddings.word_embeddings.weight)  # tied, as trained models
        torch.random.set_rng_state(gen_state)
        return self

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.encoder.layer[0].attention.self.query.weight.dtype

    def forward(
        self,
        input_ids: torch.Tensor,  # [batch, seq]
        attention_mask: torch.Tensor | None = None,  # [batch, seq], 1 = real token
        token_type_ids: torch.Tensor | None = None,  # [batch, seq]
    ) -> dict[str, torch.Tensor]:
        cfg = self.config
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        bias = padding_bias(attention_mask)  # [batch, 1, 1, seq]: 0 for keys a query may attend
        x = self.embeddings(input_ids, token_type_ids).to(self.compute_dtype)  # [batch, seq, emb]
        if self.embeddings_project is not None:
            x = self.embeddings_project(x)  # [batch, seq, hidden]
        x = self.encoder(x, bias)  # [batch, seq, hidden]

        head = cfg.head
        pooled = self.pooler(x) if hasattr(self, "pooler") else None  # [batch, hidden], fp32
        if head == "base":
            out = {"last_hidden_state": x}
            if pooled is not None:
                out["pooler_output"] = pooled.to(x.dtype)
            return out
        if head == "masked-lm":
            return {"logits": self.mlm(x)}
        if head == "next-sentence":
            return {"logits": self.nsp(pooled)}
        if head == "pretraining":
            if cfg.variant == "electra":
                return {"logits": self.discriminator(x)}
            second = "sop_logits" if cfg.variant == "albert" else "seq_relationship_logits"
            return {"prediction_logits": self.mlm(x), second: self.nsp(pooled)}
        if head == "sequence-classification":
            return {"logits": self.classifier(pooled)}
        if head == "token-classification":
            return {"logits": self.classifier(x)}
        start, end = self.qa_outputs(x).unbind(-1)  # 2 x [batch, seq]
        return {"start_logits": start, "end_logits": end}
