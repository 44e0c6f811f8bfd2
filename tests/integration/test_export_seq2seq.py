"""BART and T5 exported as an encoder graph and a decoder-step graph: the manifest's chain, ONNX Runtime parity of both
graphs, generation token for token against transformers' generate (greedy and beam search), sampling, the command
line, fp16 with T5's feed-forward kept fp32, int8 by agreement, ONNX Runtime's BART fusions, and TensorRT-RTX builds
of both graphs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
import transformers as T

import trtformer
from trtformer.artifact import Artifact
from trtformer.cli import main
from trtformer.errors import InputError
from trtformer.parity import check_parity
from trtformer.runtime.seq2seq import Seq2Seq, generate_seq2seq

MAX_NEW = 12


def eos_prone(hf) -> None:
    """Make eos likely enough that rows stop at different steps and generation's eos paths are exercised: BART gets an
    eos bias; T5's eos becomes a token its greedy outputs hold in some rows (its first in row 0)."""
    if isinstance(hf, T.BartForConditionalGeneration):
        with torch.no_grad():
            hf.final_logits_bias[0, hf.config.eos_token_id] += 3.0
        return
    _, ids, mask = sources(hf.config.eos_token_id, hf.config.pad_token_id)
    greedy = hf_tokens(hf, ids, mask)
    hf.config.eos_token_id = hf.generation_config.eos_token_id = greedy[0][4]


@pytest.fixture(scope="module")
def hf_bart(tmp_path_factory):
    torch.manual_seed(0)
    cfg = T.BartConfig(vocab_size=99, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                       decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64, init_std=0.2)  # fmt: skip
    hf = T.BartForConditionalGeneration(cfg).eval()
    eos_prone(hf)
    path = tmp_path_factory.mktemp("hf-bart")
    hf.save_pretrained(path)
    return hf, path


@pytest.fixture(scope="module")
def hf_t5(tmp_path_factory):
    torch.manual_seed(0)
    cfg = T.T5Config(vocab_size=99, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
                     decoder_start_token_id=0, relative_attention_max_distance=16)  # fmt: skip
    hf = T.T5ForConditionalGeneration(cfg).eval()
    eos_prone(hf)
    path = tmp_path_factory.mktemp("hf-t5")
    hf.save_pretrained(path)
    return hf, path


@pytest.fixture(scope="module")
def bart_art(hf_bart, tmp_path_factory):
    return trtformer.export(hf_bart[1], tmp_path_factory.mktemp("art") / "bart", optimize=True)


@pytest.fixture(scope="module")
def t5_art(hf_t5, tmp_path_factory):
    return trtformer.export(hf_t5[1], tmp_path_factory.mktemp("art") / "t5")


def sources(eos: int, pad: int) -> tuple[list[list[int]], torch.Tensor, torch.Tensor]:
    """Three sources of different lengths ending in eos, and their right-padded batch for transformers."""
    rng = np.random.default_rng(0)
    rows = [[int(t) for t in rng.integers(3, 99, n)] + [eos] for n in (7, 3, 12)]
    ids = torch.full((3, 13), pad)
    mask = torch.zeros((3, 13), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return rows, ids, mask


def hf_tokens(hf, ids, mask, **kw) -> list[list[int]]:
    """transformers' new tokens per row (after the decoder start token), cut after the first eos."""
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False, **kw)
    eos = hf.config.eos_token_id
    return [row[: row.index(eos) + 1] if eos in row else row for row in out[:, 1:].tolist()]


# ---------------------------------------------------------------------------------------------- the artifact


