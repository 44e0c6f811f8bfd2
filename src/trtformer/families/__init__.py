"""One registry entry per model family: what the loaders, the exporter and the runtimes know of a family beyond its
nn.Module, in one place.

An entry (families/NAME.py, `FAMILY = Family(...)`, listed in ENTRIES below) names the family's config and model
classes, its graph I/O with a role on every input, how flattened inputs become the model's keyword arguments, the
Hugging Face model types it reads, its presets, the modules its precision keeps fp32, ONNX Runtime's optimizer for
it, and the fused ops it calls. An encoder-decoder family also gives `graphs`: the several graphs its generation
head exports as (encoder, decoder step) and the links that chain them. Nothing else in trtformer matches on a family's name, so a new family without a
fused op touches its model file and its registry entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from ..artifact import GraphSpec, Link
from ..errors import ArtifactError, CheckpointError
from ..models.checkpoints import (
    LoadedModel,
    checkpoint_dir,
    load_state,
    read_hf_config,
    read_hf_weights,
    tokenizer_files,
)


@dataclass(frozen=True)
class HFLoader:
    """How one Hugging Face `model_type` becomes this family's model."""

    read_config: Callable[[dict], Any]  # config.json -> the family's config
    convert_weights: Callable[[dict, Any], dict]  # (HF state dict, config) -> the model's state dict


@dataclass(frozen=True)
class OrtOptimizer:
    """ONNX Runtime's transformer optimizer for a family: its model_type and the config keys it needs."""

    model_type: str
    heads_key: str
    width_key: str
    activation_key: str


class Graphs(NamedTuple):
    """The graphs a model exports instead of its single spec graph, and how they chain (see artifact.Link)."""

    graphs: tuple[GraphSpec, ...]  # models left empty, as spec's
    links: tuple[Link, ...]


@dataclass(frozen=True)
class Family:
    name: str
    config_class: type
    model_class: type[nn.Module]
    spec: Callable[[nn.Module], GraphSpec]  # graph "model": I/O with roles, state, dims, limits; models left empty
    to_kwargs: Callable[[dict], dict]  # flattened inputs (spec order, by name) -> the model's keyword arguments
    hf_model_types: Mapping[str, HFLoader]
    presets: Mapping[str, Any]  # name -> config; weights are random from a seed, so demos and tests need no download
    fp32_heads: tuple[str, ...] = ()  # module names kept fp32 at every precision, beyond Linear32 modules
    ort_optimizer: OrtOptimizer | None = None  # None: ONNX Runtime has no fusions for this family
    fused_ops: tuple[str, ...] = ()  # the torch custom ops the model calls; with any, the family has a plugin form
    # The model's graphs when it exports several (seq2seq generation: encoder and decoder step), else None: the
    # exporter then writes `spec` as graph "model". Every graph runs through the model's forward and to_kwargs.
    graphs: Callable[[nn.Module], Graphs | None] | None = None

    @property
    def has_plugin_form(self) -> bool:
        return bool(self.fused_ops)

    def export_graphs(self, model: nn.Module) -> Graphs:
        """What the exporter writes for `model`: its several graphs and their links, or its spec alone."""
        several = self.graphs(model) if self.graphs is not None else None
        return several if several is not None else Graphs((self.spec(model),), ())

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        """An uninitialised model from a manifest's config dict (the config dataclass's `to_dict`)."""
        try:
            cfg = self.config_class(**config)
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"the manifest's config is not a {self.name} config: {exc}") from exc
        return self.model_class(cfg)


# The entries import Family from this module, so they are imported once it is defined.
from . import bart, bert, gpt, longformer, t5, transfo_xl  # noqa: E402

ENTRIES: tuple[Family, ...] = (gpt.FAMILY, bert.FAMILY, longformer.FAMILY, transfo_xl.FAMILY, bart.FAMILY, t5.FAMILY)
FAMILIES: dict[str, Family] = {f.name: f for f in ENTRIES}
# HF model_type -> (family, loader)
HF_MODEL_TYPES: dict[str, tuple[Family, HFLoader]] = {t: (f, loader) for f in ENTRIES for t, loader in f.hf_model_types.items()}


class Preset(NamedTuple):
    family: str
    config: Any


PRESETS: dict[str, Preset] = {name: Preset(f.name, cfg) for f in ENTRIES for name, cfg in f.presets.items()}


def family(name: str) -> Family:
    """The entry of family `name` (as a manifest names it)."""
    if name not in FAMILIES:
        raise ArtifactError(f"unknown model family {name!r}; trtformer knows {', '.join(FAMILIES)}",
                            hint="this artifact may come from a newer trtformer; upgrade it")  # fmt: skip
    return FAMILIES[name]


def build_model(family_name: str, config: Mapping[str, Any]) -> nn.Module:
    """An uninitialised reference model of `family_name` from a manifest's config dict."""
    return family(family_name).build(config)


def preset(name: str, seed: int = 0) -> LoadedModel:
    """A built-in model with random weights from `seed` (eval mode)."""
    if name not in PRESETS:
        raise CheckpointError(f"unknown preset {name!r}", hint=f"presets: {', '.join(PRESETS)}")
    fam = FAMILIES[PRESETS[name].family]
    model = fam.model_class(PRESETS[name].config).init_weights(seed)
    return LoadedModel(fam.name, model.eval(), name)


def load_checkpoint(path: str | Path) -> LoadedModel:
    """A Hugging Face checkpoint directory -> the trtformer reference model (eval mode), by its `model_type`."""
    path = checkpoint_dir(path)
    hf = read_hf_config(path)
    model_type = hf.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise CheckpointError(
            f"unknown model type {model_type!r} in {path / 'config.json'}",
            hint=f"supported model types: {', '.join(sorted(HF_MODEL_TYPES))}",
        )
    fam, loader = HF_MODEL_TYPES[model_type]
    try:
        cfg = loader.read_config(hf)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"config.json in {path} is incomplete or invalid: {exc!r}") from exc
    model = fam.model_class(cfg)
    load_state(model, loader.convert_weights(read_hf_weights(path), cfg), path)
    return LoadedModel(fam.name, model.eval(), str(path), tokenizer_files(path))


def load_model(source: str | Path) -> LoadedModel:
    """A preset name or a Hugging Face checkpoint directory -> the trtformer reference model (eval mode)."""
    if isinstance(source, str) and source in PRESETS:
        return preset(source)
    return load_checkpoint(source)


__all__ = [
    "ENTRIES", "FAMILIES", "HF_MODEL_TYPES", "PRESETS", "Family", "Graphs", "HFLoader", "LoadedModel", "OrtOptimizer", "Preset",
    "build_model", "family", "load_checkpoint", "load_model", "preset",
]  # fmt: skip
