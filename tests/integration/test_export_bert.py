"""BERT family export: every variant and head through ONNX Runtime, the fusions, int8, fp16, encode, CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from bert_checkpoints import counting_batch, hf_model, train_bert_pretraining
from support import manifest

import trtformer
from trtformer.cli import main
from trtformer.errors import ExportError, InputError
from trtformer.parity import check_parity
from trtformer.runtime.encode import encode

# Every head of BERT; two per other variant (ALBERT's sentence order and ELECTRA's discriminator included).
CASES = [("bert", h) for h in ["Model", "ForMaskedLM", "ForNextSentencePrediction", "ForPreTraining",
                               "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering"]]
CASES += [("roberta", "ForSequenceClassification"), ("roberta", "ForQuestionAnswering"), ("albert", "ForPreTraining"),
          ("albert", "ForTokenClassification"), ("electra", "ForPreTraining"), ("electra", "ForMaskedLM")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(variant, head) -> (transformers model, artifact), exported on first use."""
    cache = {}

    def get(variant, head, **export_kw):
        key = (variant, head, tuple(sorted(export_kw.items())))
        if key not in cache:
            hf = hf_model(variant, head)
            src = tmp_path_factory.mktemp(f"{variant}-{head}")
            hf.save_pretrained(src)
            cache[key] = hf, trtformer.export(src, tmp_path_factory.mktemp("art") / "a", **export_kw)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def trained_int8(tmp_path_factory):
    src = train_bert_pretraining(tmp_path_factory.mktemp("trained-bert"))
    return src, trtformer.export(src, tmp_path_factory.mktemp("art") / "int8", optimize=True, quantize="int8-dynamic")


