"""Dimension expressions with min(): Transformer-XL's new memory is "min(mem_len, mem + seg)"."""

from __future__ import annotations

import pytest

from trtformer.artifact import GraphSpec, shapes
from trtformer.engines import profiles
from trtformer.engines.profiles import DimRange
from trtformer.errors import ArtifactError, InputError

NEW_MEM = "min(16, mem + seg)"


@pytest.mark.parametrize(("mem", "seg", "value"), [(0, 5, 5), (10, 5, 15), (12, 5, 16), (16, 1, 16), (0, 40, 16)])
def test_min_evaluates_to_the_smaller_argument(mem, seg, value):
    assert shapes.evaluate(NEW_MEM, {"mem": mem, "seg": seg}) == value


def test_min_nests_and_sums_with_other_terms():
    sizes = {"a": 7, "b": 5, "c": 2}
    assert shapes.evaluate("min(a, min(b, 3))", sizes) == 3
    assert shapes.evaluate("min(a, b) + c + 1", sizes) == 8
    assert shapes.evaluate("min(a)", sizes) == 7
    assert shapes.evaluate("min(a, b + c + 1)", sizes) == 7
    assert shapes.evaluate(NEW_MEM, {"mem": 3}) is None  # seg not bound yet
    assert shapes.terms("min(a, b + c) + 2") == ("min(a, b + c)", "2")


def test_symbols_and_is_symbol():
    assert shapes.symbols(NEW_MEM) == ["mem", "seg"]
    assert shapes.symbols("min(seg, 4) + seg + past") == ["seg", "past"]
    assert shapes.symbols(64) == []
    assert shapes.is_symbol("batch") and not shapes.is_symbol(NEW_MEM) and not shapes.is_symbol("past + seq")
    assert not shapes.is_symbol("16") and not shapes.is_symbol(16)


@pytest.mark.parametrize("bad", ["min(a", "a)", "max(a, b)", "min(a)(b)", "min()", "min(a,)", "min(a) - 1", "a, b"])
def test_malformed_expressions_are_refused(bad):
    with pytest.raises(ValueError, match="dimension"):
        shapes.evaluate(bad, {"a": 1, "b": 2})


def test_bind_leaves_min_for_check():
    """A memory state: its input binds mem, the output's min() is checked once mem and seg are bound."""
    sizes: dict[str, int] = {}
    assert shapes.bind(["mem", "batch", 64], (10, 2, 64), sizes) == []
    assert shapes.bind(["batch", "seg"], (2, 5), sizes) == []
    assert sizes == {"mem": 10, "batch": 2, "seg": 5}  # no symbol named after the expression
    assert shapes.bind([NEW_MEM, "batch", 64], (99, 2, 64), sizes) == []
    assert shapes.check([NEW_MEM, "batch", 64], (15, 2, 64), sizes) == []
    assert shapes.check([NEW_MEM, "batch", 64], (16, 2, 64), sizes) == ["axis 0 (min(16, mem + seg)) must be 15, got 16"]
    assert shapes.resolve_shape([NEW_MEM, "batch", 64], {**sizes, "mem": 14}) == (16, 2, 64)


def memory_manifest(new_mem_input: bool = False) -> dict:
    """Transformer-XL's inputs; optionally an input of the min() shape, so that the profile has to derive it."""
    inputs = [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seg"], "role": "ids"},
              {"name": "mems.0", "dtype": "float32", "shape": ["mem", "batch", 64], "role": "state"}]
    if new_mem_input:
        inputs.append({"name": "window", "dtype": "int64", "shape": [NEW_MEM, "batch"], "role": "padding-mask"})
    dims = {"batch": {"min": 1, "max": None, "opt": 1}, "seg": {"min": 1, "max": 64, "opt": 8},
            "mem": {"min": 0, "max": 16, "opt": 16}}  # fmt: skip
    return {"inputs": inputs, "outputs": [], "models": {"plain": "model.onnx"}, "dims": dims, "limits": {}}


def resolve(graph: dict, overrides=None):
    """profiles.resolve on a graph written as manifest JSON, read as the runtime reads it."""
    return profiles.resolve(GraphSpec.from_dict("model", graph, "test"), overrides)


def test_profiles_start_the_memory_at_zero_and_derive_min_from_the_corners():
    p = resolve(memory_manifest())
    assert p.dims["mem"] == DimRange(0, 16, 16)
    assert p.shapes["mems.0"] == {"min": (0, 1, 64), "opt": (16, 1, 64), "max": (16, 16, 64)}
    derived = resolve(memory_manifest(new_mem_input=True), ["seg=1:4:64"])
    assert derived.dims[NEW_MEM] == DimRange(1, 16, 16)  # min(16, 0 + 1), min(16, 16 + 4), min(16, 16 + 64)
    assert derived.shapes["window"]["min"] == (1, 1)


def test_profile_errors_name_the_parts_of_a_min():
    with pytest.raises(InputError, match="derived from mem and seg"):
        resolve(memory_manifest(new_mem_input=True), [f"{NEW_MEM}=1:1:1"])
    m = memory_manifest(new_mem_input=True)
    m["inputs"][2]["shape"] = ["min(16, mem + extra)", "batch"]
    with pytest.raises(ArtifactError, match="'extra'"):
        resolve(m)
