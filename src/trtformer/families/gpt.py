"""GPT-1 and GPT-2: the registry entry (graph I/O with the KV cache as state, HF checkpoints, presets)."""

from __future__ import annotations

import logging

import torch

from ..artifact import DimSpec, GraphSpec, StatePair, TensorSpec
from ..artifact.dtypes import from_torch
from ..errors import CheckpointError
from ..models import gpt
from ..models.checkpoints import architecture_head
from . import Family, HFLoader, OrtOptimizer

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- graph I/O


def spec(model: gpt.GPT) -> GraphSpec:
    """The LM head carries the KV cache (past -> present); the classification heads are stateless."""
    cfg = model.config
    dtype = from_torch(model.compute_dtype).name
    ids = TensorSpec("input_ids", "int64", ("batch", "seq"), (0, cfg.vocab_size - 1), "token ids", role="ids")
    dims = {
        "batch": DimSpec(1, None, 1, "sequences in the batch"),
        "seq": DimSpec(1, cfg.n_positions, 1, "new tokens in this call"),
    }
    if cfg.head == "lm":
        kv = ("batch", cfg.n_head, "past", cfg.head_dim)
        present = ("batch", cfg.n_head, "past + seq", cfg.head_dim)
        inputs = [ids, TensorSpec("attention_mask", "int64", ("batch", "past + seq"), (0, 1),
                                  "1 = real token, 0 = padding; covers past and new tokens", role="padding-mask")]  # fmt: skip
        outputs = [TensorSpec("logits", "float32", ("batch", "seq", cfg.vocab_size))]
        state = []
        for i in range(cfg.n_layer):
            for part in ("key", "value"):
                inputs.append(TensorSpec(f"past.{i}.{part}", dtype, kv, role="state"))
                outputs.append(TensorSpec(f"present.{i}.{part}", dtype, present))
                state.append(StatePair(f"past.{i}.{part}", f"present.{i}.{part}", 2, "kv-cache"))
        dims["past"] = DimSpec(0, cfg.n_positions - 1, min(128, cfg.n_positions - 1), "cached tokens")
        return GraphSpec("model", tuple(inputs), tuple(outputs), {}, tuple(state), dims, {"past + seq": cfg.n_positions})
    if cfg.head == "sequence-classification":
        inputs = [ids, TensorSpec("attention_mask", "int64", ("batch", "seq"), (0, 1), role="padding-mask")]
        outputs = [TensorSpec("logits", "float32", ("batch", cfg.num_labels))]
        return GraphSpec("model", tuple(inputs), tuple(outputs), {}, (), dims, {"seq": cfg.n_positions})
    # double-heads: several choices per example, each scored at its classification token
    dims["choices"] = DimSpec(1, None, 2, "candidate continuations per example")
    inputs = [
        TensorSpec("input_ids", "int64", ("batch", "choices", "seq"), (0, cfg.vocab_size - 1), role="ids"),
        TensorSpec("attention_mask", "int64", ("batch", "choices", "seq"), (0, 1), role="padding-mask"),
        TensorSpec("mc_token_ids", "int64", ("batch", "choices"), (0, cfg.n_positions - 1),
                   "index of each choice's classification token", role="choice-index"),
    ]  # fmt: skip
    outputs = [
        TensorSpec("logits", "float32", ("batch", "choices", "seq", cfg.vocab_size)),
        TensorSpec("mc_logits", "float32", ("batch", "choices")),
    ]
    return GraphSpec("model", tuple(inputs), tuple(outputs), {}, (), dims, {"seq": cfg.n_positions})


def to_kwargs(named: dict[str, torch.Tensor]) -> dict:
    kwargs = {k: v for k, v in named.items() if not k.startswith("past.")}
    n_layer = sum(1 for k in named if k.endswith(".key") and k.startswith("past."))
    if n_layer:
        kwargs["past"] = [(named[f"past.{i}.key"], named[f"past.{i}.value"]) for i in range(n_layer)]
    return kwargs


