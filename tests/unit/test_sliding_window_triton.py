"""The Triton implementation of trtformer::sliding_window_attention against the eager op.

CPU: the kernels run under TRITON_INTERPRET=1 in one subprocess, this file run as a script (Triton reads the variable
when `@triton.jit` decorates a kernel, see test_rel_position_triton.py). The subprocess computes every case once and
prints JSON; the tests below check its numbers. GPU (`gpu` marker): real sizes, and the CUDA dispatch of the custom op.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from support import has_cuda_kernel, kernel_error, run_interpreted
from test_rel_position_triton import compile_sm90, route_choices, spilled_bytes
from test_sliding_window_op import LargestTensor  # the largest tensor torch makes while active

from trtformer.ops import dispatch
from trtformer.ops.sliding_window import OP, sliding_window_attention, sliding_window_reference
from trtformer.plugins import registry  # imports no Triton: the kernels' module is loaded by the tests that run them

F16 = torch.float16


@dataclasses.dataclass(frozen=True)
class Case:
    batch: int
    seq: int
    window: int
    dilations: tuple[int, ...]  # one per head
    globals_at: tuple[tuple[int, int], ...] = ()  # (row, position)
    lengths: tuple[int, ...] = ()  # real tokens per row (right padding); default all real
    head_dim: int = 8
    dtype: torch.dtype = torch.float32
    transposed: bool = False  # activations as [batch, seq, heads, head_dim] transposed, like split_heads' views
    mask_dtype: torch.dtype = torch.bool
    gpu_tiles: bool = False  # run with every config of the CUDA space of its dtype and head_dim, interpreted

    def inputs(self, seed: int = 0, device: str = "cpu") -> tuple[list[torch.Tensor], dict]:
        """[q, k, v, q_global, k_global, v_global, key_padding_mask, global_mask] and the attributes."""
        g = torch.Generator().manual_seed(seed)
        heads = len(self.dilations)
        shape = [self.batch, heads, self.seq, self.head_dim]
        if self.transposed:  # made as [batch, seq, heads, head_dim], then viewed in the op's layout
            shape[1:3] = shape[2:0:-1]
        acts = [torch.randn(shape, generator=g).to(device, self.dtype) for _ in range(6)]
        acts = [a.transpose(1, 2) for a in acts] if self.transposed else acts
        lengths = torch.tensor(self.lengths or [self.seq] * self.batch)
        real = torch.arange(self.seq)[None, :] < lengths[:, None]  # [batch, seq]
        glob = torch.zeros(self.batch, self.seq, dtype=torch.bool)
        for row, position in self.globals_at:
            glob[row, position] = True
        masks = [m.to(device, self.mask_dtype) for m in (real, glob)]
        attrs = {"window": self.window, "dilations": list(self.dilations), "scale": 1 / math.sqrt(self.head_dim)}
        return [*acts, *masks], attrs


# The interpreter uses 16 x 16 tiles: 17+ queries cross query blocks, a band or 17+ global keys cross key tiles.
CASES = {
    "window-2": Case(1, 9, 2, (1, 1)),
    "window-4-dilations-1231": Case(2, 19, 4, (1, 2, 3, 1), ((0, 0), (1, 9)), (19, 16)),
    "window-8-globals-start-and-middle": Case(2, 40, 8, (1, 2, 1, 3), ((0, 0), (0, 17), (0, 33), (1, 20)), (40, 31)),
    "window-16-multi-block": Case(2, 53, 16, (2, 1), ((1, 0), (1, 1)), (53, 50)),
    "head-dim-12": Case(1, 23, 4, (2, 1, 3), ((0, 5),), head_dim=12),
    "no-globals-padding": Case(2, 21, 8, (1, 1, 2, 2), lengths=(21, 16)),
    "fully-padded-row": Case(3, 17, 4, (1, 2, 1, 1), ((0, 3), (1, 2), (2, 16)), (17, 0, 12)),  # (1, 2) is padding
    "seq-shorter-than-window": Case(2, 5, 8, (1, 3, 1, 1), ((1, 2),)),
    "seq-1": Case(2, 1, 4, (1, 2), ((1, 0),)),
    "dilation-beyond-seq": Case(1, 6, 4, (8, 1), ((0, 4),)),
    "all-global": Case(1, 18, 4, (1, 2), tuple((0, i) for i in range(18))),  # full attention, 2 slot blocks
    "many-globals": Case(2, 50, 4, (1, 3), tuple((0, i) for i in range(3, 50, 2)) + ((1, 7), (1, 8)), (50, 44)),
    "transposed-int-masks": Case(
        2, 20, 4, (1, 2, 1), ((0, 2), (1, 19)), (20, 15), transposed=True, mask_dtype=torch.int64
    ),
    "float-masks": Case(1, 12, 4, (1, 2), ((0, 11),), (10,), mask_dtype=torch.float32),
    "fp16-dilations-globals-padding": Case(2, 37, 8, (1, 2, 1, 3), ((0, 3), (1, 5), (1, 30)), (37, 33), dtype=F16),
    "fp16-head-dim-12": Case(1, 19, 4, (1, 3), ((0, 0),), head_dim=12, dtype=F16),
    # for the GPU's configs (interpreted, each config of the space): query and key tails at their tile sizes
    "cuda-tiles": Case(2, 70, 16, (1, 2, 3, 1), ((0, 0), (0, 40), (1, 69)), (70, 61), gpu_tiles=True),
    "cuda-tiles-fp16": Case(1, 90, 32, (1, 4), tuple((0, i) for i in range(0, 90, 13)), dtype=F16, gpu_tiles=True),
    "cuda-tiles-d80": Case(1, 40, 8, (1, 2), ((0, 3), (0, 39)), (37,), head_dim=80, gpu_tiles=True),
    "cuda-tiles-fp16-d80": Case(1, 40, 8, (1, 2), ((0, 3), (0, 20)), head_dim=80, dtype=F16, gpu_tiles=True),
    # 17+ global tokens: a second slot block, which the global kernel's later programs take unsplit
    "globals-past-the-first-block": Case(1, 45, 4, (1, 2), tuple((0, i) for i in range(0, 45, 2))),
}
TOLERANCE = {torch.float32: 1e-5, F16: 1e-2}  # relative to the output's largest magnitude, if above 1


def space(module) -> dict:
    """Every config of the CUDA config spaces: name -> (dtype, head_dim bound, config)."""
    spaces = {torch.float32: module.CONFIGS_32, F16: module.CONFIGS_16}
    return {f"{str(dtype)[6:]}-d{d}-{'-'.join(map(str, c))}": (dtype, d, c)
            for dtype, by_d in spaces.items() for d, configs in by_d.items() for c in configs}  # fmt: skip


def compare(module, name: str) -> dict:
    c = CASES[name]
    x, a = c.inputs(seed=len(name))
    out = module.sliding_window_attention_triton(*x, **a)
    want = sliding_window_reference(*x, **a)
    padding = x[6] == 0  # [batch, seq]
    config, splits = module.plan(x[0], a["window"], a["dilations"])
    return {**kernel_error(out, want), "shapes": [list(out.shape), list(want.shape)], "splits": splits,
            "finite": bool(out.isfinite().all()), "padding_zero": bool((out.transpose(1, 2)[padding] == 0).all())}  # fmt: skip


def interpreter_run() -> dict:
    """Every case through the Triton implementation and the eager op (this process has TRITON_INTERPRET=1): with the
    interpreter's config, again with the global rows' split-K forced (a stand-in SM count the small grids do not fill,
    one key tile per share), and with each config of the CUDA spaces (split) on the cases that cross their tiles."""
    module = registry.PLUGINS["SlidingWindowAttention"].load_triton()
    results = {name: compare(module, name) for name in CASES}
    module.INTERPRETER_SMS, module.MIN_SPLIT_TILES = 64, 1
    results |= {f"split/{name}": compare(module, name) for name in CASES}
    configs = module.configs
    for label, (dtype, d, config) in space(module).items():
        module.configs = lambda *_, c=config: [c]
        for name, c in CASES.items():
            if c.gpu_tiles and c.dtype == dtype and (c.head_dim <= 64) == (d == 64):
                results[f"config/{label}/{name}"] = compare(module, name)
    module.configs = configs
    module.INTERPRETER_SMS, module.MIN_SPLIT_TILES = 1, 2
    largest = {}  # torch-side memory: linear in seq, no [seq, seq] tensor
    for seq in (128, 256):
        x, a = Case(1, seq, 8, (1, 2), ((0, 0), (0, seq // 2), (0, seq - 1)), head_dim=16).inputs()
        with LargestTensor() as mode:
            module.sliding_window_attention_triton(*x, **a)
        largest[seq] = mode.largest
    results["largest_tensor"] = largest
    x, a = CASES["window-4-dilations-1231"].inputs()  # after the import: the op on CPU still runs the eager reference
    results["cpu_dispatch_is_reference"] = torch.equal(
        sliding_window_attention(*x, **a), sliding_window_reference(*x, **a)
    )
    results["cuda_kernel_registered"] = has_cuda_kernel("trtformer::sliding_window_attention")
    results["cuda_route"] = route_choices(dispatch.route(OP), lambda f: f(*x, **a), sliding_window_reference(*x, **a),
                                          module.sliding_window_attention_triton(*x, **a))  # fmt: skip
    return results


@pytest.fixture(scope="module")
def interpreted() -> dict:
    return run_interpreted(__file__)


def check(r: dict, dtype: torch.dtype) -> None:
    assert r["dtype"] == str(dtype) and r["shapes"][0] == r["shapes"][1]
    assert r["finite"] and r["padding_zero"]
    assert r["max_abs"] <= TOLERANCE[dtype] * max(1.0, r["scale"]), r["max_abs"]


@pytest.mark.parametrize("name", CASES)
def test_interpreted_kernel_matches_eager_op(interpreted, name):
    check(interpreted[name], CASES[name].dtype)
    assert interpreted[name]["splits"] == 1


@pytest.mark.parametrize("name", CASES)
def test_interpreted_split_global_rows_match_eager_op(interpreted, name):
    """The first global slot block over key shares merged by the combine kernel (shares of padding keys only, and
    empty shares, included), later slot blocks unsplit, as one softmax with the band as before."""
    r = interpreted[f"split/{name}"]
    check(r, CASES[name].dtype)
    assert r["splits"] > 1 or CASES[name].seq <= 16  # a single key tile cannot be split


def test_every_cuda_config_matches_eager_op_interpreted(interpreted):
    """No config the tuner could pick on a GPU is wrong: each, across its block edges, its global rows split."""
    from trtformer.plugins.sliding_window import triton as module

    ran = {k.split("/")[1] for k in interpreted if k.startswith("config/")}
    assert ran == set(space(module)), set(space(module)) - ran
    configs = space(module)
    for key, r in interpreted.items():
        if key.startswith("config/"):
            _, label, name = key.split("/")
            check(r, CASES[name].dtype)
            assert r["splits"] > 1 or CASES[name].seq <= configs[label][2].block_n  # one key tile is not split


def test_torch_side_memory_is_linear_in_seq(interpreted):
    largest = interpreted["largest_tensor"]
    assert largest["256"] <= 2.1 * largest["128"] and largest["256"] < 256**2


def test_cuda_kernel_registered_and_cpu_keeps_reference(interpreted):
    assert interpreted["cuda_kernel_registered"] and interpreted["cpu_dispatch_is_reference"]


def test_the_cuda_kernel_runs_triton_only_inside_triton_kernels(interpreted):
    assert interpreted["cuda_route"] == {"before": "reference", "inside": "triton", "other_thread": "reference",
                                         "after": "reference"}  # fmt: skip


# The integer arguments a launch at the GPU sizes (head_dim 64 or 128, the model's strides) hints as multiples of 16
DIVISIBLE = ("sq_b", "sq_h", "sq_n", "sk_b", "sk_h", "sk_n", "sv_b", "sv_h", "sv_n", "so_b", "so_h", "so_n", "head_dim")


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, F16], ids=["fp32", "fp16"])
def test_every_config_compiles_for_sm90_within_shared_memory_without_spills(dtype, head_dim):
    """Ahead of time, no GPU: every config of the space the tuner times on CUDA lowers to sm_90 code for both kernels
    (the global one split and unsplit), fits the 99 KB of shared memory of the smallest GPUs in view and keeps its
    state in registers; the token-kinds kernel too."""
    triton = pytest.importorskip("triton", reason="Triton is not installed (pip install 'trtformer[triton]')")
    from trtformer.plugins.sliding_window import triton as module

    ptr = "*fp32" if dtype == torch.float32 else "*fp16"
    types = {"Kind": "*i8", "GPos": "*i32", "GCount": "*i32", "Dil": "*i32", "ML": "*fp32", "Acc": "*fp32",
             "scale": "fp32"} | {n: ptr for n in ("Q", "K", "V", "Out")}  # fmt: skip
    for config in module.configs(head_dim, dtype, torch.device("cuda")):
        consts = {"BLOCK_N": config.block_n, "BLOCK_D": max(16, triton.next_power_of_2(head_dim)),
                  "PRECISION": "ieee" if dtype == torch.float32 else "tf32"}  # fmt: skip
        local = {"num_warps": config.num_warps, "num_stages": config.num_stages}
        kernels = [(module._local_kernel, {"BLOCK_M": config.block_m}, local)] + [
            (module._global_kernel, {"BLOCK_M": module.GLOBAL_ROWS, "SPLIT": split}, module.global_launch(config, dtype))
            for split in (False, True)]  # fmt: skip
        for kernel, more, options in kernels:
            compiled = compile_sm90(kernel, consts | more, types, options, DIVISIBLE)
            assert compiled.metadata.shared <= 99 * 1024, (config, kernel, compiled.metadata.shared)
            assert spilled_bytes(compiled) in (0, None), (config, kernel, more, spilled_bytes(compiled))
    kinds = compile_sm90(module._kinds_kernel, {"BLOCK": 1024}, {"Real": "*i1", "Glob": "*i1", "Kind": "*i8",
                         "GPos": "*i32", "GCount": "*i32"}, {"num_warps": 4})  # fmt: skip
    assert kinds.metadata.shared <= 99 * 1024 and spilled_bytes(kinds) in (0, None)


# ---------------------------------------------------------------------------------------------- GPU

REAL = {  # Longformer-base sizes: 12 heads of 64, window 512
    "b1-s4096-w512": Case(1, 4096, 512, (1,) * 12, ((0, 0),), head_dim=64),
    "b2-s4096-w512-dilated-padded": Case(
        2, 4096, 512, (1, 2) * 6, ((0, 0), (0, 2000), (1, 5)), (4096, 3000), head_dim=64
    ),
    "b3-s1000-w256-views": Case(
        3, 1000, 256, (1, 1, 2, 4) * 2, ((0, 0), (2, 999)), (1000, 0, 777), head_dim=64, transposed=True
    ),
    "b4-s512-w128-no-globals-d80": Case(4, 512, 128, (1,) * 8, head_dim=80),
    "b1-s2048-w64-256-globals": Case(1, 2048, 64, (1, 3) * 6, tuple((0, i) for i in range(0, 2048, 8)), head_dim=64),
}

GPU_TOLERANCE = {torch.float32: 1e-4, F16: 2e-2, torch.bfloat16: 8e-2}  # seq up to 4096, relative as above


def needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("triton", reason="Triton is not installed (pip install 'trtformer[triton]')")
    return registry.PLUGINS["SlidingWindowAttention"].load_triton()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, F16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("name", REAL)
def test_gpu_real_sizes(name, dtype):
    module = needs_cuda()
    x, a = dataclasses.replace(REAL[name], dtype=dtype).inputs(device="cuda")
    out = module.sliding_window_attention_triton(*x, **a)
    want = sliding_window_reference(*x, **a)  # the eager body itself: the op would dispatch to Triton on CUDA
    scale = max(1.0, want.float().abs().max().item())
    assert (out.float() - want.float()).abs().max().item() <= GPU_TOLERANCE[dtype] * scale
    assert torch.all(out.transpose(1, 2)[x[6] == 0] == 0)


@pytest.mark.gpu
def test_gpu_custom_op_dispatches_to_triton(monkeypatch):
    module = needs_cuda()
    calls = []
    into = module.sliding_window_attention_into
    monkeypatch.setattr(
        module, "sliding_window_attention_into", lambda *args: calls.append(args[0].device) or into(*args)
    )
    x, a = CASES["window-8-globals-start-and-middle"].inputs()
    sliding_window_attention(*x, **a)  # CPU: the reference, no Triton
    on_gpu = [t.cuda() for t in x]
    sliding_window_attention(*on_gpu, **a)  # CUDA outside triton_kernels(): the reference too
    assert calls == []
    with registry.triton_kernels():
        got = sliding_window_attention(*on_gpu, **a)
    assert [d.type for d in calls] == ["cuda"]
    assert (got.cpu() - sliding_window_reference(*x, **a)).abs().max() <= 1e-5


if __name__ == "__main__":  # the interpreter run, in the subprocess the fixture starts
    torch.set_num_threads(1)  # the machine is shared; the sizes are tiny
    print(json.dumps(interpreter_run()))
