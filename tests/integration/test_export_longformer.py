"""Longformer export in both forms: one artifact runs in ONNX Runtime at any length with any global mask and
matches the torch reference and transformers; the portable graph has standard ops only and stays linear in memory;
the plugin graph has one node per layer, with a function per attribute set; encode, the CLI and TensorRT-RTX."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import transformers as T
from support import manifest

import trtformer
from trtformer.cli import main
from trtformer.errors import InputError
from trtformer.families import PRESETS
from trtformer.parity import check_parity
from trtformer.runtime.encode import encode, global_mask_rows

PRESET = "tiny-longformer"  # windows 8 and 16; the second layer dilates heads 2 and 3 by 2 and 4
FORMS = ("portable", "plugin")
OP_TYPES = ["SlidingWindowAttention_w8_d1", "SlidingWindowAttention_w16_d1_1_2_4"]
# Small transformers checkpoints: windows 4 and 8 (transformers needs one to divide the other), 510 positions;
# the bare model keeps transformers' two token types (a token_type_ids input), the heads have one as longformer-base.
HF_SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                max_position_embeddings=512, attention_window=[4, 8], initializer_range=0.2)  # fmt: skip
PAD, SEP = 1, 2


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """form -> the tiny-longformer artifact, exported once per module."""
    cache: dict[str, Path] = {}

    def get(form: str) -> Path:
        if form not in cache:
            cache[form] = trtformer.export(PRESET, tmp_path_factory.mktemp("longformer") / form, form=form)
        return cache[form]

    return get


@pytest.fixture(scope="module")
def sessions(art):
    """form -> (ort-cpu session, torch reference session)."""
    cache: dict[str, tuple] = {}

    def get(form: str):
        if form not in cache:
            cache[form] = trtformer.load(art(form)), trtformer.load(art(form), backend="torch")
        return cache[form]

    return get


@pytest.fixture(scope="module")
def hf_art(tmp_path_factory):
    """(architecture, form) -> (transformers model, artifact exported from its checkpoint)."""
    cache: dict[tuple, tuple] = {}

    def get(arch: str, form: str):
        if (arch, form) not in cache:
            torch.manual_seed(0)
            cfg = T.LongformerConfig(**HF_SMALL, num_labels=2 if "Question" in arch else 3, type_vocab_size=2 if arch == "Model" else 1)
            hf = getattr(T, "Longformer" + arch)(cfg).eval()
            src = tmp_path_factory.mktemp(arch)
            hf.save_pretrained(src)
            cache[(arch, form)] = hf, trtformer.export(src, tmp_path_factory.mktemp("art") / form, form=form)
        return cache[(arch, form)]

    return get


def batch(seq: int, globals_at, seed: int = 0, vocab: int = 512) -> dict[str, np.ndarray]:
    """Three rows: the first full, the second without its last third, the third only half real (right padding)."""
    rng = np.random.default_rng(seed + seq)
    ids = rng.integers(3, vocab, (3, seq))
    mask = np.ones_like(ids)
    mask[1, seq - seq // 3 :] = 0
    mask[2, (seq + 1) // 2 :] = 0
    glob = np.zeros_like(ids)
    for row, col in globals_at:
        glob[row, col] = 1
    return {"input_ids": np.where(mask == 1, ids, PAD), "attention_mask": mask, "global_attention_mask": glob}


def global_masks(seq: int) -> dict[str, list[tuple[int, int]]]:
    """Several global masks for a [3, seq] batch: none, the first token, elsewhere (padding included), many."""
    return {
        "none": [],
        "first": [(0, 0), (1, 0), (2, 0)],
        "elsewhere": [(0, seq - 1), (1, seq // 2), (2, 0), (2, seq // 4), (2, seq - 1)],  # (2, seq - 1) is padding
        "many": [(r, c) for r in range(3) for c in range(0, seq, max(1, seq // 20))],
    }


def max_error(got: dict, want: dict, mask: np.ndarray) -> float:
    """Largest difference over every output, at real tokens for per-token outputs."""
    worst = 0.0
    for name, value in got.items():
        keep = mask.astype(bool) if value.shape[:2] == mask.shape else np.ones(value.shape[:1], bool)
        worst = max(worst, float(np.abs(value[keep] - want[name][keep]).max()))
    return worst


# ---------------------------------------------------------------------------------------------- manifest and graphs


@pytest.mark.parametrize("form", FORMS)
def test_manifest_names_inputs_outputs_and_limits(art, form):
    top = manifest(art(form))
    m = top["graphs"]["model"]
    assert top["family"] == "longformer" and top["form"] == form and m["padding_side"] == "right"
    assert [(t["name"], t["dtype"], t["shape"], t["value_range"], t["role"]) for t in m["inputs"]] == [
        ("input_ids", "int64", ["batch", "seq"], [0, 511], "ids"),
        ("attention_mask", "int64", ["batch", "seq"], [0, 1], "padding-mask"),
        ("global_attention_mask", "int64", ["batch", "seq"], [0, 1], "global-mask"),
    ]  # type_vocab_size 1: no token_type_ids, as RoBERTa
    assert [(t["name"], t["dtype"], t["shape"]) for t in m["outputs"]] == [("logits", "float32", ["batch", "seq", 512])]
    assert m["limits"] == {"seq": 4096} and m["dims"]["seq"]["max"] == 4096  # 4098 positions less RoBERTa's offset
    assert m["state"] == []
    graph = onnx.load(art(form) / "model.onnx")
    onnx.checker.check_model(graph, full_check=True)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.graph.input}
    assert dims == {"input_ids": ["batch", "seq"], "attention_mask": ["batch", "seq"], "global_attention_mask": ["batch", "seq"]}


def test_portable_form_has_only_standard_ops(art):
    graph = onnx.load(art("portable") / "model.onnx")
    assert {n.domain for n in graph.graph.node} <= {"", "ai.onnx"} and not graph.functions
    assert {o.domain for o in graph.opset_import} <= {"", "ai.onnx"}
    assert manifest(art("portable"))["plugins"] == []


def test_plugin_form_has_one_node_per_layer_and_a_function_per_attribute_set(art):
    graph = onnx.load(art("plugin") / "model.onnx")
    nodes = [n for n in graph.graph.node if n.domain == "trtformer"]
    assert [n.op_type for n in nodes] == OP_TYPES
    for node, (window, dilations) in zip(nodes, [(8, [1, 1, 1, 1]), (16, [1, 1, 2, 4])], strict=True):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs == {"window": window, "dilations": dilations, "scale": 0.25, "plugin_namespace": b"trtformer",
                         "plugin_version": b"1", "plugin_name": b"SlidingWindowAttention"}  # fmt: skip
        assert len(node.input) == 8 and len(node.output) == 1
    # TensorRT plugins take no BOOL: the masks reach each node through a Cast to INT32, and the bodies take INT32.
    made_by = {o: n for n in graph.graph.node for o in n.output}
    typed = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(graph).graph.value_info}
    for node in nodes:
        casts = [made_by[name] for name in node.input[6:]]
        assert [(c.op_type, c.attribute[0].i) for c in casts] == [("Cast", onnx.TensorProto.INT32)] * 2
        assert [typed[name] for name in node.input] == [onnx.TensorProto.FLOAT] * 6 + [onnx.TensorProto.INT32] * 2
    functions = {f.name: f for f in graph.functions if f.domain == "trtformer"}
    assert sorted(functions) == sorted(OP_TYPES)
    for fn in functions.values():
        assert list(fn.input)[:3] == ["q", "k", "v"] and list(fn.output) == ["output"]
        assert {n.domain for n in fn.node} <= {"", "ai.onnx"} and "TopK" in {n.op_type for n in fn.node}
        assert list(fn.attribute) == ["window", "dilations", "scale", "plugin_namespace", "plugin_version", "plugin_name"]
    [record] = manifest(art("plugin"))["plugins"]
    assert record == {"op": "trtformer::sliding_window_attention", "domain": "trtformer", "name": "SlidingWindowAttention",
                      "plugin_namespace": "trtformer", "plugin_version": "1", "nodes": 2, "op_types": [
                          {"op_type": OP_TYPES[0], "nodes": 1, "attributes": {"window": 8, "dilations": [1, 1, 1, 1], "scale": 0.25}},
                          {"op_type": OP_TYPES[1], "nodes": 1, "attributes": {"window": 16, "dilations": [1, 1, 2, 4], "scale": 0.25}}]}  # fmt: skip


def test_each_layer_runs_its_own_body(art, tmp_path):
    """The check has teeth: pointing layer 1 at layer 0's body (what inlining by name would do with one shared name)
    changes the output, so ONNX Runtime matching the reference means each layer ran its own window and dilations."""
    graph = onnx.load(art("plugin") / "model.onnx")
    next(n for n in graph.graph.node if n.op_type == OP_TYPES[1]).op_type = OP_TYPES[0]
    onnx.save(graph, tmp_path / "swapped.onnx")
    import onnxruntime as ort

    feeds = batch(200, global_masks(200)["first"])
    ort_cpu, ref = trtformer.load(art("plugin")), trtformer.load(art("plugin"), backend="torch")
    right, want = ort_cpu.run(feeds), ref.run(feeds)
    [wrong] = ort.InferenceSession(str(tmp_path / "swapped.onnx"), providers=["CPUExecutionProvider"]).run(["logits"], feeds)
    assert max_error(right, want, feeds["attention_mask"]) < 1e-4
    assert max_error({"logits": wrong}, want, feeds["attention_mask"]) > 1e-3  # parity errors are ~3e-7


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("seq", [5, 33, 64, 1000, pytest.param(4096, marks=pytest.mark.slow)])  # 4096: ~9 s
def test_onnx_runtime_matches_the_reference_at_any_length_and_global_mask(sessions, form, seq):
    """Traced at batch 2, seq 3: every length here is new to the graph; 4096 is the position table's limit."""
    ort_cpu, ref = sessions(form)
    for name, globals_at in global_masks(seq).items():
        feeds = batch(seq, globals_at)
        err = max_error(ort_cpu.run(feeds), ref.run(feeds), feeds["attention_mask"])
        assert err < 1e-4, (name, err)


