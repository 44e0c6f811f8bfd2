"""Hugging Face checkpoint directories, read without knowing the family: config.json, the weights, the tokenizer files.

A checkpoint directory holds config.json and weights (model.safetensors, a sharded safetensors index, or
pytorch_model.bin). Which family a `model_type` is, and how its config and weight names map onto a trtformer model,
is the family's registry entry (trtformer.families); this module holds what every entry shares, so that the models
never need to know the registry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError

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


def checkpoint_dir(path: str | Path) -> Path:
    """`path` as a checkpoint directory that exists; a CheckpointError otherwise."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory")
    return path


def read_hf_config(path: Path) -> dict:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{path} has no config.json")
    try:
        return json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {exc}") from exc


def read_hf_weights(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors. pytorch_model.bin is read with torch's weights-only unpickler, so a pickle that
    would run code is refused, never executed; what is wrong is said without torch's advice to turn that off."""
    import pickle

    from safetensors import SafetensorError
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
            sd = torch.load(binary, map_location="cpu", weights_only=True)
            if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
                raise CheckpointError(f"{binary} holds no state dict of tensors")
            return sd
    except pickle.UnpicklingError as exc:
        detail = next((ln.split("error:", 1)[-1].strip() for ln in str(exc).splitlines() if "Unpickler error" in ln), "")
        raise CheckpointError(f"{binary} is corrupt or holds objects other than tensors; the weights-only reader refused "
                              f"it and ran nothing in it{f' ({detail[:120]})' if detail else ''}",
                              hint="re-save the checkpoint, preferably as model.safetensors") from None  # fmt: skip
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError, EOFError, TypeError) as exc:
        reason = str(exc).splitlines()[0][:200] if str(exc) else "the file is empty or cut short"
        raise CheckpointError(f"cannot read the weights in {path}: {reason}") from None
    raise CheckpointError(f"{path} has no weights (model.safetensors, model.safetensors.index.json or pytorch_model.bin)")


def tokenizer_files(path: Path) -> list[Path]:
    return [path / f for f in TOKENIZER_FILES if (path / f).is_file()]


def load_state(model: nn.Module, sd: dict[str, torch.Tensor], where: Path) -> None:
    """Load `sd` into `model` strictly; missing, unexpected or misshapen weights fail by name."""
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


# ---------------------------------------------------------------------------------------------- HF naming conventions


def architecture_head(hf: dict, prefix: str, heads: dict[str, str], default: str = "LMHeadModel") -> str:
    """The head an HF `architectures` entry names: `prefix` + a suffix of `heads` (e.g. GPT2 + LMHeadModel -> lm)."""
    archs = hf.get("architectures") or [f"{prefix}{default}"]
    for arch in archs:
        suffix = arch[len(prefix):] if arch.startswith(prefix) else None
        if suffix in heads:
            return heads[suffix]
    raise CheckpointError(
        f"architecture {archs} is not supported for model type {hf.get('model_type')!r}",
        hint=f"supported: {', '.join(prefix + s for s in heads)}",
    )


def rename_prefix(key: str, renames: dict[str, str]) -> str:
    """`key` with the first matching old prefix of `renames` replaced by its new one."""
    for old, new in renames.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key
