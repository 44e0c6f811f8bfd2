"""Transformer-XL: relative-position attention over a segment plus a memory of earlier segments' hidden states.

Parameter names follow Hugging Face's `TransfoXLLMHeadModel` without the `transformer.` prefix (`word_emb.*`,
`layers.{i}.dec_attn.*`, `layers.{i}.pos_ff.*`, `crit.*`), so checkpoints load by a rename. Each layer's
attention, memory update included, is one call of the custom op `trtformer::rel_position_attention`.

forward() is batch-first at its edges (input_ids [batch, seg], outputs [batch, seg, vocab]); inside, as in HF,
hidden states are time-first so that they concatenate with the memory, whose layout [mem_len, batch, d_model]
is the state I/O contract. Memory goes in and comes out explicitly; length 0 is the first segment. (HF, given
no memory, starts from mem_len zero rows, which the queries attend to; pass `zero_mems` to reproduce that.)

The head is HF's projected adaptive softmax: with cutoffs it returns `log_probs` (head cluster plus tail
clusters); without cutoffs it is a plain softmax layer and returns its `logits`. Both are fp32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..ops.rel_position import rel_position_attention
from .layers import LayerNorm32


@dataclass(frozen=True)
class TransfoXLConfig:
    vocab_size: int = 267735
    cutoffs: tuple[int, ...] = (20000, 40000, 200000)  # adaptive input/softmax cluster bounds; () = plain softmax
    d_model: int = 1024
    d_embed: int = 1024  # embedding width of the first cluster; cluster i has d_embed // div_val**i
    n_head: int = 16
    d_head: int = 64
    d_inner: int = 4096
    div_val: int = 4
    pre_lnorm: bool = False
    n_layer: int = 18
    mem_len: int = 1600
    clamp_len: int = 1000  # distances beyond it share one encoding; <= 0 disables
    same_length: bool = True  # every query attends to mem_len keys
    untie_r: bool = True  # u and v per layer (True) or one pair shared by all layers
    tie_word_embeddings: bool = True  # crit.out_layers[i].weight is word_emb.emb_layers[i].weight
    tie_projs: tuple[bool, ...] | None = None  # per cluster; None: HF's default, all but the first
    layer_norm_epsilon: float = 1e-5
    init_std: float = 0.02
    proj_init_std: float = 0.01
    eos_token_id: int | None = 0
    extra: dict = field(default_factory=dict, compare=False)  # config.json keys kept for the manifest

    def __post_init__(self):
        # Lists from JSON (manifest, config.json) become tuples, so configs stay hashable and compare equal.
        object.__setattr__(self, "cutoffs", tuple(self.cutoffs))
        ties = (False,) + (True,) * len(self.cutoffs) if self.tie_projs is None else tuple(self.tie_projs)
        object.__setattr__(self, "tie_projs", ties)
        if any(lo >= hi for lo, hi in self.cluster_bounds()):
            raise ValueError(f"cutoffs {list(self.cutoffs)} must increase strictly inside (0, {self.vocab_size})")
        if len(self.tie_projs) != len(self.cutoffs) + 1:
            raise ValueError(f"tie_projs needs {len(self.cutoffs) + 1} entries, one a cluster: {list(self.tie_projs)}")
        if self.div_val < 1 or self.d_embed // self.div_val ** len(self.cutoffs) < 1:
            raise ValueError(f"div_val {self.div_val} leaves the last cluster no width (d_embed {self.d_embed})")
        if self.d_model % 2:
            raise ValueError(f"d_model {self.d_model} must be even: the position encodings pair sines and cosines")
        if self.mem_len < 0:
            raise ValueError(f"mem_len must be >= 0, got {self.mem_len}")

    @property
    def n_clusters(self) -> int:
        return len(self.cutoffs)

    @property
    def lm_output(self) -> str:
        """The name of the head's output: adaptive softmax gives log-probabilities, a plain softmax logits."""
        return "log_probs" if self.cutoffs else "logits"

    def cluster_bounds(self) -> list[tuple[int, int]]:
        """[first token, end token) of the head cluster and each tail cluster."""
        return list(pairwise((0, *self.cutoffs, self.vocab_size)))

    def cluster_dims(self) -> list[tuple[int, int, int]]:
        """(first token, end token, width) per embedding table; div_val 1 keeps one table for the whole vocabulary."""
        if self.div_val == 1:
            return [(0, self.vocab_size, self.d_embed)]
        return [(lo, hi, self.d_embed // self.div_val**i) for i, (lo, hi) in enumerate(self.cluster_bounds())]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def tied_weights(cfg: TransfoXLConfig) -> list[tuple[str, str]]:
    """(output weight, input weight) name pairs that are one parameter, as HF's tie_weights makes them."""
    pairs = []
    if cfg.tie_word_embeddings:
        tables = range(len(cfg.cluster_dims()))
        pairs += [(f"crit.out_layers.{i}.weight", f"word_emb.emb_layers.{i}.weight") for i in tables]
    if cfg.div_val != 1 or cfg.d_model != cfg.d_embed:  # otherwise there are no projections
        pairs += [
            (f"crit.out_projs.{i}", f"word_emb.emb_projs.{0 if cfg.div_val == 1 else i}")
            for i, tie in enumerate(cfg.tie_projs)
            if tie
        ]
    return pairs


def _projections(cfg: TransfoXLConfig, count: int) -> nn.ParameterList:
    """[d_model, d_emb_i] per cluster, or none when div_val is 1 and the widths agree."""
    if cfg.div_val == 1 and cfg.d_model == cfg.d_embed:
        return nn.ParameterList()
    widths = [d for _, _, d in cfg.cluster_dims()]  # div_val 1: one width, shared by every cluster's projection
    return nn.ParameterList(
        nn.Parameter(torch.empty(cfg.d_model, widths[min(i, len(widths) - 1)])) for i in range(count)
    )


class AdaptiveEmbedding(nn.Module):
    """Token clusters with narrower embeddings for rarer tokens, each projected to d_model, scaled by sqrt(d_model)."""

    def __init__(self, cfg: TransfoXLConfig):
        super().__init__()
        self.clusters = cfg.cluster_dims()
        self.scale = cfg.d_model**0.5
        self.emb_layers = nn.ModuleList(nn.Embedding(hi - lo, d) for lo, hi, d in self.clusters)
        self.emb_projs = _projections(cfg, len(self.clusters))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # [seg, batch] -> [seg, batch, d_model] fp32
        out = None
        for i, (lo, hi, _) in enumerate(self.clusters):
            # Every cluster embeds every token (ids clamped into range) and a select keeps the owner's row:
            # no data-dependent gather of the tokens per cluster, so the graph has static structure.
            local = (ids - lo).clamp(0, hi - lo - 1)  # [seg, batch]
            emb = F.embedding(local, self.emb_layers[i].weight.float())  # [seg, batch, d_emb_i]
            if len(self.emb_projs):
                emb = F.linear(emb, self.emb_projs[i].float())  # [seg, batch, d_model]
            out = emb if out is None else torch.where(((ids >= lo) & (ids < hi))[..., None], emb, out)
        return out * self.scale


class RelAttention(nn.Module):
    """HF's RelPartialLearnableMultiHeadAttn: the weights of one call of the rel_position_attention op."""

    def __init__(self, cfg: TransfoXLConfig):
        super().__init__()
        self.cfg = cfg
        hd = cfg.n_head * cfg.d_head
        self.qkv_net = nn.Linear(cfg.d_model, 3 * hd, bias=False)
        self.r_net = nn.Linear(cfg.d_model, hd, bias=False)
        self.o_net = nn.Linear(hd, cfg.d_model, bias=False)
        self.layer_norm = LayerNorm32(cfg.d_model, eps=cfg.layer_norm_epsilon)
        if cfg.untie_r:
            self.r_w_bias = nn.Parameter(torch.empty(cfg.n_head, cfg.d_head))  # u
            self.r_r_bias = nn.Parameter(torch.empty(cfg.n_head, cfg.d_head))  # v

    def forward(
        self,
        x: torch.Tensor,  # [seg, batch, d_model]
        mem: torch.Tensor,  # [mlen, batch, d_model]
        r_w_bias: torch.Tensor,  # [n_head, d_head], this layer's or the shared u
        r_r_bias: torch.Tensor,  # [n_head, d_head], v
    ) -> tuple[torch.Tensor, torch.Tensor]:  # [seg, batch, d_model], [min(mem_len, mlen + seg), batch, d_model]
        c = self.cfg
        ln = self.layer_norm
        return rel_position_attention(
            x, mem, self.qkv_net.weight, self.r_net.weight, r_w_bias, r_r_bias, self.o_net.weight, ln.weight, ln.bias,
            c.n_head, c.d_head, c.mem_len, c.same_length, c.clamp_len, c.pre_lnorm, c.layer_norm_epsilon,
        )  # fmt: skip


class PositionwiseFF(nn.Module):
    def __init__(self, cfg: TransfoXLConfig):
        super().__init__()
        self.pre_lnorm = cfg.pre_lnorm
        # Indices 0 and 3 as in HF's Sequential(Linear, ReLU, Dropout, Linear, Dropout), so the names match.
        self.CoreNet = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.d_inner), nn.ReLU(), nn.Identity(), nn.Linear(cfg.d_inner, cfg.d_model)
        )
        self.layer_norm = LayerNorm32(cfg.d_model, eps=cfg.layer_norm_epsilon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [seg, batch, d_model]
        if self.pre_lnorm:
            return x + self.CoreNet(self.layer_norm(x))
        return self.layer_norm(x + self.CoreNet(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransfoXLConfig):
        super().__init__()
        self.dec_attn = RelAttention(cfg)
        self.pos_ff = PositionwiseFF(cfg)

    def forward(self, x, mem, r_w_bias, r_r_bias):
        a, new_mem = self.dec_attn(x, mem, r_w_bias, r_r_bias)
        return self.pos_ff(a), new_mem


class AdaptiveLogSoftmax(nn.Module):
    """HF's ProjectedAdaptiveLogSoftmax without labels: log-probabilities of every token, in fp32.

    The head cluster scores the first cutoffs[0] tokens plus one logit per tail cluster; a token in tail
    cluster c gets log p(cluster c) + log p(token | cluster c). With no cutoffs it is one linear layer.
    """

    def __init__(self, cfg: TransfoXLConfig):
        super().__init__()
        self.cfg = cfg
        self.bounds = cfg.cluster_bounds()
        if cfg.n_clusters:
            self.cluster_weight = nn.Parameter(torch.empty(cfg.n_clusters, cfg.d_embed))
            self.cluster_bias = nn.Parameter(torch.empty(cfg.n_clusters))
        self.out_layers = nn.ModuleList(nn.Linear(d, hi - lo) for lo, hi, d in cfg.cluster_dims())
        self.out_projs = _projections(cfg, len(self.bounds))

    def cluster_logits(self, h: torch.Tensor, i: int) -> torch.Tensor:  # [..., d_model] fp32 -> [..., size_i]
        lo, hi = self.bounds[i]
        layer = self.out_layers[0 if self.cfg.div_val == 1 else i]
        weight, bias = layer.weight.float(), layer.bias.float()  # [tokens, d_emb_i], [tokens]
        if self.cfg.div_val == 1 and self.cfg.n_clusters:
            weight, bias = weight[lo:hi], bias[lo:hi]
        if i == 0 and self.cfg.n_clusters:
            weight = torch.cat([weight, self.cluster_weight.float()])  # [cutoffs[0] + n_clusters, d_embed]
            bias = torch.cat([bias, self.cluster_bias.float()])
        if len(self.out_projs):
            h = h @ self.out_projs[i].float()  # [..., d_emb_i]
        return F.linear(h, weight, bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [..., d_model] -> [..., vocab] fp32
        h = h.float()
        if not self.cfg.n_clusters:
            return self.cluster_logits(h, 0)  # logits
        shortlist = self.cfg.cutoffs[0]
        head = torch.log_softmax(self.cluster_logits(h, 0), dim=-1)  # [..., shortlist + n_clusters]
        parts = [head[..., :shortlist]]
        for i in range(1, len(self.bounds)):
            tail = torch.log_softmax(self.cluster_logits(h, i), dim=-1)  # [..., cluster size]
            parts.append(head[..., shortlist + i - 1, None] + tail)
        return torch.cat(parts, dim=-1)


class TransfoXL(nn.Module):
    """Transformer-XL language model (HF's TransfoXLLMHeadModel) with explicit memory I/O."""

    def __init__(self, cfg: TransfoXLConfig):
        super().__init__()
        self.config = cfg
        self.word_emb = AdaptiveEmbedding(cfg)
        if not cfg.untie_r:  # one u, v for all layers, at the top as in HF
            self.r_w_bias = nn.Parameter(torch.empty(cfg.n_head, cfg.d_head))
            self.r_r_bias = nn.Parameter(torch.empty(cfg.n_head, cfg.d_head))
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layer))
        self.crit = AdaptiveLogSoftmax(cfg)
        for target, source in tied_weights(cfg):  # share the Parameter objects, as HF's tie_weights does
            owner, _, name = target.rpartition(".")
            setattr(self.get_submodule(owner), name, self.get_parameter(source))

    def init_weights(self, seed: int = 0) -> TransfoXL:
        """HF's "normal" init: weights, u and v N(0, init_std); projections N(0, proj_init_std); LN N(1, init_std)."""
        cfg = self.config
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        for name, p in self.named_parameters():  # a tied parameter comes once, under its input name
            leaf = name.rsplit(".", 1)[-1]
            if "projs." in name:
                nn.init.normal_(p, 0.0, cfg.proj_init_std)
            elif leaf.endswith("bias") and leaf not in ("r_w_bias", "r_r_bias"):  # Linear, LN and cluster biases
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, 1.0 if "layer_norm" in name else 0.0, cfg.init_std)
        torch.random.set_rng_state(gen_state)
        return self

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.layers[0].dec_attn.qkv_net.weight.dtype

    def empty_mems(self, batch: int, length: int = 0) -> list[torch.Tensor]:
        """n_layer x [length, batch, d_model] zeros; length 0 is the first segment."""
        shape = (length, batch, self.config.d_model)
        dev = self.layers[0].dec_attn.qkv_net.weight.device
        return [torch.zeros(shape, dtype=self.compute_dtype, device=dev) for _ in range(self.config.n_layer)]

    def zero_mems(self, batch: int) -> list[torch.Tensor]:
        """What HF's init_mems starts from: mem_len rows of zeros, which do take part in the attention."""
        return self.empty_mems(batch, self.config.mem_len)

    def check_inputs(self, input_ids: torch.Tensor, mems: list[torch.Tensor], values: bool = True) -> None:
        """Shapes and dtypes; with `values` the ids' range too, which reads the ids on the host."""
        cfg = self.config
        if input_ids.dim() != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise InputError(f"input_ids must be integer [batch, seg], got {input_ids.dtype} {tuple(input_ids.shape)}")
        if values and input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= cfg.vocab_size):
            bad = input_ids[(input_ids < 0) | (input_ids >= cfg.vocab_size)][0].item()
            raise InputError(f"input_ids holds token id {bad}, outside the vocabulary [0, {cfg.vocab_size})")
        if len(mems) != cfg.n_layer:
            raise InputError(f"mems has {len(mems)} tensors, the model has {cfg.n_layer} layers")
        batch = input_ids.shape[0]
        for i, m in enumerate(mems):  # mems.0 is checked first, so its length is safe to read after
            if m.dim() != 3 or m.shape[1:] != (batch, cfg.d_model) or m.shape[0] != mems[0].shape[0]:
                raise InputError(
                    f"mems.{i} has shape {tuple(m.shape)}; expected [mem_len, {batch}, {cfg.d_model}] "
                    "with one mem_len for every layer"
                )
            if m.dtype != self.compute_dtype:
                raise InputError(f"mems.{i} is {m.dtype}; the model computes in {self.compute_dtype}")

    def forward(
        self,
        input_ids: torch.Tensor,  # [batch, seg]
        mems: list[torch.Tensor] | None = None,  # n_layer x [mlen, batch, d_model]; None = mlen 0
        check_values: bool = True,
    ) -> dict[str, torch.Tensor]:
        """check_values=False skips the ids' range check, for callers that checked them on the host (the runtime's
        Session does): on a GPU the check waits for the device every segment, and a CUDA graph cannot capture it."""
        if mems is None:
            mems = self.empty_mems(input_ids.shape[0])
        if not torch.compiler.is_compiling():  # checks are eager-only: export must not branch on data
            self.check_inputs(input_ids, mems, values=check_values)
        shared = (self.r_w_bias, self.r_r_bias) if not self.config.untie_r else None
        x = self.word_emb(input_ids.t()).to(self.compute_dtype)  # [seg, batch, d_model], time-first as the memory
        new_mems: dict[str, torch.Tensor] = {}
        for i, layer in enumerate(self.layers):
            attn = layer.dec_attn
            u, v = shared or (attn.r_w_bias, attn.r_r_bias)
            x, new_mems[f"new_mems.{i}"] = layer(x, mems[i], u, v)  # new memory: last mem_len rows of [mems ; x_in]
        # fp32 before the transpose: ONNX Runtime 1.32 crashes creating a session for fp16 -> Transpose -> Cast -> MatMul.
        out = {self.config.lm_output: self.crit(x.float().transpose(0, 1))}  # [batch, seg, vocab] fp32
        out.update(new_mems)
        return out
