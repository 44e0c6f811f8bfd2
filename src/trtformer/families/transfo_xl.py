"""Transformer-XL: the registry entry (segment I/O with the memory as state, HF checkpoints, presets, its fused op)."""

from __future__ import annotations

import logging

import torch

from ..artifact import DimSpec, GraphSpec, StatePair, TensorSpec
from ..artifact.dtypes import from_torch
from ..errors import CheckpointError
from ..models import transfo_xl
from ..models.checkpoints import architecture_head
from ..ops import rel_position
from . import Family, HFLoader

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- graph I/O


def spec(model: transfo_xl.TransfoXL) -> GraphSpec:
    """Segment in, head output and new memory out; the memory [mem, batch, d_model] is state of kind "memory".

    The memory keeps the last mem_len rows of [mems ; segment], so it grows by seg per call until it reaches
    mem_len: "min(mem_len, mem + seg)". One symbol for every layer's memory, as they always have one length.
    """
    cfg = model.config
    dtype = from_torch(model.compute_dtype).name
    mem = ("mem", "batch", cfg.d_model)
    new_mem = (f"min({cfg.mem_len}, mem + seg)", "batch", cfg.d_model)
    inputs = [TensorSpec("input_ids", "int64", ("batch", "seg"), (0, cfg.vocab_size - 1), "token ids of this segment", role="ids")]
    # Adaptive softmax: log-probabilities; a plain softmax head: logits. fp32 at every precision.
    outputs = [TensorSpec(cfg.lm_output, "float32", ("batch", "seg", cfg.vocab_size))]
    state = []
    for i in range(cfg.n_layer):
        inputs.append(TensorSpec(f"mems.{i}", dtype, mem, description=f"layer {i}'s input over the last segments", role="state"))
        outputs.append(TensorSpec(f"new_mems.{i}", dtype, new_mem))
        state.append(StatePair(f"mems.{i}", f"new_mems.{i}", 0, "memory"))
    dims = {
        "batch": DimSpec(1, None, 1, "independent streams"),
        # Relative positions set no length limit; the paper evaluates WikiText-103 with segments of 128.
        "seg": DimSpec(1, None, min(128, max(1, cfg.mem_len)), "tokens in this segment"),
        "mem": DimSpec(0, cfg.mem_len, cfg.mem_len, "memory rows carried from earlier segments"),
    }
    return GraphSpec("model", tuple(inputs), tuple(outputs), {}, tuple(state), dims)


def to_kwargs(named: dict[str, torch.Tensor]) -> dict:
    kwargs = {k: v for k, v in named.items() if not k.startswith("mems.")}
    n_layer = sum(1 for k in named if k.startswith("mems."))
    if n_layer:
        kwargs["mems"] = [named[f"mems.{i}"] for i in range(n_layer)]
    return kwargs


# ---------------------------------------------------------------------------------------------- HF checkpoints

# config.json keys that map one to one; absent keys take TransfoXLConfig's defaults, which are HF's.
CONFIG_KEYS = (
    "cutoffs", "d_model", "d_embed", "n_head", "d_head", "d_inner", "div_val", "pre_lnorm", "n_layer", "mem_len",
    "clamp_len", "same_length", "untie_r", "tie_word_embeddings", "tie_projs", "layer_norm_epsilon", "init_std",
    "proj_init_std", "eos_token_id",
)  # fmt: skip


def config_from_hf(hf: dict) -> transfo_xl.TransfoXLConfig:
    architecture_head(hf, "TransfoXL", {"LMHeadModel": "lm"})
    if hf.get("attn_type", 0) != 0:
        raise CheckpointError(f"Transformer-XL attn_type {hf['attn_type']} is not supported (only 0, as in HF)")
    if hf.get("sample_softmax", -1) > 0:
        raise CheckpointError("Transformer-XL with a sampled softmax (sample_softmax > 0) is not supported")
    kw = {k: hf[k] for k in CONFIG_KEYS if k in hf}
    # The tie_projs a model was saved with; HF derives it from proj_share_all_but_first when it is absent.
    if kw.get("tie_projs") is None and "proj_share_all_but_first" in hf:
        tails = len(kw.get("cutoffs", transfo_xl.TransfoXLConfig.cutoffs))
        kw["tie_projs"] = [False] + [bool(hf["proj_share_all_but_first"])] * tails
    return transfo_xl.TransfoXLConfig(vocab_size=hf.get("vocab_size", hf.get("n_token")), **kw)


def convert_state_dict(sd: dict[str, torch.Tensor], cfg: transfo_xl.TransfoXLConfig) -> dict:
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


# ---------------------------------------------------------------------------------------------- entry

PRESETS = {
    "tiny-transfo-xl": transfo_xl.TransfoXLConfig(vocab_size=512, cutoffs=(64, 256), d_model=64, d_embed=64, n_head=4, d_head=16, d_inner=128, div_val=2, n_layer=2, mem_len=16, clamp_len=24),
    # The other head and the other attention paths: plain softmax (logits), one projected table, shared u and v,
    # pre-LayerNorm, causal windows that grow with the memory, no clamp. A wider init gives logits of order 1
    # (at 0.02 they stay near 1e-3 with no final LayerNorm), so parity compares numbers that mean something.
    "tiny-transfo-xl-softmax": transfo_xl.TransfoXLConfig(vocab_size=512, cutoffs=(), d_model=64, d_embed=48, n_head=4, d_head=16, d_inner=128, div_val=1, n_layer=2, mem_len=12, clamp_len=0, same_length=False, untie_r=False, pre_lnorm=True, init_std=0.1, proj_init_std=0.1),
}

FAMILY = Family(
    name="transfo_xl",
    config_class=transfo_xl.TransfoXLConfig,
    model_class=transfo_xl.TransfoXL,
    spec=spec,
    to_kwargs=to_kwargs,
    hf_model_types={"transfo-xl": HFLoader(config_from_hf, convert_state_dict)},
    presets=PRESETS,
    fp32_heads=("crit",),  # the (adaptive) softmax; its projections are no Linear32
    fused_ops=(rel_position.IDENTITY.name,),
)
