"""Encoder calls padded to shape buckets (runtime/backends/buckets.py) on CPU: the bucketed outputs equal the
unbucketed ones, the added rows and positions are masked and finite, buckets are validated and refused where they
cannot work, and the replay path runs through graphs.Captured's CPU stand-in (capture once per bucket, every forward
under no_host_reads). Longformer's eager op reads the host, so only its Triton path can be captured: that is checked
under the Triton interpreter in a child process (this file run as a script). The GPU run is under the `gpu` marker."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch

import trtformer
from trtformer.artifact import Artifact
from trtformer.errors import BackendError
from trtformer.parity import check_parity, padded_feeds
from trtformer.runtime.backends.buckets import BATCH_BUCKETS, EncoderBuckets, unsupported
from trtformer.runtime.session import Session

ENCODERS = {"bert": "tiny-bert", "longformer": "tiny-longformer"}
# (batch, seq): padded in both, exactly a bucket in both, a batch past the largest bucket (chunks of 16)
CALLS = [(1, 5), (3, 16), (5, 33), (8, 32), (20, 9)]


def feeds_for(session, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs with the caller's own padding (every row but the first) and, for Longformer, global tokens."""
    return padded_feeds(session, batch, seq, True, np.random.default_rng(seed))


def assert_same(got: dict, want: dict, atol: float = 1e-5) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], atol=atol, rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("family", ENCODERS)
def test_bucketed_outputs_equal_the_unbucketed(preset_artifact, family):
    path = preset_artifact(ENCODERS[family])
    with trtformer.load(path, backend="torch", buckets=[16, 32, 64]) as bucketed, trtformer.load(path, backend="torch") as ref:
        buckets = bucketed.backend.buckets
        assert buckets.lengths == (16, 32, 64) and not buckets.cuda_graphs
        assert [buckets.bucket(b, s) for b, s in CALLS[:4]] == [(1, 16), (4, 16), (8, 64), (8, 32)]
        for i, (batch, seq) in enumerate([*CALLS, (2, 100)]):  # 100: past the largest bucket, run as it is
            feeds = feeds_for(ref, batch, seq, seed=i)
            assert_same(bucketed.run(feeds), ref.run(feeds))


def test_default_buckets_run_up_to_the_graph_limit(preset_artifact):
    with trtformer.load(preset_artifact("tiny-bert"), backend="torch") as session:
        assert session.backend.buckets is None  # no buckets unless asked for (or CUDA graphs want them)
    bert, longformer = (Artifact.load(preset_artifact(ENCODERS[f])).graph() for f in ("bert", "longformer"))
    assert EncoderBuckets(bert, None, torch.device("cpu")).lengths == (16, 32, 64, 128)  # seq up to 128
    assert EncoderBuckets(longformer, None, torch.device("cpu")).lengths == tuple(2**i for i in range(4, 13))  # 4096
    assert BATCH_BUCKETS == (1, 2, 4, 8, 16)


@pytest.mark.parametrize("family", ENCODERS)
def test_bucketed_parity(preset_artifact, family):
    report = check_parity(preset_artifact(ENCODERS[family]), backend="torch", buckets=[16, 32, 64], write=False)
    assert report.passed, report.table()


def test_seq2seq_encoder_graphs_take_buckets(preset_artifact):
    path = preset_artifact("tiny-bart")
    with Session.open(path, "torch", graph="encoder", buckets=[16, 32]) as bucketed, \
            Session.open(path, "torch", graph="encoder") as ref:  # fmt: skip
        for batch, seq in ((3, 7), (2, 32)):
            feeds = feeds_for(ref, batch, seq)
            assert_same(bucketed.run(feeds), ref.run(feeds))  # encoder states and cross keys cut back along enc


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("family", ENCODERS)
def test_a_row_of_nothing_but_padding_stays_finite(preset_artifact, family, precision):
    """What a bucket adds: a row with no real token (dropped) and masked positions, finite at every precision."""
    path = preset_artifact(ENCODERS[family])
    with trtformer.load(path, backend="torch", precision=precision) as session:
        buckets = EncoderBuckets(session.graph, session.backend._forward, torch.device("cpu"), pad_id=1)
        tensors = session.backend._tensors(feeds_for(session, 2, 9))
        padded = {n: buckets._padded(n, t, (4, 16)) for n, t in tensors.items()}
        assert int(padded["attention_mask"][2:].sum()) == 0 and int(padded["attention_mask"][:, 9:].sum()) == 0
        if "global_attention_mask" in padded:
            assert int(padded["global_attention_mask"][:, 9:].sum()) == 0
        out = session.backend._forward(padded)
        assert all(bool(torch.isfinite(v.float()).all()) for v in out.values())


