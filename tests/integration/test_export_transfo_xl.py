"""Transformer-XL end to end: both export forms of both heads, memory as state, ONNX Runtime against the torch
reference over many segments, the stream runtime and `trtformer stream`, and TensorRT-RTX engines."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from support import manifest

import trtformer
from trtformer.cli import main
from trtformer.errors import ExportError, InputError
from trtformer.families import PRESETS, preset
from trtformer.parity import check_parity
from trtformer.runtime.stream import Stream, log_likelihood

ADAPTIVE, SOFTMAX = "tiny-transfo-xl", "tiny-transfo-xl-softmax"  # log_probs, logits
CASES = [(p, f) for p in (ADAPTIVE, SOFTMAX) for f in ("portable", "plugin")]
IDS = [f"{'adaptive' if p == ADAPTIVE else 'softmax'}-{f}" for p, f in CASES]


@pytest.fixture(scope="session")
def txl(tmp_path_factory):
    """(preset, form[, precision]) -> artifact, each exported once per run."""
    cache: dict[tuple, Path] = {}

    def get(name: str, form: str, precision: str = "fp32") -> Path:
        key = (name, form, precision)
        if key not in cache:
            out = tmp_path_factory.mktemp("txl") / f"{name}-{form}-{precision}"
            cache[key] = trtformer.export(name, out, form=form, precision=precision)
        return cache[key]

    return get


def config(name: str):
    return PRESETS[name][1]


# ---------------------------------------------------------------------------------------------- export


@pytest.mark.parametrize(("name", "form"), CASES, ids=IDS)
def test_manifest_pairs_the_memory_and_bounds_it(txl, name, form):
    cfg, top = config(name), manifest(txl(name, form))
    m = top["graphs"]["model"]
    head = "log_probs" if cfg.cutoffs else "logits"
    assert top["family"] == "transfo_xl" and top["form"] == form
    assert m["inputs"][0] == {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seg"], "value_range": [0, 511],
                              "description": "token ids of this segment", "role": "ids"}  # fmt: skip
    assert {t["role"] for t in m["inputs"][1:]} == {"state"}
    assert [t["name"] for t in m["inputs"][1:]] == ["mems.0", "mems.1"]
    assert all(t["shape"] == ["mem", "batch", 64] for t in m["inputs"][1:])
    assert [(t["name"], t["shape"]) for t in m["outputs"]] == [
        (head, ["batch", "seg", 512]),
        *((f"new_mems.{i}", [f"min({cfg.mem_len}, mem + seg)", "batch", 64]) for i in range(2)),
    ]
    assert m["state"] == [{"input": f"mems.{i}", "output": f"new_mems.{i}", "axis": 0, "kind": "memory"} for i in range(2)]
    assert {k: (d["min"], d["max"]) for k, d in m["dims"].items()} == {"batch": (1, None), "seg": (1, None), "mem": (0, cfg.mem_len)}
    graph = onnx.load(txl(name, form) / "model.onnx")
    onnx.checker.check_model(graph, full_check=True)
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.graph.output}
    assert dims["new_mems.1"] == [f"min({cfg.mem_len}, mem + seg)", "batch", 64]


@pytest.mark.parametrize("name", [ADAPTIVE, SOFTMAX])
def test_plugin_form_has_one_node_per_layer_and_the_local_function(txl, name):
    cfg = config(name)
    graph = onnx.load(txl(name, "plugin") / "model.onnx")
    nodes = [n for n in graph.graph.node if n.domain == "trtformer"]
    assert len(nodes) == cfg.n_layer and {n.op_type for n in nodes} == {"RelPositionAttention"}
    own = {"n_head": 4, "d_head": 16, "mem_len": cfg.mem_len, "same_length": int(cfg.same_length),
           "clamp_len": cfg.clamp_len, "pre_lnorm": int(cfg.pre_lnorm), "ln_eps": 1e-5}  # fmt: skip
    for n in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        assert attrs == {**own, "ln_eps": pytest.approx(1e-5), "plugin_namespace": b"trtformer", "plugin_version": b"1"}
        assert len(n.input) == 9 and len(n.output) == 2
    [fn] = graph.functions  # one body for every layer
    assert (fn.domain, fn.name, list(fn.input)[:2], list(fn.output)) == ("trtformer", "RelPositionAttention", ["hidden", "mems"], ["output", "new_mem"])
    assert {n.domain for n in fn.node} == {""} and "MatMul" in {n.op_type for n in fn.node}
    assert {(o.domain, o.version) for o in graph.opset_import} >= {("trtformer", 1)}
    m = manifest(txl(name, "plugin"))
    assert m["plugins"] == [{"op": "trtformer::rel_position_attention", "domain": "trtformer", "name": "RelPositionAttention",
                             "plugin_namespace": "trtformer", "plugin_version": "1", "nodes": cfg.n_layer, "attributes": own}]


def test_plugin_form_refuses_layers_with_different_attributes():
    """One traced body per op: TensorRT-RTX would inline the first layer's body everywhere, so export stops."""
    from trtformer.exporter import translations
    from trtformer.ops.rel_position import rel_position_attention

    class TwoLayers(torch.nn.Module):  # the same weights twice, clamped at 2 and then at 3
        def __init__(self):
            super().__init__()
            self.w = torch.nn.ParameterList(torch.randn(s) for s in [(24, 8), (8, 8), (2, 4), (2, 4), (8, 8), (8,), (8,)])

        def forward(self, hidden, mems):
            for clamp in (2, 3):
                hidden = rel_position_attention(hidden, mems, *self.w, 2, 4, 5, False, clamp, False, 1e-5)[0]
            return hidden

    program = torch.export.export(TwoLayers(), (torch.randn(3, 2, 8), torch.randn(4, 2, 8)), strict=False)
    with pytest.raises(ExportError, match=r"called with 2 different settings \(clamp_len\); .*by name alone") as info:
        translations.plugin_calls(program)
    assert "--form portable" in info.value.hint


