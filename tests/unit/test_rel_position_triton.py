"""The Triton implementation of trtformer::rel_position_attention against the eager op.

CPU: the kernels run under TRITON_INTERPRET=1 in one subprocess, this file run as a script. Triton reads the
variable when `@triton.jit` decorates a kernel, i.e. when the module is first imported, so setting it inside the
pytest process would be too late if any test imported the kernels first, and could not be undone for the tests
that come after. The subprocess computes every case once and prints JSON; the tests below check its numbers.
GPU (`gpu` marker): real sizes, and the CUDA dispatch of the custom op.
"""

from __future__ import annotations

import concurrent.futures
import json
import math

import pytest
import torch
from support import has_cuda_kernel, kernel_error, run_interpreted
from test_rel_position_op import BATCH, D_HEAD, N_HEAD, attrs, make_inputs

from trtformer.ops import dispatch
from trtformer.ops.rel_position import OP, reference, rel_position_attention
from trtformer.plugins import registry  # imports no Triton: the kernels' module is loaded by the tests that run them

F16 = torch.float16
# name: (qlen, mlen, dtype, sizes, attributes). The interpreter uses 16 x 16 tiles, so 17+ rows cross block edges.
CASES = {
    "mlen-0": (5, 0, torch.float32, {}, attrs()),
    "memory": (4, 3, torch.float32, {}, attrs()),  # mem_len 5 < klen 7
    "qlen-1": (1, 6, torch.float32, {}, attrs(mem_len=4)),
    "multi-block-batch-3": (20, 13, torch.float32, {"batch": 3}, attrs(mem_len=16)),
    "same-length": (18, 18, torch.float32, {}, attrs(mem_len=7, same_length=True)),  # skips whole key blocks
    "same-length-mem-len-0": (3, 2, torch.float32, {}, attrs(mem_len=0, same_length=True)),  # every key masked
    "clamp-len": (6, 9, torch.float32, {}, attrs(clamp_len=3)),
    "mem-len-beyond-klen": (3, 2, torch.float32, {}, attrs(mem_len=40)),
    "pre-lnorm-all": (17, 4, torch.float32, {}, attrs(mem_len=6, same_length=True, clamp_len=5, pre_lnorm=True)),
    "d-head-12": (6, 5, torch.float32, {"n_head": 3, "d_head": 12, "d_model": 20}, attrs(clamp_len=4)),
    "d-head-80": (3, 2, torch.float32, {"n_head": 1, "d_head": 80, "d_model": 32}, attrs()),
    "fp16-mlen-0": (5, 0, F16, {}, attrs()),
    "fp16-memory-same-length": (18, 5, F16, {}, attrs(mem_len=9, same_length=True, clamp_len=6)),
    "fp16-pre-lnorm-d-head-12": (4, 3, F16, {"n_head": 2, "d_head": 12, "d_model": 16}, attrs(pre_lnorm=True)),
    # for the GPU's configs (interpreted, each config of the space): tails, block skipping, clamped distances
    "cuda-tiles": (70, 60, torch.float32, {}, attrs(mem_len=100, same_length=True, clamp_len=40)),
    "cuda-tiles-fp16": (70, 60, F16, {}, attrs(mem_len=100, same_length=True, clamp_len=40)),
    "cuda-tiles-d-head-80": (40, 45, torch.float32, {"n_head": 1, "d_head": 80, "d_model": 32}, attrs(clamp_len=50)),
    "cuda-tiles-fp16-d-head-80": (40, 45, F16, {"n_head": 1, "d_head": 80, "d_model": 32}, attrs(clamp_len=50)),
}
GPU_CASES = {torch.float32: ["cuda-tiles", "cuda-tiles-d-head-80"], F16: ["cuda-tiles-fp16", "cuda-tiles-fp16-d-head-80"]}  # fmt: skip
TOLERANCE = {torch.float32: 1e-5, F16: 1e-2}  # relative to the output's largest magnitude, if above 1


def case(name: str) -> tuple[dict, dict]:
    qlen, mlen, dtype, sizes, a = CASES[name]
    heads = {k: sizes[k] for k in ("n_head", "d_head") if k in sizes}
    return make_inputs(qlen, mlen, dtype, **sizes), {**a, **heads}


