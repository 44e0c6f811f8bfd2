"""Per-family I/O specifications: names, dtypes, symbolic shapes, state pairs, limits and example inputs.

A spec is the single source of truth for an export: the exporter flattens the model with it, the manifest
records it, and the runtime validates inputs and carries state from it without knowing the family.
Dimension names are symbols; an expression such as "past + seq" is a sum of symbols and integers, and
"min(16, mem + seg)" the smaller of its arguments (see runtime/shapes.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

TORCH_TO_NAME = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.int64: "int64"}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy-style name: float32, float16, bfloat16, int64
    shape: tuple[str | int, ...]  # ints are fixed, strings are symbolic dimensions or sums of them
    value_range: tuple[int, int] | None = None  # inclusive bounds for integer inputs (token ids, masks)
    description: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        if self.value_range is None:
            d.pop("value_range")
        return d


@dataclass(frozen=True)
class StatePair:
    """An output that becomes an input on the next call (KV cache, segment memory)."""

    input: str
    output: str
    axis: int  # the axis that grows (past length, memory length)
    kind: str  # "kv-cache" | "memory"


@dataclass(frozen=True)
class DimSpec:
    min: int
    max: int | None  # None: unbounded
    opt: int  # a typical size, for optimisation profiles
    description: str


@dataclass
class IOSpec:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    state: list[StatePair] = field(default_factory=list)
    dims: dict[str, DimSpec] = field(default_factory=dict)
    # Limits on sums of dims, e.g. {"past + seq": n_positions}: the context a model allows.
    limits: dict[str, int] = field(default_factory=dict)
    # Where batches put their padding: decoders pad on the left so that new tokens line up at the end.
    padding_side: str = "left"

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def to_dict(self) -> dict:
        return {
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "state": [asdict(s) for s in self.state],
            "dims": {k: asdict(v) for k, v in self.dims.items()},
            "limits": dict(self.limits),
            "padding_side": self.padding_side,
        }


class Flattened(nn.Module):
    """Positional tensors in spec order -> the model's keyword forward -> a tuple in spec output order."""

    def __init__(self, model: nn.Module, spec: IOSpec, to_kwargs):
        super().__init__()
        self.model = model
        self.spec = spec
        self.to_kwargs = to_kwargs

    def forward(self, *tensors: torch.Tensor):
        out = self.model(**self.to_kwargs(dict(zip(self.spec.input_names, tensors, strict=True))))
        return tuple(out[name] for name in self.spec.output_names)


# ---------------------------------------------------------------------------------------------- GPT


def gpt_spec(model) -> IOSpec:
    cfg = model.config
    dtype = TORCH_TO_NAME[model.compute_dtype]
    ids = TensorSpec("input_ids", "int64", ("batch", "seq"), (0, cfg.vocab_size - 1), "token ids")
    dims = {
        "batch": DimSpec(1, None, 1, "sequences in the batch"),
        "seq": DimSpec(1, cfg.n_positions, 1, "new tokens in this call"),
    }
    if cfg.head == "lm":
        kv = ("batch", cfg.n_head, "past", cfg.head_dim)
        present = ("batch", cfg.n_head, "past + seq", cfg.head_dim)
        inputs = [ids, TensorSpec("attention_mask", "int64", ("batch", "past + seq"), (0, 1), "1 = real token, 0 = padding; covers past and new tokens")]
        outputs = [TensorSpec("logits", "float32", ("batch", "seq", cfg.vocab_size))]
        state = []
        for i in range(cfg.n_layer):
            for part in ("key", "value"):
                inputs.append(TensorSpec(f"past.{i}.{part}", dtype, kv))
                outputs.append(TensorSpec(f"present.{i}.{part}", dtype, present))
                state.append(StatePair(f"past.{i}.{part}", f"present.{i}.{part}", 2, "kv-cache"))
        dims["past"] = DimSpec(0, cfg.n_positions - 1, min(128, cfg.n_positions - 1), "cached tokens")
        return IOSpec(inputs, outputs, state, dims, {"past + seq": cfg.n_positions})
    if cfg.head == "sequence-classification":
        inputs = [ids, TensorSpec("attention_mask", "int64", ("batch", "seq"), (0, 1))]
        outputs = [TensorSpec("logits", "float32", ("batch", cfg.num_labels))]
        return IOSpec(inputs, outputs, [], dims, {"seq": cfg.n_positions})
    # double-heads: several choices per example, each scored at its classification token
    dims["choices"] = DimSpec(1, None, 2, "candidate continuations per example")
    inputs = [
        TensorSpec("input_ids", "int64", ("batch", "choices", "seq"), (0, cfg.vocab_size - 1)),
        TensorSpec("attention_mask", "int64", ("batch", "choices", "seq"), (0, 1)),
        TensorSpec("mc_token_ids", "int64", ("batch", "choices"), (0, cfg.n_positions - 1), "index of each choice's classification token"),
    ]
    outputs = [
        TensorSpec("logits", "float32", ("batch", "choices", "seq", cfg.vocab_size)),
        TensorSpec("mc_logits", "float32", ("batch", "choices")),
    ]
    return IOSpec(inputs, outputs, [], dims, {"seq": cfg.n_positions})