def test_optimize_is_refused_where_onnx_runtime_has_no_fusions(tmp_path):
    with pytest.raises(ExportError, match="no fusions for the transfo_xl family"):
        trtformer.export(ADAPTIVE, tmp_path / "x", optimize=True)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", [ADAPTIVE, SOFTMAX])
def test_portable_form_has_only_standard_ops(txl, name):
    graph = onnx.load(txl(name, "portable") / "model.onnx")
    assert {n.domain for n in graph.graph.node} <= {"", "ai.onnx"} and not graph.functions
    assert {o.domain for o in graph.opset_import} <= {"", "ai.onnx"}
    assert manifest(txl(name, "portable"))["plugins"] == []


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize(("name", "form"), CASES, ids=IDS)
def test_onnx_runtime_matches_the_reference_over_ten_segments(txl, name, form):
    report = check_parity(txl(name, form), backend="ort-cpu", segments=10, write=False)
    assert report.passed, report.table()
    head = "log_probs" if config(name).cutoffs else "logits"
    segments = [c for c in report.comparisons if c.case.startswith("segment ")]
    assert len(segments) == 20 and {c.output for c in segments} == {head, "new_mems.*"}
    assert segments[0].case == ("segment 1 (0+6 rows)" if name == ADAPTIVE else "segment 1 (0+5 rows)")
    assert any(f"({config(name).mem_len}+" in c.case for c in segments)  # the memory filled, then slid
    growth = {c.output: c for c in report.comparisons if c.criterion == "growth"}
    assert set(growth) == {head, "new_mems.*"} and all(c.passed and c.growth < 4 for c in growth.values())
    assert "growth 6-10 / 1-5" in report.table()


def test_fp16_plugin_form_runs_in_onnx_runtime(txl):
    """fp16 memory and layers, fp32 adaptive softmax; ONNX Runtime used to crash on an fp16 -> fp32 head."""
    art = txl(ADAPTIVE, "plugin", "fp16")
    m = manifest(art)["graphs"]["model"]
    assert m["inputs"][1]["dtype"] == "float16" and m["outputs"][0]["dtype"] == "float32"
    report = check_parity(art, backend="ort-cpu", segments=8, write=False)
    assert report.passed, report.table()


