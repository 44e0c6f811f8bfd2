"""The tensorrt and torch-cuda backends. On CPU: the buffer bookkeeping (dtype map, addresses, shape keys, profile
check, ping-pong slots, graph cache) on CPU tensors, the registry, the lazy import, and the errors when an engine or
CUDA is missing. Under the gpu and trt markers: engine parity for every family, GPT decode with the state on the
device, and Transformer-XL streams with and without CUDA graphs; these have not run yet (no GPU here)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support import manifest

import trtformer
from trtformer.artifact.dtypes import DTYPES
from trtformer.errors import BackendError, EngineError, InputError
from trtformer.runtime import backends
from trtformer.runtime.backends.base import State
from trtformer.runtime.backends.buffers import (
    GraphCache,
    PingPong,
    SlotState,
    address,
    profile_problems,
    shape_key,
    to_numpy,
    torch_dtype,
)

FAMILY_PRESETS = ["tiny-gpt2", "tiny-bert", "tiny-longformer", "tiny-transfo-xl"]


# ---------------------------------------------------------------------------------------------- plain functions


def test_dtype_map_covers_what_the_exporter_writes_and_names_what_it_cannot_bind():
    assert torch_dtype("FLOAT") is torch.float32 and torch_dtype("HALF") is torch.float16
    assert torch_dtype("BF16") is torch.bfloat16 and torch_dtype("INT64") is torch.int64 and torch_dtype("BOOL") is torch.bool
    with pytest.raises(BackendError, match="FP8"):
        torch_dtype("FP8")


def test_dtype_map_uses_tensorrt_member_names():
    trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed")
    assert {d.trt for d in DTYPES.values()} <= set(trt.DataType.__members__)


def test_bf16_comes_back_as_fp32_numpy():
    out = to_numpy(torch.tensor([1.5, -2.0], dtype=torch.bfloat16))
    assert out.dtype == np.float32 and out.tolist() == [1.5, -2.0]


def test_an_empty_tensor_binds_the_placeholder():
    placeholder, full = torch.empty(8, dtype=torch.uint8), torch.ones(2, 3)
    empty = torch.empty(2, 4, 0, 16)  # a first step's past
    assert empty.data_ptr() == 0 and address(empty, placeholder) == placeholder.data_ptr()
    assert address(full, placeholder) == full.data_ptr()


def test_shape_key_ignores_order_and_tells_shapes_apart():
    a = shape_key({"input_ids": (1, 8), "mems.0": torch.Size([16, 1, 64])})
    assert a == shape_key({"mems.0": (16, 1, 64), "input_ids": [1, 8]})
    assert a != shape_key({"input_ids": (1, 8), "mems.0": (8, 1, 64)})
    assert hash(a) == hash(shape_key({"mems.0": (16, 1, 64), "input_ids": (1, 8)}))


def test_profile_problems_name_the_input_axis_and_range():
    profile = {"input_ids": {"min": [1, 1], "opt": [1, 64], "max": [8, 128]}, "past.0.key": {"min": [1, 4, 0, 16], "max": [8, 4, 127, 16]}}
    assert profile_problems(profile, {"input_ids": (4, 128), "past.0.key": (4, 4, 0, 16), "unknown": (3,)}) == []
    problems = profile_problems(profile, {"input_ids": (9, 129)})
    assert problems == ["input_ids axis 0 is 9, outside the engine's 1..8", "input_ids axis 1 is 129, outside the engine's 1..128"]


# ---------------------------------------------------------------------------------------------- ping-pong slots


def spec(*shape, dtype=torch.float32):
    return {"mems.0": (shape, dtype), "mems.1": (shape, dtype)}


def fake_step(pool: PingPong, state: State, shape) -> SlotState:
    """What the backend does around an enqueue: claim the other slot, write it from the inputs, wrap it as a State."""
    source = pool.slot_of(state)
    target = pool.target(source)
    views = pool.claim(target, spec(*shape))
    for name, view in views.items():
        assert all(view.data_ptr() != v.data_ptr() for v in state.values.values() if v.numel())  # never alias an input
        view.fill_((state.values[name].sum() if state.values[name].numel() else 0) + 1)
    return pool.state(target, views, {"mem": shape[0]}, "tensorrt")


def test_steps_alternate_slots_and_outputs_never_alias_inputs():
    pool = PingPong("cpu")
    state = State({"mems.0": torch.zeros(0, 1, 4), "mems.1": torch.zeros(0, 1, 4)}, {"mem": 0}, "tensorrt")
    assert pool.slot_of(state) is None and pool.target(None) == 0
    slots = []
    for _ in range(6):
        state = fake_step(pool, state, (3, 1, 4))
        slots.append(state.slot)
    assert slots == [0, 1, 0, 1, 0, 1]
    assert state.values["mems.0"].data_ptr() == pool.buffers[1]["mems.0"].data_ptr()  # views start at the buffer


def test_fixed_shapes_keep_fixed_addresses_and_growth_moves_the_epoch():
    pool = PingPong("cpu")
    first = pool.claim(0, spec(2, 1, 4))
    epoch, ptr = pool.epoch, first["mems.0"].data_ptr()
    again = pool.claim(0, spec(2, 1, 4))
    smaller = pool.claim(0, spec(1, 1, 4))
    assert pool.epoch == epoch and again["mems.0"].data_ptr() == smaller["mems.0"].data_ptr() == ptr
    pool.claim(0, spec(3, 1, 4))  # 12 elements > 8: doubled to 16
    assert pool.epoch == epoch + 2 and pool.buffers[0]["mems.0"].numel() == 16
    pool.claim(0, spec(4, 1, 4))  # fits the doubled buffer
    assert pool.epoch == epoch + 2
    pool.claim(0, spec(4, 1, 4, dtype=torch.float16))  # another dtype: new buffers
    assert pool.epoch == epoch + 4 and pool.buffers[0]["mems.0"].dtype == torch.float16
    empty = pool.claim(1, spec(0, 1, 4))
    assert empty["mems.0"].shape == (0, 1, 4) and pool.buffers[1]["mems.0"].numel() == 1


def test_a_state_overwritten_since_is_refused():
    pool = PingPong("cpu")
    start = State({"mems.0": torch.zeros(0, 1, 4), "mems.1": torch.zeros(0, 1, 4)}, {"mem": 0}, "tensorrt")
    a = fake_step(pool, start, (2, 1, 4))  # slot 0
    b = fake_step(pool, a, (2, 1, 4))  # slot 1: a is still intact
    assert pool.slot_of(a) == 0 and pool.slot_of(b) == 1
    c = fake_step(pool, b, (2, 1, 4))  # slot 0 again: a is gone
    with pytest.raises(InputError, match="overwritten by a later step"):
        pool.slot_of(a)
    assert pool.slot_of(c) == 0
    d = fake_step(pool, c, (2, 1, 4))
    fake_step(pool, c, (2, 1, 4))  # a second step from c rewrites slot 1, d's
    with pytest.raises(InputError, match="overwritten") as err:
        fake_step(pool, d, (2, 1, 4))
    assert "step from the latest state" in err.value.hint


def test_a_state_from_another_pool_or_from_numpy_is_outside():
    mine, other = PingPong("cpu"), PingPong("cpu")
    views = other.claim(0, spec(1, 1, 4))
    assert mine.slot_of(other.state(0, views, {}, "tensorrt")) is None
    assert mine.slot_of(State({"mems.0": torch.zeros(1, 1, 4)}, {}, "tensorrt")) is None


# ---------------------------------------------------------------------------------------------- graph cache


def test_graphs_are_captured_on_the_second_sighting_and_replayed_after():
    cache = GraphCache(capacity=2)
    key = (shape_key({"input_ids": (1, 8)}), 0)
    assert cache.get(key, 0) is None and not cache.sighted(key)
    assert cache.get(key, 0) is None and cache.sighted(key)
    cache.add(key, "graph")
    assert cache.get(key, 0) == "graph"
    assert cache.get(key, 1) is None and not cache.graphs  # the buffers moved: every graph is dropped


def test_a_growing_decode_never_captures_and_the_counts_stay_bounded():
    cache = GraphCache(capacity=2)
    captures = [cache.sighted((shape_key({"past.0.key": (1, 4, past, 16)}), past % 2)) for past in range(100)]
    assert not any(captures) and len(cache.seen) == 8


def test_graph_cache_drops_the_least_recently_used_and_refused_keys_stay_eager():
    cache = GraphCache(capacity=2)
    for key in "abc":
        cache.add(key, key.upper())
        cache.get("a", 0)  # keep a fresh
    assert list(cache.graphs) == ["c", "a"]  # b, the least recently used, went
    cache.refuse("d")
    assert not cache.sighted("d") and not cache.sighted("d")
    with pytest.raises(BackendError, match="capacity"):
        GraphCache(capacity=0)


def test_a_transformer_xl_stream_settles_on_two_graphs():
    """The bookkeeping of a stream whose memory fills and then slides: the two parities of the steady shape each get
    one graph (captured at their second sighting), and the buffers stop moving once the memory is full."""
    pool, cache = PingPong("cpu"), GraphCache()
    state = State({"mems.0": torch.zeros(0, 1, 4), "mems.1": torch.zeros(0, 1, 4)}, {"mem": 0}, "tensorrt")
    mem_len, seg, replays, epochs = 16, 8, 0, []
    for _ in range(12):
        source = pool.slot_of(state)
        key = (shape_key({"input_ids": (1, seg), "mems.0": state.values["mems.0"].shape}), source)
        state = fake_step(pool, state, (min(mem_len, state.sizes["mem"] + seg), 1, 4))
        epochs.append(pool.epoch)
        if cache.get(key, pool.epoch) is not None:
            replays += 1
        elif source is not None and cache.sighted(key):
            cache.add(key, "graph")
    assert len(cache.graphs) == 2 and replays == 12 - 6 and len(set(epochs[3:])) == 1


# ---------------------------------------------------------------------------------------------- registry and errors


def test_registry_lists_the_gpu_backends():
    assert {"torch", "torch-cuda", "torch-cuda-triton", "ort-cuda", "tensorrt"} <= set(backends.names())


def test_importing_the_backend_imports_no_tensorrt_and_leaves_cuda_alone():
    code = ("import sys, torch\n"
            "import trtformer.runtime.backends.tensorrt, trtformer.runtime.backends.torch\n"
            "print(sorted(m for m in ('tensorrt', 'tensorrt_rtx') if m in sys.modules), torch.cuda.is_initialized())")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "False"]


def test_the_backend_imports_no_builder():
    """The backend shares trtformer.trt with the builder and reads engines through engines.loader only."""
    code = ("import sys, trtformer.runtime.backends.tensorrt\n"
            "print(sorted(m for m in sys.modules if m == 'trtformer.engines.build'))")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == ["[]"]


def test_the_runtime_with_the_tensorrt_backend_module_imports_no_torch():
    # A service that embeds the runtime on ONNX Runtime must not load torch; the tensorrt backend does when created.
    code = ("import sys, trtformer.runtime.session, trtformer.runtime.backends.ort, trtformer.runtime.backends.tensorrt\n"
            "print('torch' in sys.modules)")  # fmt: skip
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == ["False"]


def test_tensorrt_without_an_engine_says_to_build_one(gpt2_artifact):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed")
    with pytest.raises(EngineError, match="has no engines") as err:
        trtformer.load(gpt2_artifact, backend="tensorrt")
    assert "trtformer build" in err.value.hint


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_tensorrt_without_cuda_names_the_gpu(tmp_path, gpt2_artifact):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed")
    from trtformer.engines import build_engine

    art = Path(shutil.copytree(gpt2_artifact, tmp_path / "art"))
    build = build_engine(art, flavor="tensorrt-rtx", compute_capability=["8.6"])
    with pytest.raises(BackendError, match=f"runs {build.name} on a CUDA GPU, and torch .* sees none"):
        trtformer.load(art, backend="tensorrt")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("name", ["torch-cuda", "torch-cuda-triton"])
def test_torch_cuda_without_cuda_names_the_gpu(gpt2_artifact, name):
    with pytest.raises(BackendError, match=f"{name} needs a CUDA GPU"):
        trtformer.load(gpt2_artifact, backend=name)


# ---------------------------------------------------------------------------------------------- close


class Held:
    """A stand-in TensorRT object that notes when it is let go."""

    def __init__(self, name: str, log: list):
        self.name, self.log = name, log

    def __del__(self):
        self.log.append(self.name)


def opened_backend(log: list):
    """A TensorRTBackend as __init__ leaves it, with stand-ins for what CUDA and TensorRT would make."""
    from trtformer.runtime.backends.tensorrt import TensorRTBackend

    b = TensorRTBackend.__new__(TensorRTBackend)
    b._closed, b.engine_name = False, "engines/tensorrt-rtx-0123456789abcdef.engine"
    b.stream = type("Stream", (), {"synchronize": lambda self: log.append("synchronize")})()
    for name in ("graphs", "pool", "placeholder", "context", "engine", "runtime"):
        setattr(b, name, Held(name, log))
    return b


def test_close_frees_in_dependency_order_and_later_calls_are_refused():
    log = []
    backend = opened_backend(log)
    with backend as same:
        assert same is backend
    assert log == ["synchronize", "graphs", "pool", "placeholder", "context", "engine", "runtime"]
    backend.close()  # idempotent
    assert len(log) == 7
    calls = [lambda: backend.run({}), lambda: backend.step({}, State({}), [], {}), lambda: backend.empty_state({}, {}, {}),
             lambda: backend.state_from_numpy({}, {}), lambda: backend.state_to_numpy(State({}))]  # fmt: skip
    for call in calls:
        with pytest.raises(BackendError, match="closed"):
            call()


# ---------------------------------------------------------------------------------------------- capture


class Context:
    """An IExecutionContext as far as _capture touches it; `capturable` None: full TensorRT, which has no
    is_stream_capturable (only TensorRT-RTX >= 1.2 does)."""

    def __init__(self, capturable: bool | None):
        self.enqueued = 0
        if capturable is not None:
            self.is_stream_capturable = lambda stream: capturable

    def execute_async_v3(self, stream):
        self.enqueued += 1
        return True


def capturing_backend(context: Context):
    """A backend with a graph cache and CUDA graphs that record nothing (no CUDA here)."""
    import contextlib
    from types import SimpleNamespace

    import trtformer.trt.logger
    from trtformer.runtime.backends.tensorrt import TensorRTBackend

    b = TensorRTBackend.__new__(TensorRTBackend)
    b.engine_name, b.context, b.graphs = "engines/x.engine", context, GraphCache()
    b.stream = SimpleNamespace(cuda_stream=7)
    b.logger = trtformer.trt.logger.make_logger(pytest.importorskip("tensorrt_rtx"))
    b._torch = SimpleNamespace(cuda=SimpleNamespace(CUDAGraph=object, graph=lambda g, stream: contextlib.nullcontext()))
    return b


def test_capture_asks_for_capturability_only_where_tensorrt_can_tell():
    """Full TensorRT's contexts have no is_stream_capturable: the capture is tried (it used to raise AttributeError on
    the second step of a repeated shape). TensorRT-RTX says beforehand, and a refusal leaves the shapes eager."""
    for capturable, captured in ((None, True), (True, True), (False, False)):
        backend = capturing_backend(Context(capturable))
        backend._capture("key", {}, {})
        assert ("key" in backend.graphs.graphs) is captured and backend.context.enqueued == int(captured)
        assert ("key" in backend.graphs.refused) is not captured


def test_one_logger_per_flavor_and_each_call_reads_its_own_errors():
    """TensorRT keeps the first logger it was given while a builder or runtime lives, so every build and backend of a
    flavor shares one; each reads only the errors logged since its mark."""
    trt = pytest.importorskip("tensorrt_rtx")
    from trtformer.trt.logger import make_logger

    logger = make_logger(trt)
    assert make_logger(trt) is logger
    logger.log(trt.ILogger.Severity.ERROR, "an older build's error")
    mark = logger.mark()
    assert logger.last_errors(since=mark) == "no message from TensorRT"
    logger.log(trt.ILogger.Severity.ERROR, "this build's error")
    logger.log(trt.ILogger.Severity.WARNING, "a warning")
    assert logger.last_errors(since=mark) == "this build's error"
    assert logger.last_errors().endswith("an older build's error | this build's error")


# ---------------------------------------------------------------------------------------------- on a GPU


def engine_runtime_missing() -> str | None:
    """Why engines cannot run here, or None."""
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    from trtformer.trt import flavors

    if importlib.util.find_spec("tensorrt") is not None:
        return None
    if importlib.util.find_spec("tensorrt_rtx") is None:
        return "needs TensorRT or TensorRT-RTX"
    kit = flavors.load("tensorrt-rtx")
    if flavors.device_capability() not in flavors.rtx_capabilities(kit.trt):
        return f"needs full TensorRT: TensorRT-RTX does not target compute capability {flavors.device_capability()}"
    return None


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Tiny artifacts of every family with an engine each (built for this GPU), exported on first use."""
    from trtformer.engines import build_engine

    made = {}

    def get(preset: str, form: str = "portable") -> Path:
        if (preset, form) not in made:
            art = trtformer.export(preset, tmp_path_factory.mktemp("engines") / f"{preset}-{form}", form=form)
            build_engine(art, compute_capability=["current"])
            made[(preset, form)] = art
        return made[(preset, form)]

    return get


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("preset", FAMILY_PRESETS)
@pytest.mark.parametrize("backend", ["torch-cuda", "torch-cuda-triton"])
def test_torch_cuda_parity(preset, backend, tmp_path):
    from trtformer.parity import check_parity

    report = check_parity(trtformer.export(preset, tmp_path / preset), backend=backend, write=False)
    assert report.passed, report.table()


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.parametrize("case", ["tiny-gpt2", "tiny-bert", "tiny-longformer", "tiny-longformer:plugin", "tiny-transfo-xl",
                                  "tiny-transfo-xl:plugin"])  # fmt: skip