def test_the_manifest_chains_an_encoder_and_a_decoder_step(bart_art):
    m = Artifact.load(bart_art).manifest
    assert list(m.graphs) == ["encoder", "decoder"] and "model" not in m.graphs
    enc, dec = m.graphs["encoder"], m.graphs["decoder"]
    assert enc.models == {"plain": "encoder.onnx", "optimized": "encoder.opt.onnx"}
    assert dec.models == {"plain": "decoder.onnx", "optimized": "decoder.opt.onnx"}
    assert enc.input_names == ["input_ids", "attention_mask"] and enc.padding_side == dec.padding_side == "right"
    assert enc.output_names == ["encoder_hidden_states"] + [f"cross.{i}.{p}" for i in range(2) for p in ("key", "value")]
    assert [t.role for t in dec.inputs[:2]] == ["ids", "padding-mask"]
    assert {t.name for t in dec.with_role("state")} == {f"past.{i}.{p}" for i in range(2) for p in ("key", "value")}
    assert {t.name for t in dec.with_role("features")} == {f"cross.{i}.{p}" for i in range(2) for p in ("key", "value")}
    assert dec.output("present.1.value").shape == ("batch", 4, "past + seq", 8) and dec.dims["past"].min == 0
    assert dec.limits == {"past + seq": 64} and enc.limits == {"enc": 64}
    # The cross-attention keys and values: computed by the encoder once, read unchanged by every decoder step.
    assert [(k.source_graph, k.source, k.target_graph, k.target, k.kind) for k in m.links] == [
        ("encoder", n, "decoder", n, "cache") for n in enc.output_names[1:]
    ]
    assert all(k.kind == "kv-cache" for k in dec.state) and len(dec.state) == 4
    assert enc.fusions["SkipLayerNormalization"] == 4 and dec.fusions["SkipLayerNormalization"] == 6  # ORT's `bart`


@pytest.mark.parametrize(("art", "variant"), [("bart_art", "plain"), ("bart_art", "optimized"), ("t5_art", "plain")])
def test_both_graphs_match_the_reference_on_onnx_runtime(art, variant, request):
    path = request.getfixturevalue(art)
    report = check_parity(path, "ort-cpu", model=variant)
    assert report.passed, report.table()
    rows = {(c.case, c.output) for c in report.comparisons}
    assert ("encoder b4 s33 padded", "cross.1.value") in rows and ("decode 16 steps", "present.1.key") in rows
    worst = next(c for c in report.comparisons if c.case.startswith("decode worst step"))
    assert worst.passed
    key = "ort-cpu" if variant == "optimized" or art == "t5_art" else "ort-cpu:plain"
    assert json.loads((path / "parity.json").read_text())[key]["passed"]


# ---------------------------------------------------------------------------------------------- generation