@pytest.mark.parametrize("form", ["portable", "plugin"])
def test_batch_segment_and_memory_sizes_not_traced_at(txl, form):
    """Exported at batch 2, seg 3, mem 4: other sizes, memory 0 and a segment longer than mem_len included."""
    art = txl(ADAPTIVE, form)
    ort, ref = trtformer.load(art, backend="ort-cpu"), trtformer.load(art, backend="torch")
    rng = np.random.default_rng(1)
    for batch, seg, mem in [(1, 1, 0), (5, 7, 0), (3, 40, 9), (1, 2, 16), (4, 16, 16)]:
        mems = {f"mems.{i}": rng.standard_normal((mem, batch, 64)).astype(np.float32) for i in range(2)}
        ids = rng.integers(0, 512, (batch, seg))
        got, state = ort.step({"input_ids": ids}, ort.state_from_numpy(mems))
        want, ref_state = ref.step({"input_ids": ids}, ref.state_from_numpy(mems))
        assert np.abs(got["log_probs"] - want["log_probs"]).max() < 1e-4
        new = ort.state_to_numpy(state)
        assert state.sizes == {"batch": batch, "mem": min(16, mem + seg)}
        for name, value in ref.state_to_numpy(ref_state).items():
            assert new[name].shape == (min(16, mem + seg), batch, 64) and np.abs(new[name] - value).max() < 1e-5


# ---------------------------------------------------------------------------------------------- stream


def test_memory_starts_empty_and_stays_on_the_backend(txl):
    session = trtformer.load(txl(ADAPTIVE, "plugin"))
    state = session.new_state(3)
    assert session.empty_state_sizes() == {"mem": 0} and state.sizes == {"batch": 3, "mem": 0}
    assert session.state_to_numpy(state)["mems.1"].shape == (0, 3, 64)
    stream = Stream(session, batch=2)
    lengths = []
    for _ in range(5):
        stream.feed(np.ones((2, 6), np.int64))
        lengths.append(stream.memory_length)
    assert lengths == [6, 12, 16, 16, 16] and stream.memory_limit == 16
    assert all(isinstance(v, onnxruntime.OrtValue) for v in stream.state.values.values())  # IO binding, not numpy
    assert (stream.segments, stream.tokens) == (5, 30)


def test_rows_are_independent_streams_and_reset_starts_afresh(txl):
    session = trtformer.load(txl(SOFTMAX, "portable"))
    ids = np.random.default_rng(2).integers(0, 512, (3, 20))
    together = Stream(session, batch=3)
    outs = [together.feed(ids[:, s : s + 5]) for s in range(0, 20, 5)]
    for row in range(3):
        alone = Stream(session)
        mine = [alone.feed(ids[row, s : s + 5]) for s in range(0, 20, 5)]  # [seg] for a batch of 1
        assert all(np.abs(a[0] - b[row]).max() < 1e-5 for a, b in zip(mine, outs, strict=True))
    together.reset()
    assert together.memory_length == 0 and together.memory() == {}
    assert np.abs(together.feed(ids[:, :5]) - outs[0]).max() == 0


