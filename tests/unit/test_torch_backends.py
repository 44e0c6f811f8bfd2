"""The torch backends beyond the fp32 reference: the export's precision contract at fp16 and bf16, the compiled path
(torch.compile with Inductor, the fused ops opaque, recompiles counted), and GPT decode over a static KV cache, all on
CPU against the fp32 `torch` reference; then the GPU side (artifact precision on torch-cuda*, CUDA graphs over the
static decode step) under the `gpu` marker."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import trtformer
from trtformer.artifact import Artifact
from trtformer.cli import main
from trtformer.errors import BackendError, InputError
from trtformer.parity import (
    TOLERANCES,
    check_parity,
    compare,
    compare_outputs,
    decode_cases,
    padded_feeds,
    segment_cases,
    seq2seq_decode_cases,
)
from trtformer.runtime import backends
from trtformer.runtime.generate import generate
from trtformer.runtime.seq2seq import Seq2Seq, is_seq2seq
from trtformer.runtime.session import Session

PRESETS = {"gpt": "tiny-gpt2", "bert": "tiny-bert", "longformer": "tiny-longformer", "transfo_xl": "tiny-transfo-xl",
           "bart": "tiny-bart", "t5": "tiny-t5"}  # fmt: skip
LOW = {"fp16": torch.float16, "bf16": torch.bfloat16}


def parity_cases(path, backend: str, tol, **options) -> tuple[list, list]:
    """Parity's own cases (forwards, decode steps, segments; encoder and decoder for encoder-decoders) on `backend`
    against the fp32 torch reference, judged with `tol`; returns the comparisons and (precision, model) of the backends
    that ran."""
    art = Artifact.load(path)
    rng = np.random.default_rng(0)
    if is_seq2seq(art):
        with Seq2Seq.open(art, backend, **options) as model, Seq2Seq.open(art, "torch") as ref:
            feeds = padded_feeds(model.encoder, 3, 9, True, rng)
            out = compare_outputs(model.encoder, "encoder b3 s9", model.encoder.run(feeds), ref.encoder.run(feeds), tol,
                                  feeds[model.source_mask])  # fmt: skip
            ran = [(s.backend.precision, s.backend.model) for s in (model.encoder, model.decoder)]
            return out + seq2seq_decode_cases(model, ref, tol, rng, 6), ran
    with Session.open(art, backend, **options) as session, Session.open(art, "torch") as ref:
        out = []
        for batch, seq in ((3, 9), (2, 33)):  # padded; parity's longer cases add minutes of fp16 CPU matmuls
            feeds = padded_feeds(session, batch, seq, session.graph.role_input("padding-mask") is not None, rng)
            got, want = (s.step(feeds)[0] if s.has_state else s.run(feeds) for s in (session, ref))
            out += compare_outputs(session, f"b{batch} s{seq}", got, want, tol, feeds.get("attention_mask"))
        if "kv-cache" in session.graph.state_kinds:
            out += decode_cases(session, ref, tol, rng, 6)
        if "memory" in session.graph.state_kinds:
            out += segment_cases(session, ref, tol, rng, 4)
        return out, [(session.backend.precision, session.backend.model)]


def failures(comparisons) -> list:
    return [c for c in comparisons if c.passed is False]


# --- precision --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("family", PRESETS)
def test_low_precision_torch_passes_parity_with_its_tolerance(preset_artifact, family, precision):
    comparisons, ran = parity_cases(preset_artifact(PRESETS[family]), "torch", TOLERANCES[precision], precision=precision)
    assert comparisons and not failures(comparisons), failures(comparisons)
    assert max(c.max_abs for c in comparisons) > 0  # it did not run fp32
    for ran_at, model in ran:
        assert ran_at == precision
        dtypes = {n: p.dtype for n, p in model.named_parameters()}
        # The export's contract: matmul weights low; LayerNorms, embeddings and heads fp32.
        assert LOW[precision] in dtypes.values() and torch.float32 in dtypes.values()
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.Embedding)):
                assert module.weight.dtype == torch.float32, name


def test_the_reference_stays_fp32_and_the_others_follow_the_artifact(preset_artifact):
    path = preset_artifact("tiny-gpt2", precision="bf16")
    with trtformer.load(path, backend="torch") as ref, trtformer.load(path, backend="torch", precision="bf16") as low:
        assert ref.backend.precision == "fp32"
        out, state = low.step({"input_ids": np.array([[1, 2, 3]]), "attention_mask": np.ones((1, 3), np.int64)})
        assert out["logits"].dtype == np.float32  # fp32 logits at every precision
        assert state.values["past.0.key"].dtype == torch.bfloat16
        assert low.state_to_numpy(state)["past.0.key"].dtype == np.float32  # numpy has no bfloat16: fp32 holds it
        with pytest.raises(BackendError, match="unknown precision 'fp8'"):
            trtformer.load(path, backend="torch", precision="fp8")


# --- static KV cache --------------------------------------------------------------------------------------------


def test_static_cache_decode_equals_the_concatenating_path(gpt2_artifact):
    with trtformer.load(gpt2_artifact, backend="torch") as ref, \
            trtformer.load(gpt2_artifact, backend="torch", static_cache=True) as static:  # fmt: skip
        prompts = [[5, 9, 2, 7, 1], [3, 8]]  # left-padded into one batch
        want, got = generate(ref, prompts, max_new_tokens=24), generate(static, prompts, max_new_tokens=24)
        assert got.tokens == want.tokens and len(set(want.tokens[0])) > 3
        report = check_parity(gpt2_artifact, backend="torch", static_cache=True, write=False, decode_steps=24)
        assert report.passed, report.table()
        assert {c.output for c in report.comparisons} >= {"logits", "present.0.key", "present.1.value"}


def test_static_cache_writes_in_place_and_keeps_the_state_contract(gpt2_artifact):
    with trtformer.load(gpt2_artifact, backend="torch", static_cache=True) as session:
        capacity = session.graph.limits["past + seq"]
        rng = np.random.default_rng(1)
        ids = rng.integers(0, 300, (2, 12)).astype(np.int64)
        mask = np.ones((2, 12), np.int64)
        _, state = session.step({"input_ids": ids[:, :4], "attention_mask": mask[:, :4]})
        buffers = {n: v.untyped_storage().data_ptr() for n, v in state.values.items()}
        states = [state]
        for t in range(4, 12):
            _, state = session.step({"input_ids": ids[:, t : t + 1], "attention_mask": mask[:, : t + 1]}, state)
            states.append(state)
            # Views of the same preallocated [batch, heads, capacity, head_dim] buffers: no concat, no growth.
            assert {n: v.untyped_storage().data_ptr() for n, v in state.values.items()} == buffers
            assert state.values["past.0.key"]._base.shape[2] == capacity
        arrays = session.state_to_numpy(state)
        assert arrays["past.0.key"].shape == (2, 4, 12, 16) and state.sizes["past"] == 12  # the manifest's shape
        next_step = {"input_ids": ids[:, :1], "attention_mask": np.ones((2, 13), np.int64)}
        with pytest.raises(InputError, match="not the latest of its batch size"):  # its positions were written over
            session.step({"input_ids": ids[:, :1], "attention_mask": np.ones((2, 12), np.int64)}, states[-2])
        with pytest.raises(InputError, match="not the latest"):
            session.state_to_numpy(states[0])
        with trtformer.load(gpt2_artifact, backend="torch", static_cache=True) as other:
            with pytest.raises(InputError, match="another session|not come from this session"):
                other.step(next_step, state)
            # A copy carried over by numpy continues where it left off.
            moved = other.state_from_numpy(arrays)
            want, _ = session.step(next_step, state)
            got, _ = other.step(next_step, moved)
            assert np.array_equal(got["logits"], want["logits"])
        session.new_state(2)  # resets batch size 2's cache
        with pytest.raises(InputError, match="not the latest"):
            session.step(next_step, state)


def test_static_cache_and_cuda_graphs_are_refused_where_they_cannot_work(preset_artifact, gpt2_artifact):
    with pytest.raises(BackendError, match="no static KV cache path|static KV cache is for decoder graphs"):
        trtformer.load(preset_artifact("tiny-bert"), backend="torch", static_cache=True)
    with pytest.raises(BackendError, match="CUDA graphs need a CUDA device"):
        trtformer.load(gpt2_artifact, backend="torch", cuda_graphs=True)
    with pytest.raises(BackendError, match="replays the decode step over the static KV cache"):
        trtformer.load(gpt2_artifact, backend="torch", cuda_graphs=True, static_cache=False)


# --- the compiled path ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpp_compiler():
    from trtformer.runtime.backends.compiled import require_cpp_compiler

    try:
        return require_cpp_compiler()
    except BackendError as exc:
        pytest.skip(f"Inductor has no C++ compiler on this machine: {exc}")


def test_the_compiled_backends_are_registered_and_on_the_command_line(preset_artifact, capsys):
    assert {"torch-compile", "torch-cuda-compile"} <= set(backends.names())
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: the refusal below is for machines without one")
    assert main(["parity", str(preset_artifact("tiny-bert")), "--backend", "torch-cuda-compile"]) == 2
    assert "torch-cuda-compile needs a CUDA GPU" in capsys.readouterr().err


def test_a_missing_cpp_compiler_is_a_clear_error(preset_artifact):
    import torch._inductor.config as inductor

    with inductor.patch({"cpp.cxx": ("no-such-c++-compiler",)}), \
            pytest.raises(BackendError, match="needs a C\\+\\+ compiler for Inductor"):  # fmt: skip
        trtformer.load(preset_artifact("tiny-bert"), backend="torch-compile")


@pytest.mark.slow  # Inductor compiles C++ kernels: 15-30 s a graph on a shared 2-core machine
# Graphs compiled: the encoders one for both shapes; the Transformer-XL stream one for the empty memory, one after.
@pytest.mark.parametrize(("family", "expected"), [("bert", 1), ("longformer", 1), ("transfo_xl", 2)])
def test_compiled_encoder_and_stream_parity_without_recompiles(preset_artifact, cpp_compiler, family, expected):
    tol = TOLERANCES["fp32"]
    with trtformer.load(preset_artifact(PRESETS[family]), backend="torch-compile") as session, \
            trtformer.load(session.artifact, backend="torch") as ref:  # fmt: skip
        rng = np.random.default_rng(0)
        if session.has_state:  # Transformer-XL: the first segment (empty memory) and two more
            comparisons = segment_cases(session, ref, tol, rng, 3)
        else:  # two shapes, neither with a dim of 1 (torch specialises those): one graph for both
            comparisons = []
            for batch, seq in ((3, 9), (2, 20)):
                feeds = padded_feeds(session, batch, seq, True, rng)
                comparisons += compare_outputs(session, f"b{batch} s{seq}", session.run(feeds), ref.run(feeds), tol,
                                               feeds["attention_mask"])  # fmt: skip
        assert comparisons and not failures(comparisons), failures(comparisons)
        assert session.backend.compiles == expected


@pytest.mark.slow  # Inductor compiles C++ kernels: 15-30 s a graph on a shared 2-core machine
@pytest.mark.parametrize("static_cache", [False, True], ids=["dynamic", "static-cache"])
def test_compiled_gpt_decode_compiles_prefill_and_step_once(preset_artifact, cpp_compiler, static_cache):
    with trtformer.load(preset_artifact("tiny-gpt2"), backend="torch-compile", static_cache=static_cache) as session, \
            trtformer.load(session.artifact, backend="torch") as ref:  # fmt: skip
        comparisons = decode_cases(session, ref, TOLERANCES["fp32"], np.random.default_rng(0), 8)
        assert comparisons and not failures(comparisons), failures(comparisons)
        # The prefill and the one-token step: 8 steps over a growing (or fixed-capacity) cache compile nothing more.
        assert session.backend.compiles == 2


@pytest.mark.slow  # Inductor compiles C++ kernels: 15-30 s a graph on a shared 2-core machine
@pytest.mark.parametrize("family", ["bart", "t5"])
def test_compiled_encoder_decoder_parity(preset_artifact, cpp_compiler, family):
    """The encoder once, then the decoder from two target tokens and three one-token steps (no dim of 0 or 1 but the
    step's length, so: encoder 1 graph, decoder 2), each step's logits against the reference's whole target."""
    tol = TOLERANCES["fp32"]
    with Seq2Seq.open(preset_artifact(PRESETS[family]), "torch-compile") as model, \
            Seq2Seq.open(model.artifact, "torch") as ref:  # fmt: skip
        rng = np.random.default_rng(0)
        source = padded_feeds(model.encoder, 2, 9, True, rng)
        target = rng.integers(0, model.config["vocab_size"], (2, 5)).astype(np.int64)
        encoded = model.encode(source[model.source_ids], source[model.source_mask])
        logits, state = model.step(target[:, :2], encoded)
        got = [logits]
        for t in range(2, 5):
            logits, state = model.step(target[:, t : t + 1], encoded, state)
            got.append(logits)
        want, _ = ref.step(target, ref.encode(source[ref.source_ids], source[ref.source_mask]))
        comparison = compare("decode", "logits", np.concatenate(got, axis=1), want, tol)
        assert comparison.passed, comparison
        assert (model.encoder.backend.compiles, model.decoder.backend.compiles) == (1, 2)


# --- GPU --------------------------------------------------------------------------------------------------------


def needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("triton", reason="Triton is not installed (pip install 'trtformer[triton]')")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch-cuda", "torch-cuda-triton", "torch-cuda-compile"])
@pytest.mark.parametrize("family", PRESETS)
def test_gpu_backends_run_the_artifact_precision(preset_artifact, family, backend):
    needs_cuda()
    path = preset_artifact(PRESETS[family], precision="fp16")
    report = check_parity(path, backend=backend, write=False)
    assert report.precision == "fp16" and report.passed, report.table()
    with trtformer.load(path, backend=backend, graph="decoder" if family in ("bart", "t5") else None) as session:
        assert session.backend.precision == "fp16"


@pytest.mark.gpu
def test_gpu_cuda_graph_decode_captures_once_per_batch_size(preset_artifact, gpt2_artifact):
    needs_cuda()
    path = preset_artifact("tiny-gpt2", precision="fp16")
    with trtformer.load(path, backend="torch-cuda-compile") as graphed, \
            trtformer.load(path, backend="torch-cuda", static_cache=True) as eager:  # fmt: skip
        static = graphed.backend.static
        assert static is not None and static.cuda_graphs  # the compiled CUDA backend's default for GPT
        for prompts in ([[5, 9, 2, 7, 1]], [[5, 9, 2], [3, 8], [1, 1, 4, 6]], [[7, 7]]):
            want, got = generate(eager, prompts, max_new_tokens=16), generate(graphed, prompts, max_new_tokens=16)
            assert got.tokens == want.tokens
        assert sorted(static.captured) == [1, 3]  # batch 1 captured once, replayed for the third request too
    report = check_parity(path, backend="torch-cuda-compile", write=False, decode_steps=24)
    assert report.passed, report.table()
    with trtformer.load(gpt2_artifact, backend="torch-cuda", cuda_graphs=True) as fp32:  # eager model, graphed step
        with trtformer.load(gpt2_artifact, backend="torch") as ref:
            assert generate(fp32, [[5, 9, 2]], max_new_tokens=16).tokens == generate(ref, [[5, 9, 2]], max_new_tokens=16).tokens