# ---------------------------------------------------------------------------------------------- HF checkpoints

ARCHITECTURE_HEADS = {
    "LMHeadModel": "lm",
    "Model": "lm",  # a bare transformer: the tied LM head is still defined by wte
    "ForSequenceClassification": "sequence-classification",
    "DoubleHeadsModel": "double-heads",
}


def config_from_hf(hf: dict) -> gpt.GPTConfig:
    model_type = hf.get("model_type")
    variant = "gpt2" if model_type == "gpt2" else "gpt1"
    prefix = "GPT2" if variant == "gpt2" else "OpenAIGPT"
    head = architecture_head(hf, prefix, ARCHITECTURE_HEADS)
    num_labels = hf.get("num_labels") or len(hf.get("id2label") or {}) or 2
    if head == "double-heads" and not hf.get("summary_use_proj", True):
        raise CheckpointError("double-heads checkpoints without summary_use_proj are not supported")
    return gpt.GPTConfig(
        variant=variant,
        vocab_size=hf["vocab_size"],
        n_positions=hf.get("n_positions", 1024 if variant == "gpt2" else 512),
        n_embd=hf["n_embd"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_inner=hf.get("n_inner"),
        activation=hf.get("activation_function", hf.get("afn", "gelu_new")),
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        scale_attn_weights=hf.get("scale_attn_weights", True),
        scale_attn_by_inverse_layer_idx=hf.get("scale_attn_by_inverse_layer_idx", False),
        head=head,
        num_labels=num_labels,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
        pad_token_id=hf.get("pad_token_id"),
        initializer_range=hf.get("initializer_range", 0.02),
    )


def convert_state_dict(sd: dict[str, torch.Tensor], cfg: gpt.GPTConfig) -> dict[str, torch.Tensor]:
    """Rename HF keys onto GPT's and transpose Conv1D weights ([in, out] -> Linear's [out, in])."""
    renames = {"tokens_embed.": "wte.", "positions_embed.": "wpe.", "multiple_choice_head.summary.": "multiple_choice_head."}
    out = {}
    for key, value in sd.items():
        k = key.removeprefix("transformer.")
        if k.endswith((".attn.bias", ".attn.masked_bias")) or k in ("lm_head.weight", "position_ids"):
            continue  # causal-mask buffers and the tied head (checked below)
        for old, new in renames.items():
            if k.startswith(old):
                k = new + k[len(old):]
        if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")):
            value = value.t()
        out[k] = value.contiguous()
    head = sd.get("lm_head.weight")
    if head is not None and "wte.weight" not in out:
        out["wte.weight"] = head.contiguous()  # some tied checkpoints save only the head's name
    elif head is not None and not torch.equal(head, out["wte.weight"]):
        log.warning("lm_head.weight differs from the token embedding; trtformer ties them and uses wte")
    return out


# ---------------------------------------------------------------------------------------------- entry

PRESETS = {
    "tiny-gpt2": gpt.GPTConfig(variant="gpt2", vocab_size=512, n_positions=128, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0),
    "tiny-openai-gpt": gpt.GPTConfig(variant="gpt1", vocab_size=512, n_positions=128, n_embd=64, n_layer=2, n_head=4),
    "gpt2-small-random": gpt.GPTConfig(variant="gpt2", bos_token_id=50256, eos_token_id=50256),
}

_HF = HFLoader(config_from_hf, convert_state_dict)
FAMILY = Family(
    name="gpt",
    config_class=gpt.GPTConfig,
    model_class=gpt.GPT,
    spec=spec,
    to_kwargs=to_kwargs,
    hf_model_types={"gpt2": _HF, "openai-gpt": _HF},
    presets=PRESETS,
    ort_optimizer=OrtOptimizer("gpt2", "n_head", "n_embd", "activation"),
)