def gpt_kwargs(named: dict[str, torch.Tensor]) -> dict:
    kwargs = {k: v for k, v in named.items() if not k.startswith("past.")}
    n_layer = sum(1 for k in named if k.endswith(".key") and k.startswith("past."))
    if n_layer:
        kwargs["past"] = [(named[f"past.{i}.key"], named[f"past.{i}.value"]) for i in range(n_layer)]
    return kwargs


# ---------------------------------------------------------------------------------------------- BERT


def bert_spec(model) -> IOSpec:
    """Stateless encoder: transformers' input and output names, as Optimum's exports use them."""
    cfg = model.config
    dtype = TORCH_TO_NAME[model.compute_dtype]
    bs, hidden = ("batch", "seq"), ("batch", "seq", cfg.hidden_size)
    inputs = [
        TensorSpec("input_ids", "int64", bs, (0, cfg.vocab_size - 1), "token ids"),
        TensorSpec("attention_mask", "int64", bs, (0, 1), "1 = real token, 0 = padding"),
    ]
    if cfg.type_vocab_size > 1:  # RoBERTa has one segment type, so (like Optimum) no input for it
        inputs.append(TensorSpec("token_type_ids", "int64", bs, (0, cfg.type_vocab_size - 1), "segment of each token"))
    f32 = "float32"  # heads compute in fp32 whatever the precision
    outputs = {
        "base": [TensorSpec("last_hidden_state", dtype, hidden)]
        + ([TensorSpec("pooler_output", dtype, ("batch", cfg.hidden_size))] if cfg.has_summary else []),
        "masked-lm": [TensorSpec("logits", f32, ("batch", "seq", cfg.vocab_size))],
        "next-sentence": [TensorSpec("logits", f32, ("batch", 2))],
        "sequence-classification": [TensorSpec("logits", f32, ("batch", cfg.num_labels))],
        "token-classification": [TensorSpec("logits", f32, ("batch", "seq", cfg.num_labels))],
        "question-answering": [TensorSpec("start_logits", f32, bs), TensorSpec("end_logits", f32, bs)],
    }
    if cfg.variant == "electra":
        outputs["pretraining"] = [TensorSpec("logits", f32, bs, description="replaced-token score per token")]
    else:
        second = "sop_logits" if cfg.variant == "albert" else "seq_relationship_logits"
        n_second = cfg.num_labels if cfg.variant == "albert" else 2
        outputs["pretraining"] = [
            TensorSpec("prediction_logits", f32, ("batch", "seq", cfg.vocab_size)),
            TensorSpec(second, f32, ("batch", n_second)),
        ]
    max_seq = cfg.max_position_embeddings - cfg.position_offset
    dims = {
        "batch": DimSpec(1, None, 1, "sequences in the batch"),
        "seq": DimSpec(1, max_seq, min(128, max_seq), "tokens per sequence"),
    }
    return IOSpec(inputs, outputs[cfg.head], [], dims, {"seq": dims["seq"].max}, padding_side="right")


def plain_kwargs(named: dict[str, torch.Tensor]) -> dict:
    return dict(named)


# ---------------------------------------------------------------------------------------------- Longformer


