"""The fixed-shape paths the torch backends replay as CUDA graphs, on CPU: `graphs.Captured`'s CPU stand-in keeps the
capture contract (static inputs copied in, static outputs overwritten by each replay, the in-graph write-back once per
replay), and `no_host_reads` finds what would break a capture. GPT decode over the static KV cache and Transformer-XL
segments over a full memory, replayed that way, match the torch reference step for step, with the state contract kept.
What only a GPU shows (the capture itself, its speed) is under the `gpu` marker."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import trtformer
from trtformer.errors import BackendError, InputError
from trtformer.ops.sliding_window import sliding_window_attention
from trtformer.runtime.backends.graphs import Captured, no_host_reads
from trtformer.runtime.backends.segments import SegmentGraphs
from trtformer.runtime.generate import generate
from trtformer.runtime.stream import Stream

# --- no_host_reads ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("read, what", [
    (lambda x: bool(x.sum() > 0), "reads a tensor's value on the host"),
    (lambda x: x.max().item(), "reads a tensor's value on the host"),
    (lambda x: x[x > 0], "boolean mask"),
    (lambda x: x.nonzero(), "depends on the data"),
    (lambda x: torch.repeat_interleave(x.long().abs()), "depends on the data"),
])  # fmt: skip
def test_host_reads_are_named(read, what):
    x = torch.randn(6)
    read(x)  # fine outside
    with pytest.raises(BackendError, match=what), no_host_reads():
        read(x)


def test_device_work_passes_and_fused_ops_are_entered():
    x = torch.randn(4, 8)
    with no_host_reads():
        torch.softmax(x @ x.T, -1).masked_fill(torch.eye(4, dtype=torch.bool), 0.0)
        x[torch.tensor([0, 2])]  # integer indexing has a known size
    # The sliding-window op's eager body counts the global tokens on the host: the check sees inside the op.
    b, s, h, d = 1, 16, 2, 4
    q = torch.randn(b, h, s, d)
    mask, glob = torch.ones(b, s, dtype=torch.int64), torch.zeros(b, s, dtype=torch.int64)
    glob[0, 0] = 1
    with pytest.raises(BackendError, match="reads a tensor.s value on the host"), no_host_reads():
        sliding_window_attention(q, q, q, q, q, q, mask, glob, 4, [1] * h, d**-0.5)


# --- Captured ---------------------------------------------------------------------------------------------------


def test_captured_replays_over_static_buffers():
    buffers = {"x": torch.zeros(3), "total": torch.zeros(3)}
    calls = []

    def forward(inputs):
        calls.append(1)
        return {"y": inputs["x"] * 2 + inputs["total"]}

    def accumulate(inputs, outputs):  # an in-graph write-back, as a memory update is
        inputs["total"].copy_(outputs["y"])

    step = Captured(forward, buffers, after=accumulate)
    assert buffers["total"].tolist() == [0, 0, 0]  # building it took no step
    out = step.replay({"x": torch.ones(3)})
    assert out["y"].tolist() == [2, 2, 2] and buffers["total"].tolist() == [2, 2, 2] and buffers["x"].tolist() == [1] * 3
    again = step.replay({"x": torch.ones(3)})
    assert again is out and out["y"].tolist() == [4, 4, 4]  # the same static outputs, overwritten
    assert step.replays == 2
    with pytest.raises(BackendError, match=r"input x is \(3,\), got \(4,\)"):
        step.replay({"x": torch.ones(4)})
    with pytest.raises(BackendError, match="host"):
        Captured(lambda inputs: {"y": inputs["x"] * inputs["x"].sum().item()}, {"x": torch.ones(2)})


def needs_cpp_compiler() -> None:
    from trtformer.runtime.backends.compiled import require_cpp_compiler

    try:
        require_cpp_compiler()
    except BackendError as exc:
        pytest.skip(f"Inductor has no C++ compiler on this machine: {exc}")


# --- GPT decode over the static KV cache, replayed --------------------------------------------------------------


@pytest.mark.parametrize("backend", ["torch", "torch-compile"])
def test_static_decode_replayed_matches_the_reference(gpt2_artifact, backend):
    if backend == "torch-compile":
        needs_cpp_compiler()
    with trtformer.load(gpt2_artifact, backend="torch") as ref, \
            trtformer.load(gpt2_artifact, backend=backend, static_cache=True) as graphed:  # fmt: skip
        static = graphed.backend.static
        assert static.check == (backend == "torch")  # a compiled forward is captured without the dispatch mode
        static.cuda_graphs = True  # the CPU stand-in of the capture: the backend refuses CUDA graphs on CPU
        for prompts in ([[5, 9, 2, 7, 1]], [[5, 9, 2], [3, 8], [1, 1, 4, 6]], [[7, 7]]):
            assert generate(graphed, prompts, max_new_tokens=12).tokens == generate(ref, prompts, max_new_tokens=12).tokens
        assert sorted(static.captured) == [1, 3]  # batch 1 captured once and replayed for the third request
        assert static.captured[1].captured.replays > 12


# --- Transformer-XL segments over a full memory, replayed -------------------------------------------------------


def graphed_stream(session) -> SegmentGraphs:
    """The backend's segment graphs on CPU (the backend itself refuses CUDA graphs there)."""
    backend = session.backend
    backend.segments = SegmentGraphs(session.graph, backend._forward, backend.device, backend.name)
    return backend.segments


