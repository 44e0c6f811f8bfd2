"""The family registry: every entry is complete, and its graph spec agrees with its model's forward for every head."""

from __future__ import annotations

import dataclasses
import importlib
import json

import numpy as np
import pytest
import torch

from trtformer.artifact import GraphSpec
from trtformer.artifact.examples import example_feeds, example_sizes
from trtformer.artifact.records import INPUT_ROLES
from trtformer.artifact.shapes import resolve_shape
from trtformer.errors import ArtifactError
from trtformer.families import FAMILIES, HF_MODEL_TYPES, PRESETS, build_model, family, preset

TINY = {name: p for name, p in PRESETS.items() if name.startswith("tiny-")}


def heads(config) -> list[str]:
    """Every head the family's model module offers, as configs of `config`'s size (the config's own if none)."""
    module = importlib.import_module(type(config).__module__)
    names = getattr(module, "HEADS", None) if hasattr(config, "head") else None
    return [dataclasses.replace(config, head=h) for h in names] if names else [config]


def run_through_spec(fam, model) -> tuple[GraphSpec, dict, dict]:
    """The model's outputs for example inputs of its spec (batch 2, 3 new positions over 4 carried ones)."""
    graph = fam.spec(model)
    sizes = example_sizes(graph, 2, 3, state=4)
    feeds = example_feeds(graph, sizes, np.random.default_rng(0))
    named = {t.name: torch.from_numpy(feeds[t.name]).to(getattr(torch, t.dtype)) for t in graph.inputs}
    with torch.no_grad():
        return graph, sizes, model(**fam.to_kwargs(named))


@pytest.mark.parametrize("name", FAMILIES)
def test_entry_is_complete(name):
    fam = FAMILIES[name]
    assert fam.name == name and family(name) is fam
    assert fam.presets and all(isinstance(cfg, fam.config_class) for cfg in fam.presets.values())
    for model_type, loader in fam.hf_model_types.items():
        assert HF_MODEL_TYPES[model_type] == (fam, loader)
        assert callable(loader.read_config) and callable(loader.convert_weights)
    for op in fam.fused_ops:  # registered torch custom ops, by qualified name
        namespace, op_name = op.split("::")
        assert hasattr(getattr(torch.ops, namespace), op_name)
    assert fam.has_plugin_form == bool(fam.fused_ops)
    configs = [cfg.to_dict() for cfg in fam.presets.values()]
    if fam.ort_optimizer is not None:
        keys = (fam.ort_optimizer.heads_key, fam.ort_optimizer.width_key, fam.ort_optimizer.activation_key)
        assert all(k in cfg for cfg in configs for k in keys)


def test_names_are_claimed_once():
    assert len(PRESETS) == sum(len(f.presets) for f in FAMILIES.values())
    assert len(HF_MODEL_TYPES) == sum(len(f.hf_model_types) for f in FAMILIES.values())


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds_and_its_config_round_trips(name):
    loaded = preset(name)
    fam = FAMILIES[loaded.family]
    assert loaded.family == PRESETS[name].family and isinstance(loaded.model, fam.model_class)
    assert not loaded.model.training
    as_in_a_manifest = json.loads(json.dumps(loaded.config.to_dict()))
    rebuilt = build_model(fam.name, as_in_a_manifest)
    assert isinstance(rebuilt, fam.model_class) and rebuilt.config == loaded.config
    assert rebuilt.state_dict().keys() == loaded.model.state_dict().keys()
    for head in fam.fp32_heads:  # names a module the model has
        assert head in dict(loaded.model.named_modules())


@pytest.mark.parametrize("name", TINY)
def test_spec_matches_the_forward_of_every_head(name):
    fam = FAMILIES[PRESETS[name].family]
    for config in heads(PRESETS[name].config):
        model = fam.model_class(config).init_weights(0).eval()
        graph, sizes, out = run_through_spec(fam, model)
        assert graph.name == "model" and graph.models == {}
        graph.check(f"{name} ({getattr(config, 'head', '')})")  # names unique, state pairs sound, roles set
        assert all(t.role in INPUT_ROLES for t in graph.inputs)
        assert {t.name for t in graph.with_role("state")} == set(graph.state_inputs)
        assert graph.role_input("ids") is not None
        assert set(out) == set(graph.output_names), config
        for t in graph.outputs:
            want = resolve_shape(t.shape, sizes)
            assert tuple(out[t.name].shape) == want and str(out[t.name].dtype) == f"torch.{t.dtype}", (t.name, config)


def test_unknown_family_names_the_known_ones():
    with pytest.raises(ArtifactError, match="unknown model family 'llama'; trtformer knows gpt, bert"):
        family("llama")
    with pytest.raises(ArtifactError, match="not a gpt config"):
        build_model("gpt", {"n_layers": 2})
