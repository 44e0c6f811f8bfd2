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
from . import gpt

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


def _architecture_head(hf: dict, prefix: str, heads: dict[str, str]) -> str:
    archs = hf.get("architectures") or [f"{prefix}LMHeadModel"]
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


FAMILIES = {
    # model_type -> (family, config builder, state-dict converter, model class)
    "gpt2": ("gpt", gpt_config_from_hf, gpt_convert_state_dict, gpt.GPT),
    "openai-gpt": ("gpt", gpt_config_from_hf, gpt_convert_state_dict, gpt.GPT),
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