def space(module) -> dict:
    """Every config of the CUDA config spaces: name -> (dtype, config)."""
    spaces = {torch.float32: module.CONFIGS_32, F16: module.CONFIGS_16}
    return {f"{str(dtype)[6:]}-d{d}-{'-'.join(map(str, c))}": (dtype, d, c)
            for dtype, by_d in spaces.items() for d, configs in by_d.items() for c in configs}  # fmt: skip


def compare(module, name: str) -> dict:
    x, a = case(name)
    out, new_mem = module.rel_position_attention_triton(**x, **a)
    want, want_mem = reference(**x, **a)
    shapes = [list(t.shape) for t in (out, new_mem, want, want_mem)]
    return {**kernel_error(out, want), "new_mem_equal": torch.equal(new_mem, want_mem), "shapes": shapes}


def splits(module, name: str) -> int:
    """The split count attention_core takes for a case (on CPU tensors: the interpreter's stand-in SM count)."""
    qlen, mlen, dtype, sizes, _ = CASES[name]
    config = module.configs(sizes.get("d_head", D_HEAD), dtype, torch.device("cpu"))[0]
    bh = sizes.get("batch", BATCH) * sizes.get("n_head", N_HEAD)
    return module._splits(config, qlen, qlen + mlen, bh, torch.device("cpu"))


def interpreter_run() -> dict:
    """Every case through the Triton implementation and the eager op (this process has TRITON_INTERPRET=1): with the
    interpreter's config, again with split-K forced (a stand-in SM count that the small grids do not fill, one key tile
    per share, so shares hold no allowed key for some rows, or none at all), and with each config of the CUDA spaces
    (split where the config splits) on the cases that cross their tiles."""
    module = registry.PLUGINS["RelPositionAttention"].load_triton()
    results = {name: compare(module, name) for name in CASES}
    module.INTERPRETER_SMS, module.MIN_SPLIT_TILES = 64, 1
    for name in CASES:
        results[f"split/{name}"] = {**compare(module, name), "splits": splits(module, name)}
    configs = module.configs
    for label, (dtype, d, config) in space(module).items():
        module.configs = lambda *_, c=config: [c]
        for name in GPU_CASES[dtype]:
            if (CASES[name][3].get("d_head", D_HEAD) <= 64) == (d == 64):  # the space the case's d_head picks
                results[f"config/{label}/{name}"] = {**compare(module, name), "splits": splits(module, name)}
    module.configs = configs
    x, a = case("memory")  # after the import: the op on CPU tensors still runs the eager reference
    results["cpu_dispatch_is_reference"] = all(map(torch.equal, rel_position_attention(**x, **a), reference(**x, **a)))
    results["cuda_kernel_registered"] = has_cuda_kernel("trtformer::rel_position_attention")
    results["cuda_route"] = route_choices(dispatch.route(OP), lambda f: f(**x, **a),
                                          reference(**x, **a), module.rel_position_attention_triton(**x, **a))  # fmt: skip
    return results


def route_choices(route, call, reference_out, triton_out) -> dict:
    """Which implementation the op's registered CUDA kernel runs (called directly, on CPU tensors): before, inside
    and after `triton_kernels()`, and in another thread while this one is inside."""

    def which():
        out = call(route)
        outs = out if isinstance(out, tuple) else (out,)
        same = lambda want: all(map(torch.equal, outs, want if isinstance(want, tuple) else (want,)))  # noqa: E731
        return "triton" if same(triton_out) else "reference" if same(reference_out) else "neither"

    seen = {"before": which()}
    with registry.triton_kernels():
        seen["inside"] = which()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            seen["other_thread"] = pool.submit(which).result()
    seen["after"] = which()
    return seen


@pytest.fixture(scope="module")
def interpreted() -> dict:
    return run_interpreted(__file__)


@pytest.mark.parametrize("name", CASES)
def test_interpreted_kernel_matches_eager_op(interpreted, name):
    check(interpreted[name], CASES[name][2])


def check(r: dict, dtype: torch.dtype) -> None:
    assert r["dtype"] == str(dtype) and r["shapes"][:2] == r["shapes"][2:]
    assert r["max_abs"] <= TOLERANCE[dtype] * max(1.0, r["scale"]), r["max_abs"]  # pre_lnorm outputs are not ~1
    assert r["new_mem_equal"]  # the memory copy is bit for bit