# --- the replay path: graphs.Captured's CPU stand-in ------------------------------------------------------------


def test_each_bucket_is_captured_once_and_replayed(preset_artifact):
    path = preset_artifact("tiny-bert")
    with trtformer.load(path, backend="torch", buckets=[16, 32]) as graphed, trtformer.load(path, backend="torch") as ref:
        buckets = graphed.backend.buckets
        buckets.cuda_graphs = True  # the CPU stand-in of a CUDA graph: same buffers, forward under no_host_reads
        calls = [(3, 9), (4, 16), (3, 14), (1, 20), (2, 40)]  # three in bucket (4, 16); one in (1, 32); one past 32
        results = []
        for i, (batch, seq) in enumerate(calls):
            feeds = feeds_for(ref, batch, seq, seed=i)
            results.append((graphed.run(feeds), ref.run(feeds)))
            if i == 0:
                first = next(iter(buckets.captured.values()))
        names = ("attention_mask", "input_ids", "token_type_ids")
        assert sorted(buckets.captured) == [(1, 32, names), (4, 16, names)]  # the call past every bucket: uncaptured
        assert buckets.captured[4, 16, names] is first and first.replays == 3
        for got, want in results:  # earlier results were copied out: later replays did not overwrite them
            assert_same(got, want)


def test_compiled_buckets_compile_once_and_replay(preset_artifact):
    from trtformer.runtime.backends.compiled import require_cpp_compiler

    try:
        require_cpp_compiler()
    except BackendError as exc:
        pytest.skip(f"Inductor has no C++ compiler on this machine: {exc}")
    path = preset_artifact("tiny-bert")
    with trtformer.load(path, backend="torch-compile", buckets=[16, 32]) as graphed, trtformer.load(path, backend="torch") as ref:
        graphed.backend.buckets.cuda_graphs = True  # a compiled forward is captured without the dispatch mode
        for i, (batch, seq) in enumerate([(3, 9), (4, 12), (2, 30)]):
            feeds = feeds_for(ref, batch, seq, seed=i)
            assert_same(graphed.run(feeds), ref.run(feeds))
        assert graphed.backend.compiles == 1  # dynamic shapes: one graph for every bucket of batch > 1


def test_longformer_eager_op_cannot_be_captured(preset_artifact):
    """The eager sliding-window op reads its global-token count on the host: no CUDA graph over it. torch-cuda with
    cuda_graphs=True refuses at construction (EncoderBuckets.check); here the same check and the capture itself."""
    path = preset_artifact("tiny-longformer")
    with trtformer.load(path, backend="torch", buckets=[16]) as session:
        buckets = session.backend.buckets
        with pytest.raises(BackendError, match="cannot run as CUDA graphs on torch: aten::item reads"):
            buckets.check(session.backend._forward)
        buckets.cuda_graphs = True
        with pytest.raises(BackendError, match="aten::item reads a tensor's value on the host"):
            session.run(feeds_for(session, 2, 9))


def test_longformer_triton_path_is_capturable(preset_artifact, monkeypatch):
    """Under TRITON_INTERPRET=1 (a child process), Longformer through buckets with the fused op's Triton kernels, its
    bucket captured by the CPU stand-in: every forward passes no_host_reads and the outputs equal the eager op's."""
    from support import run_interpreted

    monkeypatch.setenv("TRTFORMER_TEST_ARTIFACT", str(preset_artifact("tiny-longformer")))
    result = run_interpreted(__file__)
    assert result["captured"] == [[4, 16], [8, 32]] and result["replays"] == [2, 1]
    assert result["max_abs"] <= 1e-4, result


def interpreter_run() -> dict:
    from trtformer.plugins.registry import triton_kernels

    path = os.environ["TRTFORMER_TEST_ARTIFACT"]
    with trtformer.load(path, backend="torch", buckets=[16, 32]) as graphed, trtformer.load(path, backend="torch") as ref:
        graphed.backend.kernels = triton_kernels  # torch-cuda-triton's switch, on CPU tensors the interpreter runs
        graphed.backend.buckets.cuda_graphs = True
        errors = []
        for i, (batch, seq) in enumerate([(3, 9), (4, 16), (5, 20)]):
            feeds = feeds_for(ref, batch, seq, seed=i)
            got, want = graphed.run(feeds), ref.run(feeds)
            errors += [float(np.abs(got[n] - want[n]).max()) for n in want]
        captured = graphed.backend.buckets.captured
        return {"captured": sorted(list(k[:2]) for k in captured), "replays": [c.replays for _, c in sorted(captured.items())],
                "max_abs": max(errors)}  # fmt: skip


