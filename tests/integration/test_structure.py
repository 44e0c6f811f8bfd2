"""The structure the code keeps: layers that import only downwards, artifacts written before schema 2 that still
load and run, artifacts of several chained graphs, and sessions with explicit lifetimes."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import trtformer
from trtformer.artifact import Artifact, read_manifest
from trtformer.errors import ArtifactError, BackendError, InputError

SRC = Path(trtformer.__file__).parent
FIXTURES = Path(__file__).parents[1] / "fixtures"

# The layers, lowest first. A module may import its own package and lower layers, never one of its rank or above:
# the README's architecture section is this table in words.
LAYERS = {
    "errors": 0,
    "artifact": 1,
    "ops": 2,
    "models": 3, "plugins": 3,
    "families": 4, "trt": 4,
    "exporter": 5, "engines": 5,
    "runtime": 6,
    "parity": 7, "bench": 7, "serve": 7,
    "cli": 8, "__init__": 8, "doctor": 8,
}  # fmt: skip


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """Every trtformer module `path` imports (function-level imports included): (line, module, names)."""
    module = "trtformer." + ".".join(path.relative_to(SRC).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    package = package.removesuffix(".__init__")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "trtformer"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "trtformer":
                names = [a.name for a in node.names]
                # `from .. import submodule` imports the submodule
                found += [(node.lineno, f"{target}.{n}" if target.count(".") == 0 and n != "__version__" else target, [n]) for n in names]
    return found


def test_no_module_imports_a_layer_at_or_above_its_own():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        source = "trtformer." + ".".join(path.relative_to(SRC).with_suffix("").parts)
        mine = _layer(source.removesuffix(".__init__") if path.name != "__init__.py" or path.parent != SRC else "trtformer")
        assert mine in LAYERS, f"{path} is in no layer: add its package to LAYERS and the README's architecture map"
        for line, target, names in _imports(path):
            theirs = _layer(target)
            if theirs == mine or names == ["__version__"]:
                continue
            if theirs not in LAYERS or LAYERS[theirs] >= LAYERS[mine]:
                wrong.append(f"{path.relative_to(SRC)}:{line} ({mine}) imports {target} ({theirs})")
            # A runtime reads engines (loader); building them is the engines layer's own business.
            if mine == "runtime" and theirs == "engines" and not target.startswith("trtformer.engines.loader"):
                wrong.append(f"{path.relative_to(SRC)}:{line} (runtime) imports {target}: only engines.loader may be")
    assert not wrong, "\n".join(wrong)


# --- artifacts written before schema 2 ------------------------------------------------------------------------


@pytest.fixture
def old_gpt(tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURES / "schema1-tiny-gpt2", tmp_path / "gpt"))


@pytest.fixture
def old_txl(tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURES / "schema1-tiny-transfo-xl", tmp_path / "txl"))


def test_old_artifacts_pass_parity_and_run(old_gpt, old_txl):
    from trtformer.parity import check_parity
    from trtformer.runtime.generate import generate
    from trtformer.runtime.stream import log_likelihood

    for path in (old_gpt, old_txl):
        assert read_manifest(path).read_schema == 1
        report = check_parity(path, backend="ort-cpu")
        assert report.passed, report.table()
    with trtformer.load(old_gpt) as session:
        assert session.artifact.model_path().name == "model.opt.onnx"
        assert len(generate(session, [[1, 2, 3]], max_new_tokens=5, ignore_eos=True).tokens[0]) == 5
    with trtformer.load(old_txl) as session:
        assert np.isfinite(log_likelihood(session, list(range(40)), seg_len=8).perplexity)
    # Reading changes nothing: the manifest is rewritten (as schema 2) only by something that records, e.g. a build.
    assert json.loads((old_gpt / "manifest.json").read_text())["schema_version"] == 1


def test_a_build_upgrades_an_old_manifest_and_keeps_its_files(old_gpt):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install 'trtformer[tensorrt-rtx]')")
    from trtformer.engines import build_engine

    before = read_manifest(old_gpt)
    result = build_engine(old_gpt, flavor="tensorrt-rtx", compute_capability=["8.6"])
    after = read_manifest(old_gpt)
    assert after.read_schema == 2 and after.files == before.files and after.graph() == before.graph()
    assert list(after.engines) == [result.name] and after.engines[result.name].graph == "model"
    Artifact.load(old_gpt)  # every listed file still matches


def test_cli_info_reads_an_old_artifact(old_txl, capsys):
    from trtformer.cli import main

    assert main(["info", str(old_txl)]) == 0
    out = capsys.readouterr().out
    assert "schema 1" in out and "mems.0" in out and "(state)" in out


# --- an artifact of several graphs ----------------------------------------------------------------------------

VOCAB, WIDTH = 11, 4


def _graphs(tmp: Path, rng) -> dict[str, np.ndarray]:
    """Two ONNX graphs that chain as an encoder-decoder does: the encoder embeds the source; each decoder step
    embeds its tokens, adds the mean of the encoder states and appends to a cache it carries as state."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = {"enc": rng.standard_normal((VOCAB, WIDTH)).astype(np.float32), "dec": rng.standard_normal((VOCAB, WIDTH)).astype(np.float32)}
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    encoder = helper.make_graph(
        [helper.make_node("Gather", ["enc", "input_ids"], ["encoder_hidden_states"])], "encoder",
        [helper.make_tensor_value_info("input_ids", i64, ["batch", "src"])],
        [helper.make_tensor_value_info("encoder_hidden_states", f32, ["batch", "src", WIDTH])],
        [numpy_helper.from_array(w["enc"], "enc")])  # fmt: skip
    decoder = helper.make_graph(
        [helper.make_node("Gather", ["dec", "decoder_input_ids"], ["emb"]),
         helper.make_node("ReduceMean", ["encoder_hidden_states", "axes"], ["ctx"], keepdims=1),
         helper.make_node("Add", ["emb", "ctx"], ["logits"]),
         helper.make_node("Concat", ["past.0", "logits"], ["present.0"], axis=1)], "decoder",
        [helper.make_tensor_value_info("decoder_input_ids", i64, ["batch", "tgt"]),
         helper.make_tensor_value_info("encoder_hidden_states", f32, ["batch", "src", WIDTH]),
         helper.make_tensor_value_info("past.0", f32, ["batch", "past", WIDTH])],
        [helper.make_tensor_value_info("logits", f32, ["batch", "tgt", WIDTH]),
         helper.make_tensor_value_info("present.0", f32, ["batch", "past + tgt", WIDTH])],
        [numpy_helper.from_array(w["dec"], "dec"), numpy_helper.from_array(np.array([1], np.int64), "axes")])  # fmt: skip
    for name, graph in (("encoder.onnx", encoder), ("decoder.onnx", decoder)):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 10
        onnx.save(model, tmp / name)
    return w


