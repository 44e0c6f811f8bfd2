"""Reference models, one file per family, and their loaders."""

from __future__ import annotations

from pathlib import Path

from .checkpoints import LoadedModel, load_checkpoint
from .presets import PRESETS, preset


def load_model(source: str | Path) -> LoadedModel:
    """A preset name or a Hugging Face checkpoint directory -> the trtformer reference model (eval mode)."""
    if isinstance(source, str) and source in PRESETS:
        return preset(source)
    return load_checkpoint(source)


__all__ = ["LoadedModel", "PRESETS", "load_checkpoint", "load_model", "preset"]


def build_model(family: str, config: dict):
    """An uninitialised reference model of `family` from a manifest's config dict."""
    from . import bert, gpt, longformer, transfo_xl

    builders = {
        "bert": (bert.BertConfig, bert.Bert),
        "gpt": (gpt.GPTConfig, gpt.GPT),
        "longformer": (longformer.LongformerConfig, longformer.Longformer),
        "transfo_xl": (transfo_xl.TransfoXLConfig, transfo_xl.TransfoXL),
    }
    cfg_cls, model_cls = builders[family]
    return model_cls(cfg_cls(**config))