def feeds_for(session, ids, mask):
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in session.inputs:
        feeds["token_type_ids"] = (np.arange(ids.shape[1]) >= ids.shape[1] // 2).astype(np.int64)[None].repeat(len(ids), 0)
    return feeds


@pytest.mark.parametrize(("variant", "head"), CASES)
def test_onnxruntime_matches_transformers_and_parity_passes(exported, variant, head):
    hf, art = exported(variant, head)
    session = trtformer.load(art)
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 99, (2, 13))
    mask = np.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    feeds = feeds_for(session, ids, mask)
    got = session.run(feeds)
    with torch.no_grad():
        want = hf(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    for name, value in got.items():
        ref = want[name].numpy()
        keep = mask.astype(bool) if value.shape[:2] == ids.shape else np.ones(value.shape[:1], bool)
        assert np.abs(value[keep] - ref[keep]).max() <= 1e-4, name
    report = check_parity(art)
    assert report.passed, report.table()


def test_manifest_uses_transformers_names(exported):
    _, art = exported("bert", "ForQuestionAnswering")
    m = manifest(art)["graphs"]["model"]
    assert [t["name"] for t in m["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [t["role"] for t in m["inputs"]] == ["ids", "padding-mask", "token-types"]
    assert [t["name"] for t in m["outputs"]] == ["start_logits", "end_logits"]
    assert m["padding_side"] == "right" and m["state"] == [] and m["limits"] == {"seq": 64}
    _, roberta = exported("roberta", "ForSequenceClassification")
    assert "token_type_ids" not in [t["name"] for t in manifest(roberta)["graphs"]["model"]["inputs"]]  # one segment type
    assert manifest(roberta)["graphs"]["model"]["limits"] == {"seq": 62}  # positions start after the padding index


def test_runs_at_lengths_and_batches_it_was_not_traced_at(exported):
    _, art = exported("bert", "Model")
    session = trtformer.load(art)
    for batch, seq in [(1, 1), (5, 64), (7, 31)]:
        ids = np.random.default_rng(seq).integers(0, 99, (batch, seq))
        out = session.run(feeds_for(session, ids, np.ones_like(ids)))
        assert out["last_hidden_state"].shape == (batch, seq, 32) and out["pooler_output"].shape == (batch, 32)


def test_optimize_fuses_attention_layernorm_gelu_and_keeps_parity(exported):
    _, art = exported("bert", "ForSequenceClassification", optimize=True)
    fusions = manifest(art)["graphs"]["model"]["fusions"]
    assert fusions["Attention"] == 2 and fusions["EmbedLayerNormalization"] == 1
    assert fusions["SkipLayerNormalization"] >= 3 and fusions["BiasGelu"] == 2
    ops = {n.op_type for n in onnx.load(art / "model.opt.onnx").graph.node}
    assert {"Attention", "EmbedLayerNormalization", "SkipLayerNormalization", "BiasGelu"} <= ops
    assert "Softmax" not in ops  # every attention went into the fused op
    for graph in ("optimized", "plain"):
        report = check_parity(art, model=graph)
        assert report.passed and report.graph == graph, report.table()


def test_tanh_gelu_models_keep_their_gelu_unfused(exported):
    _, art = exported("albert", "ForTokenClassification", optimize=True)  # hidden_act gelu_new
    assert "BiasGelu" not in manifest(art)["graphs"]["model"]["fusions"]
    assert check_parity(art).passed


def test_int8_is_judged_by_agreement(trained_int8):
    _, art = trained_int8
    m = manifest(art)["graphs"]["model"]
    assert m["models"]["int8"] == "model.int8.onnx" and m["quantization"]["source"] == "model.opt.onnx"
    assert m["quantization"]["ops"]["MatMulInteger"] > 0 and m["quantization"]["ops"]["QAttention"] == 2
    assert {"mlm.decoder", "nsp"} <= set(m["quantization"]["fp32_heads"])  # logits projections stay fp32
    report = check_parity(art)
    assert report.graph == "int8" and report.criterion == "agreement"
    pooled = {c.output: c for c in report.comparisons if c.case.startswith("all")}
    assert set(pooled) == {"prediction_logits", "seq_relationship_logits"}
    for c in pooled.values():
        assert c.criterion == "argmax" and c.samples > 16 and c.passed == (c.agreement >= 0.99)
    assert pooled["seq_relationship_logits"].passed
    assert pooled["prediction_logits"].agreement >= 0.9
    assert report.passed == all(c.passed for c in pooled.values())


def test_int8_agrees_on_the_task_it_was_trained_for(trained_int8):
    src, art = trained_int8
    import transformers as T

    hf = T.BertForPreTraining.from_pretrained(src).eval()
    ids, types, _, _ = counting_batch(torch.Generator().manual_seed(3), 64)
    session = trtformer.load(art)
    got = session.run({"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy()), "token_type_ids": types.numpy()})
    with torch.no_grad():
        want = hf(input_ids=ids, token_type_ids=types)
    nsp_agree = (got["seq_relationship_logits"].argmax(-1) == want.seq_relationship_logits.argmax(-1).numpy()).mean()
    mlm_agree = (got["prediction_logits"].argmax(-1) == want.prediction_logits.argmax(-1).numpy()).mean()
    assert nsp_agree >= 0.99 and mlm_agree >= 0.97, (nsp_agree, mlm_agree)


def test_fp16_export_keeps_heads_fp32_and_passes_parity(exported):
    _, art = exported("bert", "ForMaskedLM", precision="fp16")
    outs = {t["name"]: t["dtype"] for t in manifest(art)["graphs"]["model"]["outputs"]}
    assert outs == {"logits": "float32"}
    report = check_parity(art)
    assert report.passed, report.table()


def test_quantize_needs_fp32_and_a_known_method():
    with pytest.raises(ExportError, match="fp32"):
        trtformer.export("tiny-bert", "/nonexistent/x", precision="fp16", quantize="int8-dynamic")
    with pytest.raises(ExportError, match="int4"):
        trtformer.export("tiny-bert", "/nonexistent/x", quantize="int4")


def test_encode_batches_ragged_sequences_like_single_runs(exported):
    _, art = exported("bert", "ForTokenClassification")
    session = trtformer.load(art)
    rows = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15]]
    result = encode(session, rows, batch_size=2)
    assert result.outputs["logits"].shape == (3, 7, 3) and result.lengths == [3, 7, 1]
    assert result.attention_mask.tolist()[0] == [1, 1, 1, 0, 0, 0, 0]
    for i, row in enumerate(rows):
        alone = session.run({"input_ids": np.array([row]), "attention_mask": np.ones((1, len(row)), np.int64),
                             "token_type_ids": np.zeros((1, len(row)), np.int64)})["logits"][0]
        np.testing.assert_allclose(result["logits"][i, : len(row)], alone, atol=1e-5)
        assert not result["logits"][i, len(row):].any()  # padding positions are zeroed


@pytest.mark.parametrize(
    ("rows", "types", "match"),
    [([], None, "empty"), ([[1], []], None, r"input_ids\[1\] is empty"), ([[1, 2, 500]], None, "outside"),
     ([list(range(2, 70))], None, "seq = 68"), ([[1, 2]], [[0]], "row 0"), ("text", None, "sequence of integers")],
)
def test_encode_rejects_bad_input(exported, rows, types, match):
    _, art = exported("bert", "ForTokenClassification")
    with pytest.raises(InputError, match=match):
        encode(trtformer.load(art), rows, types)


def test_cli_encode_text_and_ids(trained_int8, tmp_path, capsys):
    _, art = trained_int8
    assert main(["encode", str(art), "--text", "w1 w2 w3", "--text-pair", "w4 w5", "--out", str(tmp_path / "o")]) == 0
    logits = np.load(tmp_path / "o" / "prediction_logits.npy")
    mask = np.load(tmp_path / "o" / "attention_mask.npy")
    assert logits.shape[:2] == mask.shape == (1, 8)  # [CLS] 3 [SEP] 2 [SEP]
    assert "seq_relationship_logits" in capsys.readouterr().out
    (tmp_path / "ids.txt").write_text("1,5,6,2\n1 7 2\n")
    assert main(["encode", str(art), "--input-ids", str(tmp_path / "ids.txt")]) == 0
    assert main(["encode", str(art), "--input-ids", str(tmp_path / "missing.txt")]) == 2
    assert main(["encode", str(art)]) == 2


def test_cli_parity_names_graph_and_criterion(trained_int8, tmp_path):
    _, art = trained_int8
    code = main(["parity", str(art), "--graph", "optimized", "--json", str(tmp_path / "p.json")])
    report = json.loads((tmp_path / "p.json").read_text())
    assert code == 0 and report["graph"] == "optimized" and report["criterion"] == "tolerance"
    assert "ort-cpu:optimized" in json.loads((art / "parity.json").read_text())


def test_artifact_modes_follow_the_umask(exported):
    import os
    import stat

    _, art = exported("bert", "Model")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(art.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((art / "reference.safetensors").stat().st_mode) == 0o666 & ~umask