def _manifest(tmp: Path) -> dict:
    from trtformer.artifact import file_entries

    ids = {"name": "input_ids", "dtype": "int64", "shape": ["batch", "src"], "value_range": [0, VOCAB - 1], "role": "ids"}
    states = {"name": "encoder_hidden_states", "dtype": "float32", "shape": ["batch", "src", WIDTH]}
    dims = {"batch": {"min": 1, "max": None, "opt": 1}, "src": {"min": 1, "max": 64, "opt": 8}}
    return {
        "schema_version": 2, "family": "toy", "config": {}, "form": "portable", "precision": "fp32", "opset": 18,
        "graphs": {
            "encoder": {"inputs": [ids], "outputs": [states], "dims": dims, "padding_side": "right",
                        "models": {"plain": "encoder.onnx"}},
            "decoder": {
                "inputs": [{**ids, "name": "decoder_input_ids", "shape": ["batch", "tgt"]}, {**states, "role": "features"},
                           {"name": "past.0", "dtype": "float32", "shape": ["batch", "past", WIDTH], "role": "state"}],
                "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", "tgt", WIDTH]},
                            {"name": "present.0", "dtype": "float32", "shape": ["batch", "past + tgt", WIDTH]}],
                "state": [{"input": "past.0", "output": "present.0", "axis": 1, "kind": "kv-cache"}],
                "dims": {**dims, "tgt": {"min": 1, "max": 32, "opt": 1}, "past": {"min": 0, "max": 31, "opt": 8}},
                "limits": {"past + tgt": 32}, "models": {"plain": "decoder.onnx"}},
        },
        "links": [{"source_graph": "encoder", "source": "encoder_hidden_states", "target_graph": "decoder",
                   "target": "encoder_hidden_states", "kind": "feed"}],
        "files": {n: e.to_dict() for n, e in file_entries(tmp, ["decoder.onnx", "encoder.onnx"]).items()},
    }  # fmt: skip


