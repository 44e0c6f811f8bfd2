"""Graphs past the external-data threshold (GPT-2 large or BERT-large in fp32 are over 1 GiB, and protobuf stops at
2 GiB): every graph of the artifact keeps its weights in a file beside it, the manifest checks both, ONNX Runtime
runs each graph at parity, and TensorRT-RTX builds from the pair. The threshold is lowered so tiny models cross it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx.external_data_helper import uses_external_data
from support import manifest

import trtformer
from trtformer.errors import ArtifactError
from trtformer.exporter import export as exporter
from trtformer.parity import check_parity


@pytest.fixture(autouse=True)
def tiny_threshold(monkeypatch):
    monkeypatch.setattr(exporter, "EXTERNAL_DATA_BYTES", 1024)


def files_on_disk(art: Path) -> set[str]:
    skip = {"manifest.json", "parity.json", ".manifest.lock"}
    return {str(p.relative_to(art)) for p in art.rglob("*") if p.is_file() and p.name not in skip}


def test_every_bert_graph_keeps_its_weights_beside_it_and_runs_as_without(tmp_path, monkeypatch):
    art = trtformer.export("tiny-bert", tmp_path / "bert", optimize=True, quantize="int8-dynamic")
    m = manifest(art)
    for graph in m["graphs"]["model"]["models"].values():
        assert f"{graph}.data" in m["files"], graph
        proto = onnx.load(art / graph, load_external_data=False)
        assert sum(uses_external_data(t) for t in proto.graph.initializer) > 0
    assert files_on_disk(art) == set(m["files"])  # nothing left over from the quantiser's own file
    for graph in ("plain", "optimized"):
        report = check_parity(art, model=graph, write=False)
        assert report.passed, report.table()
    # The same export with the weights inside each graph gives the same outputs, bit for bit (int8 included, whose
    # parity on random weights is judged by agreement, a different question).
    monkeypatch.setattr(exporter, "EXTERNAL_DATA_BYTES", 1 << 30)
    inline = trtformer.export("tiny-bert", tmp_path / "inline", optimize=True, quantize="int8-dynamic")
    assert not any(name.endswith(".data") for name in manifest(inline)["files"])
    ids = np.random.default_rng(0).integers(0, 512, (2, 12))
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    for graph in ("plain", "optimized", "int8"):
        got = trtformer.load(art, model=graph).run(feeds)
        want = trtformer.load(inline, model=graph).run(feeds)
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want), graph


def test_tensorrt_rtx_builds_from_the_graph_and_its_data(tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (CI installs it)")
    from trtformer.engines import build_engine, read_engine

    art = trtformer.export("tiny-gpt2", tmp_path / "gpt2")
    assert {"model.onnx", "model.onnx.data"} <= set(manifest(art)["files"])
    build = build_engine(art, flavor="tensorrt-rtx", compute_capability=["8.6"])
    assert build.record.onnx_sha256 != manifest(art)["files"]["model.onnx"]["sha256"]  # the data counts too
    assert read_engine(art, flavor="tensorrt-rtx").name == build.name
    data = art / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-1] + bytes([data.read_bytes()[-1] ^ 1]))
    with pytest.raises(ArtifactError, match="model.onnx.data does not match its sha256"):
        build_engine(art, flavor="tensorrt-rtx", compute_capability=["8.6"])