@pytest.mark.parametrize("preset", ["tiny-transfo-xl", "tiny-transfo-xl-softmax"])
def test_full_memory_segments_replayed_match_the_reference(preset_artifact, preset):
    path = preset_artifact(preset)
    rng = np.random.default_rng(0)
    with trtformer.load(path, backend="torch") as ref, trtformer.load(path, backend="torch") as graphed:
        segments = graphed_stream(graphed)
        mem_len = graphed.graph.dims["mem"].max
        want, got = Stream(ref, batch=2), Stream(graphed, batch=2)
        replays = 0
        for seg in (5, 7, 7, 7, 4, 7, 7):  # grows, fills, then replays; seg 4 is a second graph
            replays += seg == 7 and got.memory_length == mem_len
            ids = rng.integers(0, 500, (2, seg))
            np.testing.assert_allclose(got.feed(ids), want.feed(ids), rtol=1e-5, atol=1e-5)
            assert got.memory_length == want.memory_length
        assert got.memory_length == mem_len and sorted(segments.graphs) == [(2, 4), (2, 7)]
        assert segments.graphs[2, 7].captured.replays == replays >= 3
        for name, value in want.memory().items():
            np.testing.assert_allclose(got.memory()[name], value, rtol=1e-5, atol=1e-5)


def test_segment_graph_states_keep_the_contract(preset_artifact):
    path = preset_artifact("tiny-transfo-xl")
    rng = np.random.default_rng(1)
    ids = {"input_ids": rng.integers(0, 500, (1, 8))}
    with trtformer.load(path, backend="torch") as session:
        segments = graphed_stream(session)
        state = None
        for _ in range(3):  # 8, 16 = mem_len (eager), then the first replay
            _, state = session.step(ids, state)
        graph = segments.graphs[1, 8]
        buffers = {n: v.data_ptr() for n, v in state.values.items()}
        _, latest = session.step(ids, state)
        assert {n: v.data_ptr() for n, v in latest.values.items()} == buffers  # the memory stays in its buffers
        assert session.state_to_numpy(latest)["mems.0"].shape == (16, 1, 64)  # the manifest's shape
        with pytest.raises(InputError, match="not the latest of its segment graph"):
            session.step(ids, state)
        with pytest.raises(InputError, match="not the latest"):
            session.state_to_numpy(state)
        # A copy carried by numpy continues where the buffers left off, through the same graph.
        arrays = session.state_to_numpy(latest)
        want, _ = session.step(ids, latest)
        got, _ = session.step(ids, session.state_from_numpy(arrays))
        assert graph.captured.replays == 4
        with trtformer.load(path, backend="torch") as ref:
            expected, _ = ref.step(ids, ref.state_from_numpy(arrays))
        np.testing.assert_allclose(want["log_probs"], expected["log_probs"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["log_probs"], expected["log_probs"], rtol=1e-5, atol=1e-6)


def test_compiled_segments_replayed_match_the_reference(preset_artifact):
    """torch-compile's forward captured as on torch-cuda-compile (no dispatch-mode check: torch.compile refuses to run
    under one, and fullgraph refuses host reads itself), the memory written back inside the replay."""
    needs_cpp_compiler()
    path = preset_artifact("tiny-transfo-xl")
    rng = np.random.default_rng(2)
    with trtformer.load(path, backend="torch") as ref, trtformer.load(path, backend="torch-compile") as compiled:
        backend = compiled.backend
        segments = backend.segments = SegmentGraphs(compiled.graph, backend._forward, backend.device, backend.name, check=False)
        want, got = Stream(ref), Stream(compiled)
        for _ in range(5):  # 8, 16 (full), then three replays
            ids = rng.integers(0, 500, (1, 8))
            np.testing.assert_allclose(got.feed(ids), want.feed(ids), rtol=1e-4, atol=1e-4)
        assert segments.graphs[1, 8].captured.replays == 3
        assert backend.compiles == 2  # the first segment (no memory) and one dynamic graph for all later ones


def test_the_transfo_xl_forward_reads_nothing_back_once_the_session_checked_the_ids(preset_artifact):
    path = preset_artifact("tiny-transfo-xl")
    with trtformer.load(path, backend="torch") as session:
        model = session.backend.model
        ids, mems = torch.randint(0, 500, (1, 8)), model.empty_mems(1, 16)
        with no_host_reads():
            model(ids, mems, check_values=False)
        with pytest.raises(BackendError, match="reads a tensor's value"), no_host_reads():
            model(ids, mems)  # the range check, which the Session does on the host instead
        with pytest.raises(InputError, match=r"512 at \(0, 1\), outside \[0, 511\]"):
            session.step({"input_ids": np.array([[1, 512]])})


def test_the_transfo_xl_triton_path_reads_nothing_back():
    """What torch-cuda-triton captures: the forward with the rel-position op's Triton wrapper (run under Triton's
    interpreter on CPU tensors), a full memory in and out, passes no_host_reads."""
    from support import run_interpreted

    result = run_interpreted(__file__)
    assert result == {"transfo_xl": "no host reads", "new_mems": [16, 2, 64], "body": "trtformer.plugins.rel_position.triton"}


def test_segment_graphs_are_refused_on_cpu(preset_artifact):
    with pytest.raises(BackendError, match="CUDA graphs need a CUDA device"):
        trtformer.load(preset_artifact("tiny-transfo-xl"), backend="torch", cuda_graphs=True)


# --- on the GPU -------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch-cuda", "torch-cuda-triton", "torch-cuda-compile"])
def test_gpu_full_memory_segments_are_captured(preset_artifact, backend):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    path = preset_artifact("tiny-transfo-xl", precision="fp16")
    rng = np.random.default_rng(0)
    with trtformer.load(path, backend=backend, cuda_graphs=True) as graphed, \
            trtformer.load(path, backend="torch-cuda") as eager:  # fmt: skip
        want, got = Stream(eager), Stream(graphed)
        for _ in range(6):
            ids = rng.integers(0, 500, (1, 8))
            np.testing.assert_allclose(got.feed(ids), want.feed(ids), rtol=2e-2, atol=2e-2)
        assert graphed.backend.segments.graphs[1, 8].captured.graph is not None  # a real CUDA graph
        assert graphed.backend.segments.graphs[1, 8].captured.replays == 4  # segments 3 to 6: the memory (16 rows) is full after two


if __name__ == "__main__":  # under TRITON_INTERPRET=1, from test_the_transfo_xl_triton_path_reads_nothing_back
    import json

    from trtformer.families import preset
    from trtformer.ops import dispatch, rel_position
    from trtformer.plugins.registry import triton_kernels

    model = preset("tiny-transfo-xl").model
    ids, mems = torch.randint(0, 500, (2, 8)), model.empty_mems(2, 16)
    with triton_kernels(), no_host_reads():
        out = model(ids, mems, check_values=False)
        body = dispatch.implementation(rel_position.OP)
    print(json.dumps({"transfo_xl": "no host reads", "new_mems": list(out["new_mems.0"].shape), "body": body.__module__}))