def longformer_spec(model) -> IOSpec:
    """RoBERTa's I/O (bert_spec on the shared blocks' config) plus `global_attention_mask`.

    The global mask is an explicit input, never derived in the graph: the model's default depends on the head,
    and the runtime (encode) fills it with that default when the caller gives none. seq's limit is the
    position table less RoBERTa's offset, as for RoBERTa.
    """
    from types import SimpleNamespace

    spec = bert_spec(SimpleNamespace(config=model.config.bert_config(), compute_dtype=model.compute_dtype))
    glob = TensorSpec("global_attention_mask", "int64", ("batch", "seq"), (0, 1), "1 = global token (attends to and from every token)")
    spec.inputs.insert(2, glob)
    return spec


# ---------------------------------------------------------------------------------------------- Transformer-XL


def transfo_xl_spec(model) -> IOSpec:
    """Segment in, head output and new memory out; the memory [mem, batch, d_model] is state of kind "memory".

    The memory keeps the last mem_len rows of [mems ; segment], so it grows by seg per call until it reaches
    mem_len: "min(mem_len, mem + seg)". One symbol for every layer's memory, as they always have one length.
    """
    cfg = model.config
    dtype = TORCH_TO_NAME[model.compute_dtype]
    mem = ("mem", "batch", cfg.d_model)
    new_mem = (f"min({cfg.mem_len}, mem + seg)", "batch", cfg.d_model)
    inputs = [TensorSpec("input_ids", "int64", ("batch", "seg"), (0, cfg.vocab_size - 1), "token ids of this segment")]
    # Adaptive softmax: log-probabilities; a plain softmax head: logits. fp32 at every precision.
    outputs = [TensorSpec(cfg.lm_output, "float32", ("batch", "seg", cfg.vocab_size))]
    state = []
    for i in range(cfg.n_layer):
        inputs.append(TensorSpec(f"mems.{i}", dtype, mem, description=f"layer {i}'s input over the last segments"))
        outputs.append(TensorSpec(f"new_mems.{i}", dtype, new_mem))
        state.append(StatePair(f"mems.{i}", f"new_mems.{i}", 0, "memory"))
    dims = {
        "batch": DimSpec(1, None, 1, "independent streams"),
        # Relative positions set no length limit; the paper evaluates WikiText-103 with segments of 128.
        "seg": DimSpec(1, None, min(128, max(1, cfg.mem_len)), "tokens in this segment"),
        "mem": DimSpec(0, cfg.mem_len, cfg.mem_len, "memory rows carried from earlier segments"),
    }
    return IOSpec(inputs, outputs, state, dims)


def transfo_xl_kwargs(named: dict[str, torch.Tensor]) -> dict:
    kwargs = {k: v for k, v in named.items() if not k.startswith("mems.")}
    n_layer = sum(1 for k in named if k.startswith("mems."))
    if n_layer:
        kwargs["mems"] = [named[f"mems.{i}"] for i in range(n_layer)]
    return kwargs


SPECS = {"gpt": (gpt_spec, gpt_kwargs), "bert": (bert_spec, plain_kwargs), "transfo_xl": (transfo_xl_spec, transfo_xl_kwargs),
         "longformer": (longformer_spec, plain_kwargs)}


def spec_for(family: str, model) -> IOSpec:
    return SPECS[family][0](model)


def flatten(family: str, model, spec: IOSpec) -> Flattened:
    return Flattened(model, spec, SPECS[family][1])


def to_model_kwargs(family: str, named: dict[str, torch.Tensor]) -> dict:
    return SPECS[family][1](named)


# ---------------------------------------------------------------------------------------------- example inputs


def example_inputs(spec: IOSpec, sizes: dict[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of the spec's shapes; integer inputs inside their value range."""
    from ..runtime.shapes import resolve_shape

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for t in spec.inputs:
        shape = resolve_shape(t.shape, sizes)
        if t.dtype == "int64":
            lo, hi = t.value_range or (0, 1)
            if t.name == "attention_mask":
                out[t.name] = torch.ones(shape, dtype=torch.long)
            elif t.name == "mc_token_ids":
                out[t.name] = torch.randint(0, sizes["seq"], shape, generator=gen)
            else:
                out[t.name] = torch.randint(lo, hi + 1, shape, generator=gen)
        else:
            dtype = {v: k for k, v in TORCH_TO_NAME.items()}[t.dtype]
            out[t.name] = torch.randn(shape, generator=gen).to(dtype)
    return out
