"""Optimisation profiles from manifest dims: defaults, derived dims, overrides and their errors (no TensorRT)."""

from __future__ import annotations

import re

import pytest

from trtformer.artifact import GraphSpec
from trtformer.engines.profiles import DEFAULT_MAX, DimRange, parse_override
from trtformer.engines.profiles import resolve as resolve_graph
from trtformer.errors import ArtifactError, InputError
from trtformer.trt.flavors import parse_capability


def resolve(graph: dict, overrides=None):
    """profiles.resolve on a graph written as manifest JSON, read as the runtime reads it."""
    return resolve_graph(GraphSpec.from_dict("model", {"outputs": [], "models": {"plain": "model.onnx"}, **graph}, "test"), overrides)


def gpt_manifest(n_positions: int = 64) -> dict:
    """The I/O part of a GPT-2 LM graph (2 layers, 4 heads of 16), as the exporter writes it."""
    kv = ["batch", 4, "past", 16]
    return {
        "inputs": [
            {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"], "role": "ids"},
            {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "past + seq"], "role": "padding-mask"},
            *({"name": f"past.{i}.{p}", "dtype": "float32", "shape": kv, "role": "state"} for i in range(2) for p in ("key", "value")),
        ],
        "dims": {
            "batch": {"min": 1, "max": None, "opt": 1},
            "seq": {"min": 1, "max": n_positions, "opt": 1},
            "past": {"min": 0, "max": n_positions - 1, "opt": 128},
        },
        "limits": {"past + seq": n_positions},
    }


def test_defaults_follow_the_manifest_with_a_cap_for_unbounded_dims():
    p = resolve(gpt_manifest())
    assert p.dims["batch"] == DimRange(1, 1, DEFAULT_MAX)
    assert p.dims["seq"] == DimRange(1, 1, 64)
    assert p.dims["past"] == DimRange(0, 63, 63)  # zero-length past allowed; opt 128 clamped into range
    # derived from its parts and clamped to the context: decode at full context is the opt shape
    assert p.dims["past + seq"] == DimRange(1, 64, 64)
    assert p.shapes["attention_mask"] == {"min": (1, 1), "opt": (1, 64), "max": (DEFAULT_MAX, 64)}
    assert p.shapes["past.1.value"] == {"min": (1, 4, 0, 16), "opt": (1, 4, 63, 16), "max": (DEFAULT_MAX, 4, 63, 16)}


def test_overrides_replace_one_dim_and_flow_into_derived_dims():
    p = resolve(gpt_manifest(), ["batch=2:4:8", "past=0:16:32", "seq=3"])
    assert p.dims["batch"] == DimRange(2, 4, 8)
    assert p.dims["seq"] == DimRange(3, 3, 3)
    assert p.dims["past + seq"] == DimRange(3, 19, 35)
    assert p.shapes["input_ids"] == {"min": (2, 3), "opt": (4, 3), "max": (8, 3)}
    assert p.to_dict()["dims"]["past"] == {"min": 0, "opt": 16, "max": 32}


def test_limits_on_a_single_dim_cap_it():
    m = {"inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"], "role": "ids"}],
         "dims": {"batch": {"min": 1, "max": None, "opt": 1}, "seq": {"min": 1, "max": None, "opt": 128}},
         "limits": {"seq": 32}}
    assert resolve(m).dims["seq"] == DimRange(1, 32, 32)
    with pytest.raises(InputError, match="accepts 1 <= seq <= 32"):
        resolve(m, ["seq=1:8:33"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("batch", "is not NAME=MIN:OPT:MAX"),
        ("batch=1:2", "is not NAME=MIN:OPT:MAX"),
        ("=1:1:1", "is not NAME=MIN:OPT:MAX"),
        ("batch=a:b:c", "sizes must be integers"),
        ("batch=4:2:8", "0 <= min <= opt <= max"),
        ("batch=-1:1:2", "0 <= min <= opt <= max"),
        ("batch=0:1:2", "accepts batch >= 1"),
        ("seq=1:1:65", "accepts 1 <= seq <= 64"),
        ("past=0:1:64", "accepts 0 <= past <= 63"),
        ("heads=1:1:1", "no such dim (dims: batch, seq, past)"),
        ("past + seq=1:1:1", "derived from past and seq"),
    ],
)
def test_bad_overrides_are_input_errors(override, message):
    with pytest.raises(InputError, match=re.escape(message)) as info:
        resolve(gpt_manifest(), [override])
    assert "trtformer info" in info.value.hint


