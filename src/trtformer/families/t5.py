"""T5: the registry entry (encoder and decoder-step graphs for generation, one graph for the encoder alone; HF
checkpoints of T5 v1.0, v1.1 and flan configs; presets). ONNX Runtime's transformer optimizer has no T5 fusions."""

from __future__ import annotations

import logging

import torch

from ..artifact import GraphSpec, TensorSpec
from ..artifact.dtypes import from_torch
from ..models import t5
from ..models.checkpoints import architecture_head
from . import Family, Graphs, HFLoader
from . import seq2seq as s2s

log = logging.getLogger(__name__)


def shape(model: t5.T5) -> s2s.Seq2SeqShape:
    cfg = model.config
    return s2s.Seq2SeqShape(cfg.vocab_size, cfg.d_model, cfg.num_decoder_layers, cfg.num_heads, cfg.d_kv, cfg.n_positions,
                            cfg.n_positions, from_torch(model.compute_dtype).name)  # fmt: skip


def spec(model: t5.T5) -> GraphSpec:
    """Graph "model": the whole forward for given target tokens, or the encoder alone (last_hidden_state)."""
    s = shape(model)
    if model.config.head == "generation":
        return s2s.full_graph(s)
    enc = s2s.encoder_graph(s)
    return GraphSpec("model", enc.inputs, (TensorSpec("last_hidden_state", s.dtype, ("batch", "enc", s.d_model)),), {},
                     (), enc.dims, enc.limits, padding_side="right")  # fmt: skip


def graphs(model: t5.T5) -> Graphs | None:
    if model.config.head != "generation":
        return None
    s = shape(model)
    return Graphs((s2s.encoder_graph(s), s2s.decoder_graph(s)), s2s.links(s))


# ---------------------------------------------------------------------------------------------- HF checkpoints

ARCHITECTURE_HEADS = {"ForConditionalGeneration": "generation", "Model": "generation", "EncoderModel": "encoder"}


def config_from_hf(hf: dict) -> t5.T5Config:
    d = t5.T5Config()

    def get(key):
        return hf[key] if hf.get(key) is not None else getattr(d, key)

    # transformers 5 writes tie_word_embeddings true and says with scale_decoder_outputs whether to rescale; older
    # checkpoints (v1.1, flan) say tie_word_embeddings false: an untied head and no rescale.
    tied = hf.get("tie_word_embeddings", True) is not False
    return t5.T5Config(
        **{k: get(k) for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "relative_attention_num_buckets",
                               "relative_attention_max_distance", "layer_norm_epsilon", "feed_forward_proj", "n_positions",
                               "pad_token_id", "eos_token_id", "initializer_factor")},
        num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        tie_word_embeddings=tied,
        scale_decoder_outputs=hf.get("scale_decoder_outputs", tied),
        decoder_start_token_id=next(v for v in (hf.get("decoder_start_token_id"), hf.get("pad_token_id"), 0) if v is not None),
        head=architecture_head(hf, "T5", ARCHITECTURE_HEADS, default="ForConditionalGeneration"),
    )  # fmt: skip


def convert_state_dict(sd: dict[str, torch.Tensor], cfg: t5.T5Config) -> dict[str, torch.Tensor]:
    """The checkpoints' names are the model's; the stacks' token embeddings are `shared`, and so is a tied head."""
    out = {k: v.contiguous() for k, v in sd.items()}
    if "shared.weight" not in out and "encoder.embed_tokens.weight" in out:
        out["shared.weight"] = out["encoder.embed_tokens.weight"]
    tied = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"] + (["lm_head.weight"] if cfg.tie_word_embeddings else [])
    for name in tied:
        value = out.pop(name, None)
        if value is not None and not torch.equal(value, out["shared.weight"]):
            log.warning("%s differs from the shared embedding; the checkpoint ties them, so trtformer uses shared", name)
    if cfg.head == "encoder":  # T5EncoderModel's checkpoint has no decoder; a full one's decoder is not needed
        out = {k: v for k, v in out.items() if not k.startswith(("decoder.", "lm_head."))}
    return out


# ---------------------------------------------------------------------------------------------- entry

TINY = dict(vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4, n_positions=128)
PRESETS = {
    "tiny-t5": t5.T5Config(**TINY),  # v1.0: ReLU, tied and rescaled head
    "tiny-t5-gated": t5.T5Config(**TINY, feed_forward_proj="gated-gelu", tie_word_embeddings=False, scale_decoder_outputs=False),
    "t5-small-random": t5.T5Config(),  # t5-small's shape: 6 + 6 layers, width 512, 60M parameters
}  # fmt: skip

FAMILY = Family(
    name="t5",
    config_class=t5.T5Config,
    model_class=t5.T5,
    spec=spec,
    to_kwargs=s2s.to_kwargs,
    hf_model_types={"t5": HFLoader(config_from_hf, convert_state_dict)},
    presets=PRESETS,
    fp32_heads=("lm_head",),
    graphs=graphs,
)
