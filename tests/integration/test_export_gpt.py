"""Export of GPT-1 and GPT-2: the artifact, the graph, and ONNX Runtime against transformers and the reference."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import transformers as T
from support import manifest

import trtformer
from trtformer.artifact import Artifact
from trtformer.errors import ArtifactError, ExportError
from trtformer.families import load_model
from trtformer.parity import check_parity


def test_manifest_describes_io_state_and_files(gpt2_artifact):
    m = manifest(gpt2_artifact)
    g = m["graphs"]["model"]
    assert m["schema_version"] == 2 and list(m["graphs"]) == ["model"]
    assert m["family"] == "gpt" and m["form"] == "portable" and m["precision"] == "fp32"
    ins = {t["name"]: t for t in g["inputs"]}
    assert ins["input_ids"]["shape"] == ["batch", "seq"]
    assert ins["attention_mask"]["shape"] == ["batch", "past + seq"]
    assert ins["past.1.value"]["shape"] == ["batch", 4, "past", 16]
    assert [ins[n]["role"] for n in ("input_ids", "attention_mask", "past.0.key")] == ["ids", "padding-mask", "state"]
    outs = {t["name"]: t for t in g["outputs"]}
    assert outs["present.0.key"]["shape"] == ["batch", 4, "past + seq", 16]
    assert outs["logits"]["dtype"] == "float32"
    assert {(s["input"], s["output"]) for s in g["state"]} == {(f"past.{i}.{p}", f"present.{i}.{p}") for i in range(2) for p in ("key", "value")}
    assert set(m["files"]) >= {"model.onnx", "reference.safetensors", "tokenizer/tokenizer.json"}
    assert g["limits"] == {"past + seq": 64} and g["models"] == {"plain": "model.onnx"}
    assert {"torch", "onnx", "trtformer"} <= set(m["versions"])


def test_graph_is_valid_onnx_with_symbolic_dims(gpt2_artifact):
    model = onnx.load(gpt2_artifact / "model.onnx")
    onnx.checker.check_model(model)
    assert model.ir_version == 10
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
    assert dims["attention_mask"] == ["batch", "past + seq"]
    assert dims["past.0.key"] == ["batch", 4, "past", 16]


@pytest.mark.parametrize(
    ("hf_cls", "checkpoint", "artifact"),
    [("GPT2LMHeadModel", "hf_gpt2_dir", "gpt2_artifact"), ("OpenAIGPTLMHeadModel", "hf_openai_gpt_dir", "openai_gpt_artifact")],
)
def test_onnxruntime_matches_transformers(request, hf_cls, checkpoint, artifact):
    hf = getattr(T, hf_cls).from_pretrained(request.getfixturevalue(checkpoint)).eval()
    session = trtformer.load(request.getfixturevalue(artifact))
    ids = np.random.default_rng(0).integers(0, 300, (3, 13))
    out, _ = session.step({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    with torch.no_grad():
        want = hf(torch.from_numpy(ids)).logits.numpy()
    assert np.abs(out["logits"] - want).max() <= 1e-4


@pytest.mark.parametrize("fixture", ["gpt2_artifact", "openai_gpt_artifact", "gpt2_fp16_artifact"])
def test_parity_report_passes(request, fixture):
    path = request.getfixturevalue(fixture)
    report = check_parity(path, backend="ort-cpu", decode_steps=16)
    assert report.passed, report.table()
    cases = {c.case for c in report.comparisons}
    assert "decode 16 steps" in cases and "forward b4 s33 padded" in cases
    assert manifest(path)["precision"] in report.to_dict()["precision"]
    assert (path / "parity.json").is_file()


def test_fp16_keeps_layernorm_softmax_and_logits_in_fp32(gpt2_fp16_artifact):
    model = onnx.shape_inference.infer_shapes(onnx.load(gpt2_fp16_artifact / "model.onnx"))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    F32, F16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert norms and softmaxes
    assert all(types[n.input[0]] == F32 for n in norms + softmaxes)
    assert types["logits"] == F32 and types["past.0.key"] == F16
    matmul_weights = {i.name for i in model.graph.initializer if i.data_type == F16}
    assert matmul_weights, "fp16 export has no fp16 weights"


def test_artifact_size_is_dominated_by_weights(gpt2_artifact):
    """The graph carries the weights once; the reference copy is the only duplicate."""
    m = manifest(gpt2_artifact)
    n_params = sum(v.numel() for v in load_model(m["source"]).model.state_dict().values())
    assert m["files"]["model.onnx"]["bytes"] < 4 * n_params * 1.3


def test_past_of_zero_and_single_token_steps(gpt2_artifact):
    session = trtformer.load(gpt2_artifact)
    state = session.new_state(batch=1)
    assert state.sizes == {"batch": 1, "past": 0}
    out, state = session.step({"input_ids": np.array([[5]]), "attention_mask": np.ones((1, 1), np.int64)}, state)
    assert out["logits"].shape == (1, 1, 300) and state.sizes["past"] == 1


def test_plugin_form_is_refused_for_a_family_without_fused_ops(tmp_path):
    with pytest.raises(ExportError, match="no plugin form"):
        trtformer.export("tiny-gpt2", tmp_path / "x", form="plugin")
    assert not (tmp_path / "x").exists()


def test_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    from trtformer.exporter import export as export_module

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "save_reference", broken)
    with pytest.raises(ExportError, match="disk full"):
        trtformer.export("tiny-gpt2", tmp_path / "art")
    assert list(tmp_path.iterdir()) == []


def test_existing_artifact_is_not_overwritten_by_default(tmp_path, gpt2_artifact):
    with pytest.raises(ArtifactError, match="already exists"):
        trtformer.export("tiny-gpt2", gpt2_artifact)
    Artifact.load(gpt2_artifact)  # still intact


def test_optimized_graph_fuses_layernorms_and_keeps_parity(tmp_path):
    art = trtformer.export("tiny-gpt2", tmp_path / "opt", optimize=True)
    g = manifest(art)["graphs"]["model"]
    assert g["models"] == {"plain": "model.onnx", "optimized": "model.opt.onnx"}
    assert g["fusions"].get("SkipLayerNormalization", 0) >= 3
    ops = {n.op_type for n in onnx.load(art / "model.opt.onnx").graph.node}
    assert "SkipLayerNormalization" in ops and "BiasGelu" not in ops
    report = check_parity(art, backend="ort-cpu")
    assert report.passed, report.table()