@pytest.fixture
def two_graphs(tmp_path) -> tuple[Path, dict]:
    w = _graphs(tmp_path, np.random.default_rng(0))
    (tmp_path / "manifest.json").write_text(json.dumps(_manifest(tmp_path)))
    return tmp_path, w


def test_an_artifact_of_two_chained_graphs_runs_step_by_step(two_graphs):
    path, w = two_graphs
    art = Artifact.load(path)
    assert list(art.manifest.graphs) == ["encoder", "decoder"]
    assert [(k.source_graph, k.target_graph, k.kind) for k in art.manifest.links_into("decoder")] == [("encoder", "decoder", "feed")]
    src = np.array([[1, 2, 3], [4, 5, 6]], np.int64)
    with trtformer.load(art, graph="encoder") as enc, trtformer.load(art, graph="decoder") as dec:
        states = enc.run({"input_ids": src})["encoder_hidden_states"]
        np.testing.assert_array_equal(states, w["enc"][src])
        state, logits = None, []
        for token in ([[7], [8]], [[9], [10]], [[1], [2]]):
            out, state = dec.step({"decoder_input_ids": np.array(token, np.int64), "encoder_hidden_states": states}, state)
            logits.append(out["logits"])
        assert state.sizes["past"] == 3
        want = w["dec"][np.array([[7, 9, 1], [8, 10, 2]])] + w["enc"][src].mean(1, keepdims=True)
        np.testing.assert_allclose(np.concatenate(logits, 1), want, rtol=1e-6)
        np.testing.assert_allclose(dec.state_to_numpy(state)["past.0"], want, rtol=1e-6)
        with pytest.raises(InputError, match="another artifact or graph"):
            enc_like = dec.new_state(2)
            enc_like.origin = ("encoder", "x")
            dec.step({"decoder_input_ids": np.array([[1], [2]], np.int64), "encoder_hidden_states": states}, enc_like)


def test_a_several_graph_artifact_asks_which_graph(two_graphs):
    path, _ = two_graphs
    with pytest.raises(ArtifactError, match="has the graphs encoder, decoder; name one"):
        trtformer.load(path)
    with pytest.raises(ArtifactError, match="no graph 'middle'"):
        trtformer.load(path, graph="middle")


def test_a_link_must_join_tensors_of_one_dtype(two_graphs):
    path, _ = two_graphs
    m = json.loads((path / "manifest.json").read_text())
    m["links"][0]["source"] = "encoder_hidden_states"
    m["graphs"]["decoder"]["inputs"][1]["dtype"] = "float16"
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="joins float32 rank 3 to float16 rank 3"):
        Artifact.load(path)


# --- lifetimes ------------------------------------------------------------------------------------------------


def test_sessions_close_explicitly(gpt2_artifact):
    feeds = {"input_ids": np.array([[1, 2]]), "attention_mask": np.ones((1, 2), np.int64)}
    for backend in ("ort-cpu", "torch"):
        with trtformer.load(gpt2_artifact, backend=backend) as session:
            out, state = session.step(feeds)
        assert session.closed
        session.close()  # idempotent
        with pytest.raises(BackendError, match="closed"):
            session.step(feeds, state)


def test_a_state_from_another_artifact_is_refused(gpt2_artifact, openai_gpt_artifact):
    feeds = {"input_ids": np.array([[1, 2]]), "attention_mask": np.ones((1, 2), np.int64)}
    with trtformer.load(gpt2_artifact) as a, trtformer.load(openai_gpt_artifact) as b:
        _, state = a.step(feeds)
        assert set(state.values) == set(b.state_pairs)  # same names and shapes: only the origin tells them apart
        with pytest.raises(InputError, match="another artifact or graph"):
            b.step({"input_ids": np.array([[3]]), "attention_mask": np.ones((1, 3), np.int64)}, state)
        with pytest.raises(InputError, match="must be a State"):
            a.step(feeds, state={"past.0.key": 1})


def test_unknown_backend_options_are_named(gpt2_artifact):
    with pytest.raises(BackendError, match="takes no option engine"):
        trtformer.load(gpt2_artifact, backend="ort-cpu", engine="x")
    with pytest.raises(BackendError, match="ONNX Runtime backends cannot run this bfloat16"):
        from trtformer.runtime.backends.ort import OrtBackend

        m = read_manifest(gpt2_artifact).to_dict()
        m["graphs"]["model"]["outputs"][0]["dtype"] = "bfloat16"
        from trtformer.artifact import Manifest

        OrtBackend(Artifact(gpt2_artifact, Manifest.from_dict(m)))