def test_engine_parity_for_every_family(engines, case):
    if (reason := engine_runtime_missing()) is not None:
        pytest.skip(reason)
    from trtformer.parity import check_parity

    preset, _, form = case.partition(":")
    report = check_parity(engines(preset, form or "portable"), backend="tensorrt", write=False)
    assert report.passed, report.table()


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.parametrize("preset", ["tiny-longformer", "tiny-transfo-xl"])
def test_full_tensorrt_runs_the_plugin_form_with_plugin_layers(engines, preset):
    if importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available():
        pytest.skip("needs full TensorRT and a CUDA GPU")
    plugin, portable = engines(preset, "plugin"), engines(preset, "portable")
    record = next(iter(manifest(plugin)["engines"].values()))
    assert record["flavor"] == "tensorrt" and record["plugins"] == [p["name"] for p in manifest(plugin)["plugins"]]
    # Registered before parsing, the plugins replace each fused op's inlined body: far fewer layers.
    layers = {}
    for name, art in (("plugin", plugin), ("portable", portable)):
        session = trtformer.load(art, backend="tensorrt")
        layers[name] = session.backend.engine.num_layers
    assert layers["plugin"] < layers["portable"], layers


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_gpt_decode_keeps_the_state_on_the_device(engines, cuda_graphs):
    if (reason := engine_runtime_missing()) is not None:
        pytest.skip(reason)
    art = engines("tiny-gpt2")
    trt, ref = trtformer.load(art, backend="tensorrt", cuda_graphs=cuda_graphs), trtformer.load(art, backend="torch")
    ids = np.random.default_rng(0).integers(0, 512, (2, 20))
    state = ref_state = None
    for t in range(5, 21):
        chunk = ids[:, :5] if t == 5 else ids[:, t - 1 : t]
        feeds = {"input_ids": chunk, "attention_mask": np.ones((2, t), np.int64)}
        got, state = trt.step(feeds, state)
        want, ref_state = ref.step(feeds, ref_state)
        assert all(v.is_cuda for v in state.values.values())
        np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-3, rtol=1e-3)
    assert state.sizes["past"] == 20


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_transformer_xl_stream(engines, cuda_graphs):
    if (reason := engine_runtime_missing()) is not None:
        pytest.skip(reason)
    from trtformer.runtime.stream import Stream

    art = engines("tiny-transfo-xl")
    session = trtformer.load(art, backend="tensorrt", cuda_graphs=cuda_graphs)
    ours, ref = Stream(session, batch=2), Stream(trtformer.load(art, backend="torch"), batch=2)
    rng = np.random.default_rng(0)
    kept = None
    for k in range(10):  # mem_len 16, seg 8: full after two segments, then slides
        ids = rng.integers(0, 512, (2, 8))
        np.testing.assert_allclose(ours.feed(ids), ref.feed(ids), atol=1e-3, rtol=1e-3)
        kept = ours.state if k == 3 else kept
    for name, array in ref.memory().items():
        np.testing.assert_allclose(ours.memory()[name], array, atol=1e-3, rtol=1e-3)
    if cuda_graphs:
        assert len(session.backend.graphs.graphs) == 2  # one per ping-pong parity of the steady shape
        with pytest.raises(InputError, match="overwritten"):
            session.step({"input_ids": rng.integers(0, 512, (2, 8))}, kept)
    else:
        session.step({"input_ids": rng.integers(0, 512, (2, 8))}, kept)  # an old state stays valid