MODES = [
    pytest.param({}, id="greedy"),
    pytest.param({"num_beams": 3, "length_penalty": 1.3}, id="beam3"),
    pytest.param({"num_beams": 2, "length_penalty": 0.7, "early_stopping": True}, id="beam2-early"),
    pytest.param({"num_beams": 4, "length_penalty": 2.0, "early_stopping": "never"}, id="beam4-never"),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("which", ["bart", "t5"])
def test_generation_equals_transformers_token_for_token(which, mode, request):
    hf, _ = request.getfixturevalue(f"hf_{which}")
    rows, ids, mask = sources(hf.config.eos_token_id, hf.config.pad_token_id)
    with Seq2Seq.open(request.getfixturevalue(f"{which}_art"), "ort-cpu") as model:
        got = generate_seq2seq(model, rows, max_new_tokens=MAX_NEW, **mode)
    want = hf_tokens(hf, ids, mask, **mode)
    assert got.tokens == want
    assert got.finished == [t[-1] == hf.config.eos_token_id for t in want]
    if not mode:  # the greedy rows stop at different steps (eos), and one runs to the limit (BART: the forced eos)
        assert len({len(t) for t in got.tokens}) > 1, got.tokens


def test_sampling_is_seeded_and_filtered(bart_art, hf_bart):
    rows, _, _ = sources(2, 1)
    with Seq2Seq.open(bart_art, "ort-cpu") as model:
        draw = lambda **kw: generate_seq2seq(model, rows, max_new_tokens=MAX_NEW, ignore_eos=True, **kw).tokens  # noqa: E731
        first, again, other = draw(temperature=1.5, seed=3), draw(temperature=1.5, seed=3), draw(temperature=1.5, seed=4)
        assert first == again and first != other
        assert draw(temperature=1.0, top_k=1, seed=5) == draw()  # top-1 is greedy
        assert all(len(t) == MAX_NEW for t in first)
        with pytest.raises(InputError, match="sampling takes num_beams=1"):
            draw(temperature=0.5, num_beams=2)
        with pytest.raises(InputError, match="every source needs at least one token"):
            generate_seq2seq(model, [[]])
        with pytest.raises(InputError, match="exceed the decoder's 64 positions"):
            generate_seq2seq(model, rows, max_new_tokens=65)
        with pytest.raises(InputError, match="enc = 70 exceeds"):
            generate_seq2seq(model, [[5] * 70])


def test_cli_generates_from_an_encoder_decoder(bart_art, hf_bart, capsys):
    rows, ids, mask = sources(2, 1)
    source = ",".join(map(str, rows[0]))
    for extra, mode in (([], {}), (["--num-beams", "3", "--length-penalty", "1.3"], {"num_beams": 3, "length_penalty": 1.3})):
        assert main(["generate", str(bart_art), "--prompt-ids", source, "--max-new-tokens", str(MAX_NEW), *extra]) == 0
        out = capsys.readouterr().out
        line = next(ln for ln in out.splitlines() if ln.startswith("new ids"))
        want = hf_tokens(hf_bart[0], ids[:1, : len(rows[0])], mask[:1, : len(rows[0])], **mode)[0]
        assert line.split()[2] == ",".join(map(str, want)) and out.startswith("source ids")
    assert main(["generate", str(bart_art), "--prompt-ids", source, "--num-beams", "2", "--temperature", "0.5"]) == 2


# ---------------------------------------------------------------------------------------------- precision, int8, fusions


def test_fp16_t5_keeps_its_feed_forward_output_fp32(tmp_path):
    art = trtformer.export("tiny-t5-gated", tmp_path / "t5-fp16", precision="fp16")
    m = Artifact.load(art).manifest
    kept = m.extra["fp32_modules"]["OutputProjection"]
    assert kept == [f"encoder.block.{i}.layer.1.DenseReluDense.wo" for i in range(2)] + [
        f"decoder.block.{i}.layer.2.DenseReluDense.wo" for i in range(2)]  # fmt: skip
    assert "wo" in m.extra["fp32_compute"]
    dec = m.graphs["decoder"]
    assert dec.input("past.0.key").dtype == "float16" and dec.output("logits").dtype == "float32"
    # The exporter names transposed weights val_*: tell them by shape. wo is [d_ff, d_model] = [128, 64] transposed.
    matrices = {(tuple(t.dims), t.data_type) for t in onnx.load(art / "decoder.onnx").graph.initializer if len(t.dims) == 2}
    assert ((128, 64), onnx.TensorProto.FLOAT) in matrices and ((128, 64), onnx.TensorProto.FLOAT16) not in matrices
    assert ((64, 128), onnx.TensorProto.FLOAT16) in matrices and ((64, 64), onnx.TensorProto.FLOAT16) in matrices
    report = check_parity(art, "ort-cpu")
    assert report.passed and report.precision == "fp16", report.table()


def test_int8_is_judged_by_agreement_and_keeps_the_lm_head_fp32(tmp_path):
    art = trtformer.export("tiny-bart", tmp_path / "bart-int8", quantize="int8-dynamic")
    m = Artifact.load(art).manifest
    for name in ("encoder", "decoder"):
        q = m.graphs[name].quantization
        assert m.graphs[name].models["int8"] == f"{name}.int8.onnx" and q["ops"]["MatMulInteger"] > 0
    assert m.graphs["decoder"].quantization["fp32_heads"] == ["lm_head"] and m.graphs["decoder"].quantization["fp32_nodes"] > 0
    report = check_parity(art, "ort-cpu")
    assert report.criterion == "agreement" and report.passed, report.table()
    pooled = next(c for c in report.comparisons if c.case.startswith("all ") and c.output == "logits")
    assert pooled.samples == 16 * 16 and pooled.agreement >= 0.99


def test_t5_has_no_onnx_runtime_fusions(tmp_path):
    with pytest.raises(trtformer.errors.ExportError, match="no fusions for the t5 family"):
        trtformer.export("tiny-t5", tmp_path / "t5-opt", optimize=True)


def test_both_graphs_build_with_tensorrt_rtx(bart_art, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install 'trtformer[tensorrt-rtx]'; CI installs it)")
    from trtformer.engines import build_engine

    art = shutil.copytree(bart_art, tmp_path / "bart")
    built = {g: build_engine(art, graph=g, flavor="tensorrt-rtx", compute_capability=["8.6"]) for g in ("encoder", "decoder")}
    engines = Artifact.load(art).manifest.engines
    for graph, result in built.items():
        record = engines[result.name]
        assert record.graph == graph and record.onnx == f"{graph}.onnx" and result.path.is_file()
    dims = built["decoder"].record.profiles[0]["dims"]
    assert (dims["past"]["min"], dims["past"]["max"], dims["seq"]["min"], dims["enc"]["max"]) == (0, 63, 1, 64)
    assert built["encoder"].record.profiles[0]["dims"]["enc"]["min"] == 1