@pytest.mark.parametrize("name", CASES)
def test_interpreted_split_k_matches_eager_op(interpreted, name):
    """Split-K forced: each share's partial (m, l, acc) merged by the combine kernel gives the unsplit result, with
    shares that are empty or hold only masked keys for some rows, and with every key masked (same_length, mem_len 0)."""
    r = interpreted[f"split/{name}"]
    check(r, CASES[name][2])
    qlen, mlen = CASES[name][:2]
    assert r["splits"] > 1 or qlen + mlen <= 16  # a single key tile cannot be split


def test_every_cuda_config_matches_eager_op_interpreted(interpreted):
    """No config the tuner could pick on a GPU is wrong: each, split where it splits, across its block edges."""
    from trtformer.plugins.rel_position import triton as module

    ran = {k.split("/")[1] for k in interpreted if k.startswith("config/")}
    assert ran == set(space(module)), set(space(module)) - ran
    for key, r in interpreted.items():
        if key.startswith("config/"):
            check(r, CASES[key.split("/")[2]][2])
    assert any(r["splits"] > 1 for k, r in interpreted.items() if k.startswith("config/"))


def test_cuda_kernel_registered_and_cpu_keeps_reference(interpreted):
    assert interpreted["cuda_kernel_registered"] and interpreted["cpu_dispatch_is_reference"]


def test_the_cuda_kernel_runs_triton_only_inside_triton_kernels(interpreted):
    assert interpreted["cuda_route"] == {"before": "reference", "inside": "triton", "other_thread": "reference",
                                         "after": "reference"}  # fmt: skip


# ---------------------------------------------------------------------------------------------- scoped dispatch


@pytest.fixture(scope="module")
def toy_op():
    """A custom op of the tests' own namespace (the real ops' routes stay untouched): x * 2, accelerated as x * 3."""
    op = torch.library.custom_op("trtformer_tests::double", lambda x: x * 2, mutates_args=(), schema="(Tensor x) -> Tensor")
    op.register_fake(lambda x: torch.empty_like(x))
    overload = torch.ops.trtformer_tests.double.default
    return overload, dispatch.provide(overload, lambda x: x * 3, lambda x: x * 2)


def test_dispatch_routes_to_the_accelerated_kernel_only_in_the_context(toy_op):
    op, route = toy_op
    x = torch.ones(2)
    assert has_cuda_kernel("trtformer_tests::double") and dispatch.route(op) is route
    assert not dispatch.enabled() and route(x).tolist() == [2, 2]
    with dispatch.accelerated():
        assert dispatch.enabled() and route(x).tolist() == [3, 3]
        with dispatch.accelerated(False):  # nested: switched off for the inner block only
            assert route(x).tolist() == [2, 2]
        assert route(x).tolist() == [3, 3]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a thread starts outside every context
            assert pool.submit(lambda: route(x).tolist()).result() == [2, 2]
        assert op(x).tolist() == [2, 2]  # CPU tensors never reach the CUDA kernel
    assert not dispatch.enabled() and route(x).tolist() == [2, 2]


def test_providing_again_replaces_the_kernel_not_the_registration(toy_op):
    op, route = toy_op
    try:
        assert dispatch.provide(op, lambda x: x * 4, lambda x: x * 2) is route
        with dispatch.accelerated():
            assert route(torch.ones(1)).tolist() == [4]
    finally:
        dispatch.provide(op, lambda x: x * 3, lambda x: x * 2)


def test_an_exception_inside_the_context_still_switches_it_off(toy_op):
    _, route = toy_op
    with pytest.raises(RuntimeError), dispatch.accelerated():
        raise RuntimeError
    assert route(torch.ones(1)).tolist() == [2]