@pytest.mark.parametrize("name", [ADAPTIVE, SOFTMAX])
def test_log_likelihood_equals_one_pass_of_the_reference(txl, name):
    """13 tokens: 12 fed in segments of 4 never overflow the memory, so the model's one pass gives the same
    next-token log-probabilities; the softmax head's logits go through log_softmax."""
    ids = torch.randint(0, 512, (2, 13), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = preset(name).model(ids[:, :-1])
    head = out["log_probs"] if config(name).cutoffs else torch.log_softmax(out["logits"].double(), -1)
    want = head.double().gather(-1, ids[:, 1:, None]).sum().item()
    for backend in ("ort-cpu", "torch"):
        result = log_likelihood(trtformer.load(txl(name, "plugin"), backend=backend), ids.numpy(), seg_len=4)
        assert (result.tokens, result.scored, result.segments, len(result.seconds)) == (13, 24, 3, 3)
        assert result.total_log_prob == pytest.approx(want, abs=1e-3)
        assert result.perplexity == pytest.approx(np.exp(-want / 24), rel=1e-5)


def test_stream_refuses_other_models_and_bad_tokens(txl, gpt2_artifact):
    with pytest.raises(InputError, match="segment memory .* has state of kind kv-cache"):
        Stream(trtformer.load(gpt2_artifact))
    session = trtformer.load(txl(ADAPTIVE, "portable"))
    with pytest.raises(InputError, match="token 512 at position 4 is outside the vocabulary"):
        log_likelihood(session, [1, 2, 3, 4, 512], seg_len=2)  # the last token is only a target, still checked
    with pytest.raises(InputError, match="at least 2 tokens"):
        log_likelihood(session, [5])
    with pytest.raises(InputError, match=r"\[batch=2, seg\]"):
        Stream(session, batch=2).feed(np.ones((3, 4), np.int64))


# ---------------------------------------------------------------------------------------------- CLI


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_stream_info_and_parity(txl, tmp_path, capsys):
    art = txl(ADAPTIVE, "plugin")
    tokens = np.random.default_rng(4).integers(0, 512, 101)
    (tmp_path / "ids.txt").write_text("\n".join(" ".join(map(str, tokens[i : i + 30])) for i in range(0, 101, 30)))
    code, out, _ = run(capsys, "stream", art, "--tokens", tmp_path / "ids.txt", "--seg-len", "8")
    want = log_likelihood(trtformer.load(art), tokens, seg_len=8)
    assert code == 0 and "101 (100 scored" in out and "13 of up to 8 tokens" in out and "ms/segment" in out
    assert f"perplexity  {want.perplexity:.2f}" in out and f"nll         {want.nll:.4f}" in out
    np.save(tmp_path / "ids.npy", tokens)
    code, out, _ = run(capsys, "stream", art, "--tokens", tmp_path / "ids.npy", "--backend", "torch")
    assert code == 0 and "7 of up to 16 tokens, memory carried on torch" in out  # default: the memory length
    code, out, _ = run(capsys, "info", art)
    assert code == 0 and "mems.0 -> new_mems.0 ... (memory)" in out and "trtformer::RelPositionAttention x2" in out
    code, out, _ = run(capsys, "parity", art, "--segments", "9")
    assert code == 0 and "segment 9 (16+6 rows)" in out and "growth 6-9 / 1-4" in out


def test_cli_generate_points_to_stream(txl, capsys):
    code, _, err = run(capsys, "generate", txl(SOFTMAX, "portable"), "--prompt-ids", "1,2")
    assert code == 2 and "needs a causal LM artifact with a KV cache" in err and "trtformer stream" in err


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"),
    ("1 2 three", "cannot read token ids"),
    ('[[1, 2.5, 3]]', "is 2.5, which is not an integer token id"),
    ("1 2 3\n4 512", "token 512 at position 4 is outside the vocabulary [0, 511]"),
    ("7", "at least 2 tokens"),
])  # fmt: skip
def test_cli_stream_bad_tokens_exit_2(txl, tmp_path, capsys, content, message):
    path = tmp_path / ("ids.json" if content and content.startswith("[") else "ids.txt")
    if content is not None:
        path.write_text(content)
    code, out, err = run(capsys, "stream", txl(ADAPTIVE, "portable"), "--tokens", path)
    assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------------- TensorRT-RTX


@pytest.mark.parametrize("form", ["portable", "plugin"])
def test_tensorrt_rtx_builds_both_forms_with_memory_from_zero(txl, tmp_path, form):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install 'trtformer[tensorrt-rtx]')")
    from trtformer.engines import build_engine

    art = Path(shutil.copytree(txl(SOFTMAX, form), tmp_path / form))
    result = build_engine(art, flavor="tensorrt-rtx", compute_capability=["8.6"])
    profile = result.record.profiles[0]
    assert profile["dims"]["mem"] == {"min": 0, "opt": 12, "max": 12}
    assert profile["inputs"]["mems.1"] == {"min": [0, 1, 64], "opt": [12, 1, 64], "max": [12, 16, 64]}
    assert result.path.is_file() and result.record.onnx_sha256 == manifest(art)["files"]["model.onnx"]["sha256"]
