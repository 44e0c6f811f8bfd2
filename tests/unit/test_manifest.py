"""The typed manifest: schema 2 round-trips, schema 1 is lifted into graph "model", and every malformed or
path-escaping manifest is refused with an ArtifactError that names the field (never a KeyError or TypeError)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trtformer.artifact import Artifact, Manifest, read_manifest
from trtformer.artifact.dtypes import DTYPES, dtype, from_trt
from trtformer.artifact.examples import example_feeds, example_sizes
from trtformer.errors import ArtifactError

FIXTURES = Path(__file__).parents[1] / "fixtures"
GPT_V1 = FIXTURES / "schema1-tiny-gpt2"
TXL_V1 = FIXTURES / "schema1-tiny-transfo-xl"


def v1(path: Path = GPT_V1) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_schema_1_is_lifted_into_graph_model_with_roles():
    m = Manifest.from_dict(v1())
    assert m.read_schema == 1 and list(m.graphs) == ["model"]
    g = m.graph()
    assert {t.name: t.role for t in g.inputs[:2]} == {"input_ids": "ids", "attention_mask": "padding-mask"}
    assert all(t.role == "state" for t in g.inputs[2:]) and len(g.state) == 4
    assert g.models == {"plain": "model.onnx", "optimized": "model.opt.onnx"} and g.variant() == "optimized"
    assert g.limits == {"past + seq": 128} and g.fusions["SkipLayerNormalization"] == 4
    txl = Manifest.from_dict(v1(TXL_V1))
    assert txl.plugins[0].name == "RelPositionAttention" and txl.plugins[0].attributes["mem_len"] == 16
    assert txl.graph().sequence_dim == "seg" and txl.graph().state_kinds == {"memory"}


def test_schema_2_round_trips():
    m = Manifest.from_dict(v1(TXL_V1))
    d = m.to_dict()
    assert d["schema_version"] == 2 and "inputs" not in d and d["graphs"]["model"]["inputs"][0]["role"] == "ids"
    again = Manifest.from_dict(json.loads(json.dumps(d)))
    assert again.to_dict() == d and again.read_schema == 2


def test_unknown_keys_survive_a_rewrite():
    d = Manifest.from_dict(v1()).to_dict() | {"written_by_a_newer_trtformer": {"x": 1}}
    assert Manifest.from_dict(d).to_dict()["written_by_a_newer_trtformer"] == {"x": 1}


def _v2() -> dict:
    return Manifest.from_dict(v1()).to_dict()


def _set(d: dict, path: str, value) -> dict:
    d = copy.deepcopy(d)
    *parents, last = path.split("::")
    node = d
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is KeyError:
        del node[last]
    else:
        node[int(last) if isinstance(node, list) else last] = value
    return d


MODEL = "graphs::model"
BAD = [
    (None, "must be a JSON object"),
    (42, "must be a JSON object"),
    ("graphs", {}, "lists no graphs"),
    ("graphs", "x", "graphs must be a JSON object"),
    (f"{MODEL}::inputs", "x", "inputs must be a list"),
    (f"{MODEL}::inputs::0", 7, "must be a JSON object"),
    (f"{MODEL}::inputs::0::dtype", "float128", "unknown tensor dtype"),
    (f"{MODEL}::inputs::0::shape", ["batch", -1], "dimension -1"),
    (f"{MODEL}::inputs::0::shape", ["max(a, b)"], "neither a name"),
    (f"{MODEL}::inputs::0::role", "banana", "must be one of"),
    (f"{MODEL}::state", None, "state must be a list"),
    (f"{MODEL}::state::0::kind", "cache", "must be one of"),
    (f"{MODEL}::state::0::output", "nothing", "names a tensor the graph lacks"),
    (f"{MODEL}::models", {}, "must name at least the plain graph"),
    (f"{MODEL}::models::plain", "/etc/passwd", "which files does not list"),
    (f"{MODEL}::models::plain", "../../other/model.onnx", "which files does not list"),
    (f"{MODEL}::dims::seq::min", "1", "must be an integer"),
    (f"{MODEL}::padding_side", "middle", "must be one of"),
    ("files::model.onnx::bytes", KeyError, "lacks 'bytes'"),
    ("files::model.onnx::sha256", "abc", "not a sha256"),
    ("files", {}, "which files does not list"),
    ("files::../outside.bin", {"sha256": "0" * 64, "bytes": 1}, "not a path inside the artifact"),
    ("engines::../../x.engine", {}, "not a path inside the artifact"),
    ("reference", "weights.bin", "not listed in files"),
    ("form", "compact", "forms are"),
    ("schema_version", "1", "must be an integer"),
    ("schema_version", 99, "schema_version 99"),
    ("links", [{"source_graph": "model", "source": "logits", "target_graph": "other", "target": "x", "kind": "feed"}],
     "no input of the artifact's graphs"),
]


@pytest.mark.parametrize("case", BAD, ids=[str(c[-1]) for c in BAD])
def test_malformed_manifest_is_refused_with_the_field_named(case):
    data = case[0] if len(case) == 2 else _set(_v2(), case[0], case[1])
    with pytest.raises(ArtifactError, match=case[-1].replace("(", r"\(").replace(")", r"\)")):
        Manifest.from_dict(data)


def test_a_manifest_cannot_open_files_outside_its_artifact(tmp_path):
    import shutil

    art = Path(shutil.copytree(GPT_V1, tmp_path / "a"))
    (tmp_path / "secret.onnx").write_bytes(b"x")
    (art / "link.onnx").symlink_to(tmp_path / "secret.onnx")
    d = _v2()
    d["files"]["link.onnx"] = {"sha256": "0" * 64, "bytes": 1}
    (art / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="leads outside the artifact"):
        Artifact.load(art)


def test_the_one_dtype_table_covers_every_spelling():
    assert dtype("bfloat16").numpy is None and dtype("bfloat16").host == "float32"
    assert from_trt("HALF").name == "float16" and from_trt("BF16").name == "bfloat16"
    assert {d.onnx for d in DTYPES.values()} == {1, 10, 16, 7, 6, 3, 2, 9}  # onnx.TensorProto's values
    import onnx

    assert all(onnx.helper.tensor_dtype_to_np_dtype(d.onnx).name == d.numpy for d in DTYPES.values() if d.numpy)
    with pytest.raises(ArtifactError, match="unknown tensor dtype"):
        dtype("complex64")


def test_examples_follow_roles_not_names():
    g = read_manifest(GPT_V1).graph()
    rng = np.random.default_rng(0)
    sizes = example_sizes(g, batch=3, length=6)
    assert sizes == {"batch": 3, "seq": 6, "past": 0}
    feeds = example_feeds(g, sizes, rng, pad=True)
    mask = feeds["attention_mask"]
    assert mask[0].all() and not mask[1:, 0].any() and mask[:, -1].all()  # left padding: rows 1.. lose a prefix
    assert feeds["past.0.key"].shape == (3, 4, 0, 16) and feeds["input_ids"].max() <= 511


def test_the_artifact_package_imports_neither_torch_nor_onnx():
    code = ("import sys; sys.modules['torch'] = sys.modules['onnx'] = None\n"
            "import trtformer.artifact, trtformer.artifact.examples\n"
            f"print(trtformer.artifact.Artifact.load({str(GPT_V1)!r}).graph().name)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "model"