def test_tuner_times_each_config_once_per_bucket_and_never_while_capturing(monkeypatch):
    """The first call at a bucket times every config and keeps the fastest; later calls at the bucket reuse it; a
    bucket first met inside a CUDA graph capture runs the default untimed and stays untuned (timing synchronises)."""
    pytest.importorskip("triton", reason="Triton is not installed (pip install 'trtformer[triton]')")
    from trtformer.plugins.rel_position import triton as module

    timed, capturing = [], [False]
    monkeypatch.setattr(module.triton.testing, "do_bench", lambda fn, **_: fn() or timed[-1][1])
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    tuner, space = module.Tuner(), ["default", "fast", "slow"]
    launch = lambda c: timed.append((c, {"default": 2.0, "fast": 1.0, "slow": 3.0}[c]))  # noqa: E731
    capturing[0] = True
    assert tuner.pick(("a",), space, launch) == "default" and timed == [] and tuner.best == {}
    capturing[0] = False
    assert tuner.pick(("a",), space, launch) == "fast" and [c for c, _ in timed] == space
    assert tuner.pick(("a",), space, launch) == "fast" and len(timed) == 3  # tuned: no more timing
    capturing[0] = True
    assert tuner.pick(("a",), space, launch) == "fast"  # a tuned bucket is captured with its pick
    # Transformer-XL's memory grows every segment: memories 0 .. 1600 over a 128-query segment fall in 5 buckets
    assert len({module.bucket(128, 128 + m) for m in range(0, 1601, 16)}) == 5  # 128, 256, 512, 1024, 2048 keys


def compile_sm90(kernel, consts: dict, types: dict, options: dict, divisible: tuple[str, ...] = ()):
    """`kernel` compiled ahead of time for sm_90 (no GPU needed): lowering errors surface, and the metadata and cubin
    say what a launch would need. `types` maps argument names to Triton types; the other arguments are i32. Pointers
    and the `divisible` integers get the hint a launch gives 16-aligned pointers and multiples of 16 (head size 64,
    strides), on which vector loads depend."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {n: "constexpr" if n in consts else types.get(n, "i32") for n in kernel.arg_names}
    hinted = [i for i, n in enumerate(kernel.arg_names) if sig[n].startswith("*") or n in divisible]
    source = ASTSource(kernel, sig, constexprs={(kernel.arg_names.index(k),): v for k, v in consts.items()},
                       attrs={(i,): [["tt.divisibility", 16]] for i in hinted})  # fmt: skip
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


# The integer arguments a launch at the GPU sizes (d_head 64 or 128, heads * d_head 512 or more) hints as multiples of 16
DIVISIBLE = ("q_row", "kv_row", "o_row", "batch_stride_q", "batch_stride_kv", "hd", "d_head")


def spilled_bytes(compiled) -> int | None:
    """Bytes of stack a thread of the compiled kernel uses (register spills), read from its cubin by the cuobjdump
    Triton ships; None where that tool is missing."""
    import re
    import subprocess
    import tempfile
    from pathlib import Path

    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"STACK:(\d+)", usage).group(1))


@pytest.mark.parametrize("d_head", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, F16], ids=["fp32", "fp16"])
def test_every_config_compiles_for_sm90_within_shared_memory_without_spills(dtype, d_head):
    """Ahead of time, no GPU: every config of the space the tuner times on CUDA lowers to sm_90 code (tl.gather
    included), split and unsplit, fits the 99 KB of shared memory of the smallest GPUs in view, and keeps its state in
    registers (spills to local memory made the old 64 x 64 16-bit default slow); the combine kernel too."""
    triton = pytest.importorskip("triton", reason="Triton is not installed (pip install 'trtformer[triton]')")
    from trtformer.plugins.rel_position import triton as module

    ptr = "*fp32" if dtype == torch.float32 else "*fp16"
    types = {"ML": "*fp32", "Acc": "*fp32", "qk_scale": "fp32"} | {n: ptr for n in ("Q", "KV", "P", "U", "VB", "Out")}
    block_d = max(16, triton.next_power_of_2(d_head))
    for config in module.configs(d_head, dtype, torch.device("cuda")):
        for split in sorted({False, config.fill > 0}):
            consts = {"BLOCK_M": config.block_m, "BLOCK_N": config.block_n, "BLOCK_D": block_d, "SPLIT": split,
                      "BAND": triton.next_power_of_2(config.block_m + config.block_n - 1),
                      "PRECISION": "ieee" if dtype == torch.float32 else "tf32"}  # fmt: skip
            options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
            compiled = compile_sm90(module._attention_kernel, consts, types, options, DIVISIBLE)
            assert compiled.metadata.shared <= 99 * 1024, (config, compiled.metadata.shared)
            assert spilled_bytes(compiled) in (0, None), (config, split, spilled_bytes(compiled))
    for gather in (False, True):
        combine = compile_sm90(module._combine_kernel, {"BLOCK_M": module.COMBINE_ROWS, "BLOCK_D": block_d,
                               "GATHER": gather}, {"ML": "*fp32", "Acc": "*fp32", "Out": ptr, "Pos": "*i32",
                               "Count": "*i32"}, {"num_warps": 4}, ("s_h", "s_row", "d_head"))  # fmt: skip
        assert combine.metadata.shared <= 99 * 1024 and spilled_bytes(combine) in (0, None)


# ---------------------------------------------------------------------------------------------- GPU

REAL = [  # (qlen, mlen, d_model, n_head, d_head, batch, attributes)
    (128, 128, 512, 8, 64, 4, attrs(mem_len=128)),
    (128, 640, 512, 8, 64, 2, attrs(mem_len=640, same_length=True, clamp_len=400)),
    (128, 1600, 1024, 16, 64, 2, attrs(mem_len=1600, clamp_len=1000)),
    (128, 1600, 1024, 8, 128, 1, attrs(mem_len=1000, same_length=True, pre_lnorm=True)),
    (77, 0, 512, 8, 64, 3, attrs(mem_len=64)),
]


def cuda_inputs(qlen, mlen, d_model, n_head, d_head, batch, dtype) -> dict:
    """make_inputs on the GPU, projections scaled by 1 / sqrt(fan in) as a trained model's roughly are."""
    x = make_inputs(qlen, mlen, torch.float32, n_head=n_head, d_head=d_head, d_model=d_model, batch=batch)
    for k in ("qkv_weight", "r_weight", "o_weight"):
        x[k] = x[k] * (2.0 / math.sqrt(x[k].shape[1]))
    return {k: (v if k.startswith("ln_") else v.to(dtype)).cuda() for k, v in x.items()}


def needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("triton", reason="Triton is not installed (pip install 'trtformer[triton]')")
    return registry.PLUGINS["RelPositionAttention"].load_triton()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, F16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", REAL, ids=lambda s: f"q{s[0]}-m{s[1]}-d{s[2]}-h{s[3]}x{s[4]}-b{s[5]}")
def test_gpu_real_sizes(shape, dtype):
    module = needs_cuda()
    *sizes, a = shape
    x = cuda_inputs(*sizes, dtype)
    a = {**a, "n_head": sizes[3], "d_head": sizes[4]}
    out, new_mem = module.rel_position_attention_triton(**x, **a)
    want, want_mem = reference(**x, **a)  # the eager body itself: the op would dispatch to Triton on CUDA
    scale = max(1.0, want.float().abs().max().item())  # relative, as in the interpreter cases; klen up to 1728
    assert (out.float() - want.float()).abs().max().item() <= {torch.float32: 1e-4, F16: 2e-2}[dtype] * scale
    assert torch.equal(new_mem, want_mem)


@pytest.mark.gpu
def test_gpu_custom_op_dispatches_to_triton(monkeypatch):
    module = needs_cuda()
    calls = []
    core = module.attention_core
    monkeypatch.setattr(module, "attention_core", lambda *args, **kw: calls.append(args[0].device) or core(*args, **kw))
    x, a = make_inputs(9, 4), attrs()
    rel_position_attention(**x, **a)  # CPU: the reference, no Triton
    on_gpu = {k: v.cuda() for k, v in x.items()}
    rel_position_attention(**on_gpu, **a)  # CUDA outside triton_kernels(): the reference too
    assert calls == []
    with registry.triton_kernels():
        got = rel_position_attention(**on_gpu, **a)
    assert [d.type for d in calls] == ["cuda"]
    assert all((g.cpu() - w).abs().max() <= 1e-5 for g, w in zip(got, reference(**x, **a), strict=True))


if __name__ == "__main__":  # the interpreter run, in the subprocess the fixture starts
    torch.set_num_threads(1)  # the machine is shared; the sizes are tiny
    print(json.dumps(interpreter_run()))
