"""BERT, RoBERTa, ALBERT and ELECTRA: the registry entry (stateless encoder I/O, HF checkpoints, presets)."""

from __future__ import annotations

import torch

from ..artifact import DimSpec, GraphSpec, TensorSpec
from ..artifact.dtypes import from_torch
from ..errors import CheckpointError
from ..models import bert
from ..models.checkpoints import architecture_head, rename_prefix
from . import Family, HFLoader, OrtOptimizer

# ---------------------------------------------------------------------------------------------- graph I/O


def encoder_spec(cfg: bert.BertConfig, dtype: str) -> GraphSpec:
    """transformers' input and output names, as Optimum's exports use them; `dtype` is the hidden states' (the heads
    compute in fp32 whatever the precision). Longformer's entry builds on it."""
    bs, hidden = ("batch", "seq"), ("batch", "seq", cfg.hidden_size)
    inputs = [
        TensorSpec("input_ids", "int64", bs, (0, cfg.vocab_size - 1), "token ids", role="ids"),
        TensorSpec("attention_mask", "int64", bs, (0, 1), "1 = real token, 0 = padding", role="padding-mask"),
    ]
    if cfg.type_vocab_size > 1:  # RoBERTa has one segment type, so (like Optimum) no input for it
        inputs.append(TensorSpec("token_type_ids", "int64", bs, (0, cfg.type_vocab_size - 1), "segment of each token",
                                 role="token-types"))  # fmt: skip
    f32 = "float32"
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
    return GraphSpec("model", tuple(inputs), tuple(outputs[cfg.head]), {}, (), dims, {"seq": max_seq}, padding_side="right")


def spec(model: bert.Bert) -> GraphSpec:
    return encoder_spec(model.config, from_torch(model.compute_dtype).name)


# ---------------------------------------------------------------------------------------------- HF checkpoints

PREFIXES = {"bert": "Bert", "roberta": "Roberta", "albert": "Albert", "electra": "Electra"}
ARCHITECTURE_HEADS = {
    "Model": "base",
    "ForMaskedLM": "masked-lm",
    "ForNextSentencePrediction": "next-sentence",
    "ForPreTraining": "pretraining",
    "ForSequenceClassification": "sequence-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
}


def encoder_fields(hf: dict, defaults) -> dict:
    """The config keys BERT-like encoders share, with `defaults` (a config instance) where config.json omits one."""

    def get(key):
        return hf.get(key) if hf.get(key) is not None else getattr(defaults, key)

    return {
        "vocab_size": hf["vocab_size"],
        "hidden_size": hf["hidden_size"],
        "num_hidden_layers": hf["num_hidden_layers"],
        "num_attention_heads": hf["num_attention_heads"],
        "intermediate_size": hf["intermediate_size"],
        **{k: get(k) for k in ("hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps",
                               "pad_token_id", "initializer_range")},
        "num_labels": hf.get("num_labels") or len(hf.get("id2label") or {}) or 2,
    }  # fmt: skip


def config_from_hf(hf: dict) -> bert.BertConfig:
    variant = hf["model_type"]
    prefix = PREFIXES[variant]
    heads = {k: v for k, v in ARCHITECTURE_HEADS.items() if variant == "bert" or v != "next-sentence"}
    head = architecture_head(hf, prefix, heads, default="Model")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"position_embedding_type {hf['position_embedding_type']!r} is not supported (absolute only)")
    defaults = bert.BertConfig()
    return bert.BertConfig(
        variant=variant,
        **encoder_fields(hf, defaults),
        embedding_size=hf.get("embedding_size") if variant in ("albert", "electra") else None,
        num_hidden_groups=hf.get("num_hidden_groups", 1) if variant == "albert" else 1,
        inner_group_num=hf.get("inner_group_num", 1) if variant == "albert" else 1,
        head=head,
    )


# Prefix renames per variant, after the base model's own prefix (`bert.`, `roberta.`, ...) is dropped.
RENAMES = {
    "bert": {
        "cls.predictions.transform.dense.": "mlm.dense.",
        "cls.predictions.transform.LayerNorm.": "mlm.LayerNorm.",
        "cls.predictions.decoder.": "mlm.decoder.",
        "cls.predictions.bias": "mlm.decoder.bias",
        "cls.seq_relationship.": "nsp.",
    },
    "roberta": {
        "lm_head.dense.": "mlm.dense.",
        "lm_head.layer_norm.": "mlm.LayerNorm.",
        "lm_head.decoder.": "mlm.decoder.",
        "lm_head.bias": "mlm.decoder.bias",
        "classifier.dense.": "pooler.dense.",  # the classifier body is the first-token summary
        "classifier.out_proj.": "classifier.",
    },
    "albert": {
        "encoder.embedding_hidden_mapping_in.": "embeddings_project.",
        "pooler.": "pooler.dense.",
        "predictions.dense.": "mlm.dense.",
        "predictions.LayerNorm.": "mlm.LayerNorm.",
        "predictions.decoder.": "mlm.decoder.",
        "predictions.bias": "mlm.decoder.bias",
        "sop_classifier.classifier.": "nsp.",
    },
    "electra": {
        "discriminator_predictions.": "discriminator.",
        "generator_predictions.": "mlm.",
        "generator_lm_head.": "mlm.decoder.",
        "classifier.dense.": "pooler.dense.",
        "classifier.out_proj.": "classifier.",
    },
}
# ALBERT's shared layer, named `albert_layer_groups.G.albert_layers.I.*`, onto BERT's layer names.
ALBERT_LAYER_RENAMES = {
    "attention.query.": "attention.self.query.",
    "attention.key.": "attention.self.key.",
    "attention.value.": "attention.self.value.",
    "attention.dense.": "attention.output.dense.",
    "attention.LayerNorm.": "attention.output.LayerNorm.",
    "ffn.": "intermediate.dense.",
    "ffn_output.": "output.dense.",
    "full_layer_layer_norm.": "output.LayerNorm.",
}


def convert_state_dict(sd: dict[str, torch.Tensor], cfg: bert.BertConfig) -> dict[str, torch.Tensor]:
    base = cfg.variant + "."
    out = {}
    for key, value in sd.items():
        k = key.removeprefix(base)
        if k in ("embeddings.position_ids", "embeddings.token_type_ids"):
            continue  # buffers, not weights
        if k.startswith("encoder.albert_layer_groups."):
            _, _, group, _, inner, rest = k.split(".", 5)
            k = f"encoder.layer.{int(group) * cfg.inner_group_num + int(inner)}." + rename_prefix(rest, ALBERT_LAYER_RENAMES)
        else:
            k = rename_prefix(k, RENAMES[cfg.variant])
        out[k] = value.contiguous()
    if cfg.head == "masked-lm" or (cfg.head == "pretraining" and cfg.variant != "electra"):
        # Tied checkpoints may save the decoder only as the word embeddings.
        out.setdefault("mlm.decoder.weight", out.get("embeddings.word_embeddings.weight"))
    return {k: v for k, v in out.items() if v is not None}


# ---------------------------------------------------------------------------------------------- entry

PRESETS = {
    "tiny-bert": bert.BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=128, head="masked-lm"),
    "bert-base-random": bert.BertConfig(head="sequence-classification"),
}

FAMILY = Family(
    name="bert",
    config_class=bert.BertConfig,
    model_class=bert.Bert,
    spec=spec,
    to_kwargs=dict,
    hf_model_types={t: HFLoader(config_from_hf, convert_state_dict) for t in PREFIXES},
    presets=PRESETS,
    ort_optimizer=OrtOptimizer("bert", "num_attention_heads", "hidden_size", "hidden_act"),
)