def test_minima_above_a_limit_and_repeated_overrides_are_rejected():
    with pytest.raises(InputError, match="minima of past \\+ seq add up to 70, above the model's limit 64"):
        resolve(gpt_manifest(), ["past=40:40:63", "seq=30:30:30"])
    with pytest.raises(InputError, match="sets batch twice"):
        resolve(gpt_manifest(), ["batch=1", "batch=2"])


def test_an_input_dim_the_manifest_does_not_describe_is_an_artifact_error():
    m = gpt_manifest()
    m["inputs"][1]["shape"] = ["batch", "past + extra"]
    with pytest.raises(ArtifactError, match="'extra'"):
        resolve(m)


def test_parse_override_fixed_size():
    assert parse_override(" batch = 4") == ("batch", DimRange(4, 4, 4))


@pytest.mark.parametrize(("text", "label"), [("8.6", "8.6"), ("86", "8.6"), ("sm_89", "8.9"), ("SM120", "12.0"), ("current", "current")])
def test_compute_capability_spellings(text, label):
    assert parse_capability(text) == label


def test_bad_compute_capability_is_an_input_error():
    with pytest.raises(InputError, match="'ampere' is not like 8.6"):
        parse_capability("ampere")


def test_an_opt_override_shrinks_the_opts_of_the_parts_left_free():
    """seq's opt at the full context leaves no room for a past: its opt becomes 0, so that every opt shape is one the
    graph can take (TensorRT refuses `past + seq` opt values that break the relation)."""
    p = resolve(gpt_manifest(), ["seq=1:64:64"])
    assert p.dims["seq"] == DimRange(1, 64, 64) and p.dims["past"] == DimRange(0, 0, 63)
    assert p.dims["past + seq"] == DimRange(1, 64, 64)
    assert p.shapes["past.0.key"]["opt"] == (1, 4, 0, 16) and p.shapes["attention_mask"]["opt"] == (1, 64)
    p = resolve(gpt_manifest(), ["seq=1:40:64"])
    assert p.dims["past"] == DimRange(0, 24, 63) and p.dims["past + seq"].opt == 64  # shrunk just enough
    assert resolve(gpt_manifest(), ["past=0:10:63"]).dims["seq"] == DimRange(1, 1, 64)  # fits: nothing shrinks


@pytest.mark.parametrize("n_positions", [64, 100])
def test_every_corner_keeps_the_derived_dim_equal_to_its_parts(n_positions):
    """For any override of seq, the opt (and min) corners of `past + seq` are the sum of the parts' corners."""
    for opt in range(1, n_positions + 1, 7):
        p = resolve(gpt_manifest(n_positions), [f"seq=1:{opt}:{n_positions}"])
        for corner in ("min", "opt"):
            parts = getattr(p.dims["past"], corner) + getattr(p.dims["seq"], corner)
            assert getattr(p.dims["past + seq"], corner) == parts <= n_positions


def test_overrides_whose_opts_cannot_fit_are_refused_before_a_build():
    with pytest.raises(InputError, match=re.escape("the opt sizes of past + seq (past 40, seq 30) make 70, above the "
                                                   "model's limit 64")) as info:  # fmt: skip
        resolve(gpt_manifest(), ["past=0:40:63", "seq=1:30:64"])
    assert "trtformer info" in info.value.hint
