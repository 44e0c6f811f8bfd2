"""BART: the registry entry (encoder and decoder-step graphs for generation, one graph for the classification and QA
heads; HF checkpoints; presets; ONNX Runtime's `bart` fusions)."""

from __future__ import annotations

import logging

import torch

from ..artifact import DimSpec, GraphSpec, TensorSpec
from ..artifact.dtypes import from_torch
from ..models import bart
from ..models.checkpoints import architecture_head
from . import Family, Graphs, HFLoader, OrtOptimizer
from . import seq2seq as s2s

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- graph I/O


def shape(model: bart.Bart) -> s2s.Seq2SeqShape:
    cfg = model.config
    return s2s.Seq2SeqShape(cfg.vocab_size, cfg.d_model, cfg.decoder_layers, cfg.decoder_attention_heads, cfg.head_dim,
                            cfg.max_position_embeddings, cfg.max_position_embeddings, from_torch(model.compute_dtype).name)  # fmt: skip


def spec(model: bart.Bart) -> GraphSpec:
    """Graph "model": the whole forward (generation: for given target tokens; the other heads: their one graph)."""
    cfg = model.config
    s = shape(model)
    if cfg.head == "generation":
        return s2s.full_graph(s)
    bs = ("batch", "seq")
    inputs = (TensorSpec("input_ids", "int64", bs, (0, cfg.vocab_size - 1), "token ids; the decoder reads them shifted right",
                         role="ids"),
              TensorSpec("attention_mask", "int64", bs, (0, 1), "1 = real token, 0 = padding (on the right)", role="padding-mask"))  # fmt: skip
    if cfg.head == "sequence-classification":
        outputs = (TensorSpec("logits", "float32", ("batch", cfg.num_labels), "from each row's last eos token"),)
    else:
        outputs = (TensorSpec("start_logits", "float32", bs), TensorSpec("end_logits", "float32", bs))
    n = cfg.max_position_embeddings
    dims = {"batch": DimSpec(1, None, 1, "sequences in the batch"), "seq": DimSpec(1, n, min(128, n), "tokens per sequence")}
    return GraphSpec("model", inputs, outputs, {}, (), dims, {"seq": n}, padding_side="right")


def graphs(model: bart.Bart) -> Graphs | None:
    if model.config.head != "generation":
        return None
    s = shape(model)
    return Graphs((s2s.encoder_graph(s), s2s.decoder_graph(s)), s2s.links(s))


# ---------------------------------------------------------------------------------------------- HF checkpoints

ARCHITECTURE_HEADS = {
    "ForConditionalGeneration": "generation",
    "Model": "generation",  # the bare encoder-decoder: the LM head is still defined by `shared`
    "ForSequenceClassification": "sequence-classification",
    "ForQuestionAnswering": "question-answering",
}


def config_from_hf(hf: dict) -> bart.BartConfig:
    d = bart.BartConfig()

    def get(key):
        return hf[key] if hf.get(key) is not None else getattr(d, key)

    return bart.BartConfig(
        **{k: get(k) for k in ("vocab_size", "max_position_embeddings", "d_model", "encoder_layers", "decoder_layers",
                               "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim",
                               "activation_function", "scale_embedding", "pad_token_id", "bos_token_id", "eos_token_id",
                               "decoder_start_token_id", "init_std")},
        forced_bos_token_id=hf.get("forced_bos_token_id"),
        forced_eos_token_id=hf.get("forced_eos_token_id"),
        head=architecture_head(hf, "Bart", ARCHITECTURE_HEADS, default="ForConditionalGeneration"),
        num_labels=hf.get("num_labels") or len(hf.get("id2label") or {}) or d.num_labels,
    )  # fmt: skip


TIED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")


def convert_state_dict(sd: dict[str, torch.Tensor], cfg: bart.BartConfig) -> dict[str, torch.Tensor]:
    """Drop the `model.` prefix; the token embeddings of both stacks and the LM head are `shared` (checked)."""
    out = {key.removeprefix("model."): value.contiguous() for key, value in sd.items()}
    if "shared.weight" not in out and "encoder.embed_tokens.weight" in out:
        out["shared.weight"] = out["encoder.embed_tokens.weight"]
    for name in TIED:
        tied = out.pop(name, None)
        if tied is not None and "shared.weight" in out and not torch.equal(tied, out["shared.weight"]):
            log.warning("%s differs from the shared embedding; trtformer ties them and uses shared", name)
    if cfg.head == "generation":
        out.setdefault("final_logits_bias", torch.zeros(1, cfg.vocab_size))  # BartModel has none
    return out


# ---------------------------------------------------------------------------------------------- entry

PRESETS = {
    "tiny-bart": bart.BartConfig(vocab_size=512, max_position_embeddings=128, d_model=64, encoder_layers=2, decoder_layers=2,
                                 encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128),
    "bart-base-random": bart.BartConfig(),  # facebook/bart-base's shape: 6 + 6 layers, width 768, 140M parameters
}  # fmt: skip

FAMILY = Family(
    name="bart",
    config_class=bart.BartConfig,
    model_class=bart.Bart,
    spec=spec,
    to_kwargs=s2s.to_kwargs,
    hf_model_types={"bart": HFLoader(config_from_hf, convert_state_dict)},
    presets=PRESETS,
    fp32_heads=("lm_head",),
    ort_optimizer=OrtOptimizer("bart", "encoder_attention_heads", "d_model", "activation_function"),
    graphs=graphs,
)
