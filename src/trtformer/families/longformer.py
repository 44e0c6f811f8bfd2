"""Longformer: the registry entry (RoBERTa's encoder I/O plus the global mask, HF checkpoints, presets, its fused op)."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..artifact import GraphSpec, TensorSpec
from ..artifact.dtypes import from_torch
from ..models import longformer
from ..models.checkpoints import architecture_head, rename_prefix
from ..ops import sliding_window
from . import Family, HFLoader
from .bert import encoder_fields, encoder_spec

# ---------------------------------------------------------------------------------------------- graph I/O


def spec(model: longformer.Longformer) -> GraphSpec:
    """RoBERTa's I/O (the encoder spec of the shared blocks' config) plus `global_attention_mask`.

    The global mask is an explicit input, never derived in the graph: the model's default depends on the head,
    and the runtime (encode) fills it with that default when the caller gives none. seq's limit is the
    position table less RoBERTa's offset, as for RoBERTa.
    """
    graph = encoder_spec(model.config.bert_config(), from_torch(model.compute_dtype).name)
    glob = TensorSpec("global_attention_mask", "int64", ("batch", "seq"), (0, 1),
                      "1 = global token (attends to and from every token)", role="global-mask")  # fmt: skip
    return replace(graph, inputs=(*graph.inputs[:2], glob, *graph.inputs[2:]))


# ---------------------------------------------------------------------------------------------- HF checkpoints

ARCHITECTURE_HEADS = {
    "Model": "base",
    "ForMaskedLM": "masked-lm",
    "ForSequenceClassification": "sequence-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
}
# The names bert.py's shared blocks give differently from transformers' Longformer.
RENAMES = {"lm_head.layer_norm.": "lm_head.LayerNorm.", "lm_head.bias": "lm_head.decoder.bias"}
HEAD_PREFIXES = ("longformer.", "lm_head.", "classifier.", "qa_outputs.")


def config_from_hf(hf: dict) -> longformer.LongformerConfig:
    head = architecture_head(hf, "Longformer", ARCHITECTURE_HEADS, default="Model")
    defaults = longformer.LongformerConfig()
    n_layer, n_head = hf["num_hidden_layers"], hf["num_attention_heads"]
    # transformers has no dilation; the original Longformer configs give one int a layer (or one for all).
    dilation = hf.get("attention_dilation")
    if isinstance(dilation, int):
        dilation = [dilation] * n_layer
    if dilation is not None:
        dilation = [[d] * n_head if isinstance(d, int) else d for d in dilation]
    return longformer.LongformerConfig(
        **encoder_fields(hf, defaults),
        sep_token_id=hf.get("sep_token_id") if hf.get("sep_token_id") is not None else defaults.sep_token_id,
        attention_window=hf.get("attention_window", longformer.DEFAULT_WINDOW),
        attention_dilation=dilation,
        head=head,
    )


def convert_state_dict(sd: dict[str, torch.Tensor], cfg: longformer.LongformerConfig) -> dict:
    """Give a bare model's keys the `longformer.` prefix and rename the LM head's LayerNorm and bias."""
    out = {}
    for key, value in sd.items():
        k = key if key.startswith(HEAD_PREFIXES) else "longformer." + key
        if k.endswith(("embeddings.position_ids", "embeddings.token_type_ids")):
            continue  # buffers, not weights
        out[rename_prefix(k, RENAMES)] = value.contiguous()
    word = out.get("longformer.embeddings.word_embeddings.weight")
    if cfg.head == "masked-lm" and word is not None:  # the decoder is tied to the word embeddings, saved as them
        out.setdefault("lm_head.decoder.weight", word)
    return out


# ---------------------------------------------------------------------------------------------- entry

PRESETS = {
    # Positions up to 4096 tokens as longformer-base-4096; the second layer dilates two heads (an extension).
    "tiny-longformer": longformer.LongformerConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=4098, type_vocab_size=1, layer_norm_eps=1e-5, attention_window=(8, 16), attention_dilation=((1, 1, 1, 1), (1, 1, 2, 4)), head="masked-lm"),
}

FAMILY = Family(
    name="longformer",
    config_class=longformer.LongformerConfig,
    model_class=longformer.Longformer,
    spec=spec,
    to_kwargs=dict,
    hf_model_types={"longformer": HFLoader(config_from_hf, convert_state_dict)},
    presets=PRESETS,
    fused_ops=(sliding_window.IDENTITY.name,),
)
