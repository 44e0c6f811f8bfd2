"""Hugging Face checkpoint directories -> trtformer reference models.

A checkpoint directory holds config.json and weights (model.safetensors, a sharded safetensors index, or
pytorch_model.bin). Each family contributes a `from_hf_config(dict) -> config` and a
`convert_hf_state_dict(sd, config) -> sd`; this module reads the files, picks the family from `model_type`
and reports missing or unexpected weights by name.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from . import bert, gpt, longformer, transfo_xl

log = logging.getLogger(__name__)

# Tokenizer files kept with an artifact so that `--prompt TEXT` works offline.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
)


@dataclass
class LoadedModel:
    family: str
    model: nn.Module
    source: str  # preset name or checkpoint directory
    tokenizer_files: list[Path] = field(default_factory=list)

    @property
    def config(self):
        return self.model.config


# ---------------------------------------------------------------------------------------------- GPT family

GPT_ARCHITECTURE_HEADS = {
    "LMHeadModel": "lm",
    "Model": "lm",  # a bare transformer: the tied LM head is still defined by wte
    "ForSequenceClassification": "sequence-classification",
    "DoubleHeadsModel": "double-heads",
}


def _architecture_head(hf: dict, prefix: str, heads: dict[str, str], default: str = "LMHeadModel") -> str:
    archs = hf.get("architectures") or [f"{prefix}{default}"]
    for arch in archs:
        suffix = arch[len(prefix):] if arch.startswith(prefix) else None
        if suffix in heads:
            return heads[suffix]
    raise CheckpointError(
        f"architecture {archs} is not supported for model type {hf.get('model_type')!r}",
        hint=f"supported: {', '.join(prefix + s for s in heads)}",
    )


def gpt_config_from_hf(hf: dict) -> gpt.GPTConfig:
    model_type = hf.get("model_type")
    variant = "gpt2" if model_type == "gpt2" else "gpt1"
    prefix = "GPT2" if variant == "gpt2" else "OpenAIGPT"
    head = _architecture_head(hf, prefix, GPT_ARCHITECTURE_HEADS)
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


def gpt_convert_state_dict(sd: dict[str, torch.Tensor], cfg: gpt.GPTConfig) -> dict[str, torch.Tensor]:
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


# ---------------------------------------------------------------------------------------------- BERT family

BERT_PREFIXES = {"bert": "Bert", "roberta": "Roberta", "albert": "Albert", "electra": "Electra"}
BERT_ARCHITECTURE_HEADS = {
    "Model": "base",
    "ForMaskedLM": "masked-lm",
    "ForNextSentencePrediction": "next-sentence",
    "ForPreTraining": "pretraining",
    "ForSequenceClassification": "sequence-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
}


def _encoder_fields(hf: dict, defaults) -> dict:
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
    }


def bert_config_from_hf(hf: dict) -> bert.BertConfig:
    variant = hf["model_type"]
    prefix = BERT_PREFIXES[variant]
    heads = {k: v for k, v in BERT_ARCHITECTURE_HEADS.items() if variant == "bert" or v != "next-sentence"}
    head = _architecture_head(hf, prefix, heads, default="Model")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise CheckpointError(f"position_embedding_type {hf['position_embedding_type']!r} is not supported (absolute only)")
    defaults = bert.BertConfig()
    return bert.BertConfig(
        variant=variant,
        **_encoder_fields(hf, defaults),
        embedding_size=hf.get("embedding_size") if variant in ("albert", "electra") else None,
        num_hidden_groups=hf.get("num_hidden_groups", 1) if variant == "albert" else 1,
        inner_group_num=hf.get("inner_group_num", 1) if variant == "albert" else 1,
        head=head,
    )


# Prefix renames per variant, after the base model's own prefix (`bert.`, `roberta.`, ...) is dropped.
BERT_RENAMES = {
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


def _rename_prefix(key: str, renames: dict[str, str]) -> str:
    for old, new in renames.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


def bert_convert_state_dict(sd: dict[str, torch.Tensor], cfg: bert.BertConfig) -> dict[str, torch.Tensor]:
    base = cfg.variant + "."
    out = {}
    for key, value in sd.items():
        k = key.removeprefix(base)
        if k in ("embeddings.position_ids", "embeddings.token_type_ids"):
            continue  # buffers, not weights
        if k.startswith("encoder.albert_layer_groups."):
            _, _, group, _, inner, rest = k.split(".", 5)
            k = f"encoder.layer.{int(group) * cfg.inner_group_num + int(inner)}." + _rename_prefix(rest, ALBERT_LAYER_RENAMES)
        else:
            k = _rename_prefix(k, BERT_RENAMES[cfg.variant])
        out[k] = value.contiguous()
    if cfg.head == "masked-lm" or (cfg.head == "pretraining" and cfg.variant != "electra"):
        # Tied checkpoints may save the decoder only as the word embeddings.
        out.setdefault("mlm.decoder.weight", out.get("embeddings.word_embeddings.weight"))
    return {k: v for k, v in out.items() if v is not None}


# ---------------------------------------------------------------------------------------------- Transformer-XL

# config.json keys that map one to one; absent keys take TransfoXLConfig's defaults, which are HF's.
TRANSFO_XL_KEYS = (
    "cutoffs", "d_model", "d_embed", "n_head", "d_head", "d_inner", "div_val", "pre_lnorm", "n_layer", "mem_len",
    "clamp_len", "same_length", "untie_r", "tie_word_embeddings", "tie_projs", "layer_norm_epsilon", "init_std",
    "proj_init_std", "eos_token_id",
)  # fmt: skip


def transfo_xl_config_from_hf(hf: dict) -> transfo_xl.TransfoXLConfig:
    _architecture_head(hf, "TransfoXL", {"LMHeadModel": "lm"})
    if hf.get("attn_type", 0) != 0:
        raise CheckpointError(f"Transformer-XL attn_type {hf['attn_type']} is not supported (only 0, as in HF)")
    if hf.get("sample_softmax", -1) > 0:
        raise CheckpointError("Transformer-XL with a sampled softmax (sample_softmax > 0) is not supported")
    kw = {k: hf[k] for k in TRANSFO_XL_KEYS if k in hf}
    # The tie_projs a model was saved with; HF derives it from proj_share_all_but_first when it is absent.
    if kw.get("tie_projs") is None and "proj_share_all_but_first" in hf:
        tails = len(kw.get("cutoffs", transfo_xl.TransfoXLConfig.cutoffs))
        kw["tie_projs"] = [False] + [bool(hf["proj_share_all_but_first"])] * tails
    return transfo_xl.TransfoXLConfig(vocab_size=hf.get("vocab_size", hf.get("n_token")), **kw)


def transfo_xl_convert_state_dict(sd: dict[str, torch.Tensor], cfg: transfo_xl.TransfoXLConfig) -> dict:
    """Drop HF's `transformer.` prefix and give every tied parameter one value under each of its names."""
    out = {k.removeprefix("transformer."): v.contiguous() for k, v in sd.items()}
    out.pop("pos_emb.inv_freq", None)  # the sinusoids' frequencies, a buffer: the op computes them
    if not cfg.untie_r:  # the shared u, v may also be saved under each layer's alias; trtformer keeps them once
        for k in [k for k in out if k.startswith("layers.") and k.endswith((".r_w_bias", ".r_r_bias"))]:
            out.setdefault(k.rsplit(".", 1)[-1], out.pop(k))
    for target, source in transfo_xl.tied_weights(cfg):
        value = out.get(source, out.get(target))  # HF files often keep only one of the two names
        if value is None:
            continue  # load_state reports it missing
        if target in out and source in out and not torch.equal(out[target], out[source]):
            log.warning("%s differs from %s, which the config ties it to; trtformer uses %s", target, source, source)
        out[target] = out[source] = value
    return out


