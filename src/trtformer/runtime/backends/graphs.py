"""Fixed-shape calls captured once and replayed (CUDA graphs on the torch backends), and the check that a forward can be.

A CUDA graph records the kernels a forward launches on fixed addresses; a replay is one launch, so a launch-bound
step (a GPT decode token, a Transformer-XL segment, a small encoder batch) runs at the GPU's pace. What breaks one:
- a host read of a device value (`.item()`, a tensor in an `if`, boolean-mask indexing, whose result size depends on
  the data): capture fails, and before it each such call stalls the CPU until the GPU catches up;
- new shapes: a graph is one shape, so callers key graphs by shape (batch size, segment, bucket).
`no_host_reads()` finds the first kind on any device, CPU included: it runs a forward under a dispatch mode that raises
on those ops, and enters the fused ops' bodies with the implementation the CUDA path would run. Captures run the
forward under it, so a capture fails with the op's name rather than CUDA's "operation not permitted when stream is
capturing".

`Captured` holds a forward's static inputs and outputs: on CUDA a torch.cuda.CUDAGraph, warmed up on a side stream
first (compiles, autotuning and allocations happen there, never inside the capture). On CPU, where there are no
graphs, it re-runs the forward over the same static inputs and copies the results into the same static outputs: the
contract the callers rely on (inputs copied in, outputs overwritten by the next replay) is then testable without a GPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

from ...errors import BackendError
from .buffers import Tensor

Forward = Callable[[dict[str, Tensor]], dict[str, Tensor]]


# aten ops that hand a device value to the host: a scalar read, or an output size that depends on the data.
SCALAR_READS = {"aten::_local_scalar_dense", "aten::item"}
DATA_SIZED = {"aten::nonzero", "aten::masked_select", "aten::_unique", "aten::_unique2",
              "aten::unique_dim", "aten::unique_consecutive", "aten::repeat_interleave"}  # fmt: skip
MASK_INDEXING = {"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"}


def _host_read(func, args, kwargs) -> str | None:
    """Why the aten call `func` reads device data on the host, or None."""
    import torch

    name = func._schema.name
    if name in SCALAR_READS:
        return "reads a tensor's value on the host (.item(), int(), float(), bool() or a tensor in an if)"
    if name in DATA_SIZED:
        return "has an output size that depends on the data"
    if name in ("aten::_to_copy", "aten::copy_") and len(args) >= 1:  # between the host and the device (.cpu(), .tolist())
        src, dst = (args[0], kwargs.get("device")) if name == "aten::_to_copy" else (args[1], args[0].device)
        if dst is not None and isinstance(src, torch.Tensor) and torch.device(dst).type != src.device.type:
            return f"copies between {src.device.type} and {torch.device(dst).type}, which waits for the device"
    indices = args[1] if name in MASK_INDEXING and len(args) > 1 else ()
    if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
        return "indexes with a boolean mask, whose selection size depends on the data"
    return None


@contextlib.contextmanager
def no_host_reads() -> Iterator[None]:
    """Inside the block, an op that reads device data on the host raises BackendError naming it. trtformer's fused ops
    are entered: their body is the accelerated kernel's when `ops.dispatch.accelerated()` is on, the reference's
    otherwise."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from ...ops import dispatch

    class NoHostReads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            why = _host_read(func, args, kwargs)
            if why is not None:
                raise BackendError(f"{func.name()} {why}: a CUDA graph cannot capture it",
                                   hint="use a backend without CUDA graphs, or report the op that reads")  # fmt: skip
            body = dispatch.implementation(func)
            if body is not None:  # a fused op: check what it runs, with this mode back on
                with self:
                    return body(*args, **kwargs)
            return func(*args, **kwargs)

    with torch.no_grad(), NoHostReads():
        yield


class Captured:
    """`forward` over static input buffers, captured once and replayed: `replay(values)` copies `values` (a subset of
    the inputs, same shapes) into the buffers and returns the static outputs, which the next replay overwrites.

    `inputs` are used as they are, not copied: a caller may hand buffers it owns (a cache the graph writes in place).
    `after(inputs, outputs)`, when given, runs inside the capture after the forward: in-place writes that belong to the
    step (a new memory copied back over the old).
    `check=False` runs the forward without no_host_reads: torch.compile refuses to run under a dispatch mode, so a
    compiled forward's caller checks the eager model instead (a host read in a capture still fails, in CUDA's words).
    """

    def __init__(self, forward: Forward, inputs: dict[str, Tensor], pool=None, warmup: int = 2,
                 after: Callable[[dict[str, Tensor], dict[str, Tensor]], None] | None = None, check: bool = True):
        import torch

        self.inputs, self.forward, self.after = inputs, forward, after
        self.checked = no_host_reads if check else contextlib.nullcontext
        self.device = next(iter(inputs.values())).device
        self.replays = 0
        # Construction never takes the step (the first replay does): warm-ups run the forward alone, and a capture
        # records kernels without running them, so `after`'s in-place writes happen once per replay.
        if self.device.type != "cuda":  # the CPU stand-in: a first forward's outputs become the static outputs
            self.graph = None
            with self.checked():
                self.outputs = self.forward(self.inputs)
            return
        # Warm-ups on a side stream, as torch.cuda.graphs asks, and unchecked: they compile, autotune, allocate and fill
        # caches (a one-time host-to-device copy included), work that must happen before the capture, not in it.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(warmup):
                self.forward(self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with self.checked(), torch.cuda.graph(self.graph, pool=pool):
            self.outputs = self.forward(self.inputs)
            if self.after is not None:
                self.after(self.inputs, self.outputs)

    def replay(self, values: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        for name, value in (values or {}).items():
            target = self.inputs[name]
            if tuple(value.shape) != tuple(target.shape):
                raise BackendError(f"a captured step's input {name} is {tuple(target.shape)}, got {tuple(value.shape)}")
            if value.data_ptr() != target.data_ptr():  # the caller's own buffer needs no copy
                target.copy_(value)
        if self.graph is not None:
            self.graph.replay()
        else:
            with self.checked():
                for name, new in self.forward(self.inputs).items():
                    self.outputs[name].copy_(new)
                if self.after is not None:
                    self.after(self.inputs, self.outputs)
        self.replays += 1
        return self.outputs