# --- validation and refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("bad", "named"), [([0, 16], "0 in"), ([32, 16], "16 in"), ([16, 16], "16 in"), ([16, 1000], "1000 in"),
                                           ([16.0], "16.0 in"), ([True], "True in"), ([], "[]"), ("16", "'16'"), (16, "16")])
def test_bad_buckets_are_refused_by_name(preset_artifact, bad, named):
    with pytest.raises(BackendError, match="buckets must be") as info:
        trtformer.load(preset_artifact("tiny-bert"), backend="torch", buckets=bad)
    assert named in str(info.value) and ("[1, 128]" in str(info.value) or "list of" in str(info.value))


def test_buckets_and_cuda_graphs_are_refused_where_they_cannot_work(preset_artifact, gpt2_artifact):
    with pytest.raises(BackendError, match="shape buckets are for encoder graphs"):
        trtformer.load(gpt2_artifact, backend="torch", buckets=[16])  # a KV cache
    with pytest.raises(BackendError, match="CUDA graphs need a CUDA device"):
        trtformer.load(preset_artifact("tiny-bert"), backend="torch", cuda_graphs=True)
    with trtformer.load(preset_artifact("tiny-bert"), backend="torch") as session:
        graph = session.graph
        assert unsupported(graph) is None
        features = dataclasses.replace(graph.inputs[0], name="features", role="features", dtype="float32")
        assert "padding cannot fill" in unsupported(dataclasses.replace(graph, inputs=(*graph.inputs, features)))
        summed = dataclasses.replace(graph.outputs[0], shape=("batch", "past + seq", 512))
        assert "cannot be cut back" in unsupported(dataclasses.replace(graph, outputs=(summed,)))
        no_mask = tuple(t for t in graph.inputs if t.role != "padding-mask")
        with pytest.raises(BackendError, match="no ids and padding-mask inputs"):
            EncoderBuckets(dataclasses.replace(graph, inputs=no_mask), None, torch.device("cpu"))


# --- GPU --------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("family", ENCODERS)
def test_gpu_compiled_buckets_as_cuda_graphs_match_eager(preset_artifact, family):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("triton", reason="Triton is not installed (pip install 'trtformer[triton]')")
    path = preset_artifact(ENCODERS[family], precision="fp16")
    with trtformer.load(path, backend="torch-cuda-compile") as graphed, trtformer.load(path, backend="torch-cuda") as eager:
        buckets = graphed.backend.buckets
        assert buckets is not None and buckets.cuda_graphs and graphed.backend.precision == "fp16"  # the default
        for i, (batch, seq) in enumerate([*CALLS, (3, 14)]):
            feeds = feeds_for(eager, batch, seq, seed=i)
            got, want = graphed.run(feeds), eager.run(feeds)
            for name in want:
                assert np.isfinite(got[name]).all()
                scale = max(1.0, float(np.abs(want[name]).max()))
                assert float(np.abs(got[name] - want[name]).max()) <= 2e-2 * scale, name
        # (3, 16), the last 4 rows of (20, 9) and (3, 14): captured once, replayed three times
        assert buckets.captured[4, 16, tuple(sorted(feeds))].replays == 3
    report = check_parity(path, backend="torch-cuda-compile", write=False)
    assert report.passed, report.table()
    if family == "longformer":  # the eager op reads the host: CUDA graphs over it are refused up front
        with pytest.raises(BackendError, match="cannot run as CUDA graphs on torch-cuda"):
            trtformer.load(path, backend="torch-cuda", cuda_graphs=True)
    else:  # the eager model captured as it is
        with trtformer.load(path, backend="torch-cuda", cuda_graphs=True) as graphed, \
                trtformer.load(path, backend="torch-cuda") as eager:  # fmt: skip
            for i, (batch, seq) in enumerate([(3, 9), (2, 14)]):  # one bucket, captured then replayed
                feeds = feeds_for(eager, batch, seq, seed=i)
                assert_same(graphed.run(feeds), eager.run(feeds), atol=1e-3)
            assert [c.replays for c in graphed.backend.buckets.captured.values()] == [2]


if __name__ == "__main__":  # run by test_longformer_triton_path_is_capturable under TRITON_INTERPRET=1
    print(json.dumps(interpreter_run()))