# ---------------------------------------------------------------------------------------------- Longformer

LONGFORMER_ARCHITECTURE_HEADS = {
    "Model": "base",
    "ForMaskedLM": "masked-lm",
    "ForSequenceClassification": "sequence-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
}
# The names bert.py's shared blocks give differently from transformers' Longformer.
LONGFORMER_RENAMES = {"lm_head.layer_norm.": "lm_head.LayerNorm.", "lm_head.bias": "lm_head.decoder.bias"}
LONGFORMER_HEAD_PREFIXES = ("longformer.", "lm_head.", "classifier.", "qa_outputs.")


def longformer_config_from_hf(hf: dict) -> longformer.LongformerConfig:
    head = _architecture_head(hf, "Longformer", LONGFORMER_ARCHITECTURE_HEADS, default="Model")
    defaults = longformer.LongformerConfig()
    n_layer, n_head = hf["num_hidden_layers"], hf["num_attention_heads"]
    # transformers has no dilation; the original Longformer configs give one int a layer (or one for all).
    dilation = hf.get("attention_dilation")
    if isinstance(dilation, int):
        dilation = [dilation] * n_layer
    if dilation is not None:
        dilation = [[d] * n_head if isinstance(d, int) else d for d in dilation]
    return longformer.LongformerConfig(
        **_encoder_fields(hf, defaults),
        sep_token_id=hf.get("sep_token_id") if hf.get("sep_token_id") is not None else defaults.sep_token_id,
        attention_window=hf.get("attention_window", longformer.DEFAULT_WINDOW),
        attention_dilation=dilation,
        head=head,
    )