@pytest.mark.parametrize("form", FORMS)
def test_parity_report_covers_global_tokens_and_long_sequences(art, form):
    report = check_parity(art(form), write=False)
    assert report.passed, report.table()
    cases = {c.case for c in report.comparisons}
    assert {"forward b3 s257 padded", "forward b3 s1000 padded"} <= cases


@pytest.mark.parametrize(("arch", "form"), [("Model", "portable"), ("ForQuestionAnswering", "plugin")])
def test_onnx_runtime_matches_transformers(hf_art, arch, form):
    hf, path = hf_art(arch, form)
    session = trtformer.load(path)
    for seq in (13, 40, 200):
        for globals_at in global_masks(seq).values():
            feeds = batch(seq, globals_at, vocab=99)
            if "token_type_ids" in session.inputs:  # the second half is segment 1
                feeds["token_type_ids"] = np.broadcast_to(np.arange(seq) >= seq // 2, (3, seq)).astype(np.int64)
            with torch.no_grad():
                want = hf(**{k: torch.from_numpy(v) for k, v in feeds.items()})
            got = session.run(feeds)
            assert set(got) == ({"last_hidden_state", "pooler_output"} if arch == "Model" else set(got) & set(want))
            assert max_error(got, {k: want[k].numpy() for k in got}, feeds["attention_mask"]) < 1e-4, (seq, globals_at)


# ---------------------------------------------------------------------------------------------- memory


def largest_values(path: Path, feeds: dict[str, np.ndarray], tmp_path: Path) -> list[tuple[int, list[int]]]:
    """(elements, shape) of every node output ONNX Runtime produced, from its profiler."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "profile")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    out = []
    for e in events:
        for value in e.get("args", {}).get("output_type_shape", []):
            for shape in value.values():
                out.append((int(np.prod(shape)), shape))
    assert out, "the profiler recorded no node outputs"
    return out


@pytest.mark.parametrize("form", FORMS)
def test_memory_is_linear_in_the_sequence(art, form, tmp_path):
    """No value has two axes of the sequence's length, and the largest value doubles when the sequence does."""
    path = art(form) / "model.onnx"
    sizes = {}
    for seq in (997, 1994):  # lengths no other size coincides with
        feeds = batch(seq, global_masks(seq)["many"])
        values = largest_values(path, feeds, tmp_path)
        square = [shape for _, shape in values if sum(d == seq for d in shape) >= 2]
        assert not square, f"values with two axes of length {seq}: {square[:3]}"
        sizes[seq] = max(n for n, _ in values)
    assert sizes[1994] <= 2.2 * sizes[997], sizes


# ---------------------------------------------------------------------------------------------- encode and CLI


def test_encode_fills_the_global_mask(hf_art, art):
    _, qa = hf_art("ForQuestionAnswering", "plugin")
    session = trtformer.load(qa)
    rows = [[5, 6, SEP, SEP, 7, 8, 9, SEP], [10, SEP, SEP, 11, SEP], [12, 13, 14, SEP, SEP, 15, 16, 17, 18, SEP]]
    default = encode(session, rows, batch_size=2)
    question = [[int(i < row.index(SEP)) for i in range(len(row))] for row in rows]  # transformers' QA default
    explicit = encode(session, rows, global_attention_mask=question)  # one batch, padded further than default's
    np.testing.assert_allclose(default["start_logits"], explicit["start_logits"], atol=1e-5)
    positions = global_mask_rows(rows, [0, 3])
    chosen = encode(session, rows, global_attention_mask=positions)
    for i, row in enumerate(rows):  # each row alone, as the model sees it
        alone = session.run({"input_ids": np.array([row]), "attention_mask": np.ones((1, len(row)), np.int64),
                             "global_attention_mask": np.array([positions[i]])})  # fmt: skip
        np.testing.assert_allclose(chosen["start_logits"][i, : len(row)], alone["start_logits"][0], atol=1e-5)
    assert not np.allclose(chosen["start_logits"], default["start_logits"])
    with pytest.raises(InputError, match="position 6 is outside sequence 1 \\(5 tokens\\)"):
        global_mask_rows(rows, [6])
    with pytest.raises(InputError, match="global_attention_mask must match input_ids row for row; row 1"):
        encode(session, rows, global_attention_mask=[[0] * 8, [0]])
    none = encode(trtformer.load(art("portable")), [[5, 6, 7]])  # masked-lm: no global tokens by default
    assert none["logits"].shape == (1, 3, 512)


def test_cli_encode_with_global_tokens(art, tmp_path, capsys):
    path = art("plugin")
    (tmp_path / "ids.txt").write_text("5 6 7 8 9 10\n11 12 13\n")
    session = trtformer.load(path)
    rows = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    assert main(["encode", str(path), "--input-ids", str(tmp_path / "ids.txt"), "--global-tokens", "0,2", "--out", str(tmp_path / "a")]) == 0
    want = encode(session, rows, global_attention_mask=global_mask_rows(rows, [0, 2]))["logits"]
    np.testing.assert_allclose(np.load(tmp_path / "a" / "logits.npy"), want, atol=1e-6)
    (tmp_path / "glob.json").write_text("[[5], []]")
    assert main(["encode", str(path), "--input-ids", str(tmp_path / "ids.txt"), "--global-tokens", str(tmp_path / "glob.json"), "--out", str(tmp_path / "b")]) == 0
    want = encode(session, rows, global_attention_mask=global_mask_rows(rows, [[5], []]))["logits"]
    np.testing.assert_allclose(np.load(tmp_path / "b" / "logits.npy"), want, atol=1e-6)
    capsys.readouterr()
    assert main(["encode", str(path), "--input-ids", str(tmp_path / "ids.txt"), "--global-tokens", "4"]) == 2
    assert "position 4 is outside sequence 1 (3 tokens)" in capsys.readouterr().err
    assert main(["info", str(path)]) == 0
    assert "trtformer::SlidingWindowAttention x2" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- TensorRT-RTX


@pytest.mark.parametrize("form", FORMS)
def test_tensorrt_rtx_builds_both_forms_up_to_4096_tokens(art, tmp_path, form):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install 'trtformer[tensorrt-rtx]')")
    from trtformer.engines import build_engine

    copy = Path(shutil.copytree(art(form), tmp_path / form))
    result = build_engine(copy, flavor="tensorrt-rtx", compute_capability=["8.6"])
    profile = result.record.profiles[0]
    assert profile["dims"]["seq"]["max"] == 4096 == PRESETS[PRESET][1].max_position_embeddings - 2
    assert profile["inputs"]["global_attention_mask"]["max"] == [16, 4096]
    assert result.path.is_file() and result.record.onnx_sha256 == manifest(copy)["files"]["model.onnx"]["sha256"]


def test_tensorrt_rtx_inlines_each_layers_body_and_reads_g_from_the_data(art):
    """TensorRT-RTX names inlined layers after the function's nodes: each op type brings its own body (the dilated
    one is larger). g, the TopK's k, is a data-dependent shape tensor, which the builder accepts (above); running it
    needs an RTX GPU, where TensorRT caps k at 3840 global tokens per row."""
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install 'trtformer[tensorrt-rtx]')")
    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(art("plugin") / "model.onnx"))
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    per_body = {t: sum(layer.name.startswith(t + "/") for layer in layers) for t in OP_TYPES}
    assert 0 < per_body[OP_TYPES[0]] < per_body[OP_TYPES[1]], per_body
    topk = [layer for layer in layers if layer.type == trt.LayerType.TOPK]
    assert [layer.name.split("/")[0] for layer in topk] == OP_TYPES
    for layer in topk:
        layer.__class__ = trt.ITopKLayer  # the parser hands out ILayer
        assert layer.get_input(1) is not None and layer.get_input(1).is_shape_tensor  # k from the mask, not a constant