def longformer_convert_state_dict(sd: dict[str, torch.Tensor], cfg: longformer.LongformerConfig) -> dict:
    """Give a bare model's keys the `longformer.` prefix and rename the LM head's LayerNorm and bias."""
    out = {}
    for key, value in sd.items():
        k = key if key.startswith(LONGFORMER_HEAD_PREFIXES) else "longformer." + key
        if k.endswith(("embeddings.position_ids", "embeddings.token_type_ids")):
            continue  # buffers, not weights
        out[_rename_prefix(k, LONGFORMER_RENAMES)] = value.contiguous()
    word = out.get("longformer.embeddings.word_embeddings.weight")
    if cfg.head == "masked-lm" and word is not None:  # the decoder is tied to the word embeddings, saved as them
        out.setdefault("lm_head.decoder.weight", word)
    return out


FAMILIES = {
    # model_type -> (family, config builder, state-dict converter, model class)
    "gpt2": ("gpt", gpt_config_from_hf, gpt_convert_state_dict, gpt.GPT),
    "openai-gpt": ("gpt", gpt_config_from_hf, gpt_convert_state_dict, gpt.GPT),
    **{t: ("bert", bert_config_from_hf, bert_convert_state_dict, bert.Bert) for t in BERT_PREFIXES},
    "transfo-xl": ("transfo_xl", transfo_xl_config_from_hf, transfo_xl_convert_state_dict, transfo_xl.TransfoXL),
    "longformer": ("longformer", longformer_config_from_hf, longformer_convert_state_dict, longformer.Longformer),
}


# ---------------------------------------------------------------------------------------------- loading


def read_hf_config(path: Path) -> dict:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{path} has no config.json")
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {exc}") from exc


def read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    binary = path / "pytorch_model.bin"
    try:
        if single.is_file():
            return load_file(single)
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            sd: dict[str, torch.Tensor] = {}
            for shard in shards:
                sd.update(load_file(path / shard))
            return sd
        if binary.is_file():
            return torch.load(binary, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"cannot read the weights in {path}: {exc}") from exc
    raise CheckpointError(f"{path} has no weights (model.safetensors, model.safetensors.index.json or pytorch_model.bin)")


def load_state(model: nn.Module, sd: dict[str, torch.Tensor], where: Path) -> None:
    expected = {k for k in model.state_dict()}
    missing = sorted(expected - sd.keys())
    unexpected = sorted(sd.keys() - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"weights in {where} do not match the config: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for k, v in model.state_dict().items():
        if sd[k].shape != v.shape:
            raise CheckpointError(f"weight {k} in {where} has shape {tuple(sd[k].shape)}, the config implies {tuple(v.shape)}")
    model.load_state_dict(sd, strict=True)


def load_checkpoint(path: str | Path) -> LoadedModel:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory")
    hf = read_hf_config(path)
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"unknown model type {model_type!r} in {path / 'config.json'}",
            hint=f"supported model types: {', '.join(sorted(FAMILIES))}",
        )
    family, make_config, convert, model_cls = FAMILIES[model_type]
    try:
        cfg = make_config(hf)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"config.json in {path} is incomplete or invalid: {exc!r}") from exc
    model = model_cls(cfg)
    load_state(model, convert(read_hf_weights(path), cfg), path)
    tokenizer = [path / f for f in TOKENIZER_FILES if (path / f).is_file()]
    return LoadedModel(family, model.eval(), str(path), tokenizer)
