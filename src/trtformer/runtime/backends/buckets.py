"""Encoder calls padded to shape buckets on the torch backends, and CUDA graphs over the buckets.

A CUDA graph is one shape, and encoder calls come in every batch size and length, so each call is padded up to a
bucket: its length to the next sequence bucket (by default powers of two from 16 up to the graph's largest length,
that length included), its batch to the next batch bucket (1, 2, 4, 8, 16). With `cuda_graphs` each bucket is captured
once (graphs.Captured, one memory pool for all of them) on its first call and replayed for every later call that falls
in it; without, buckets only pad (any torch backend, CPU included).

What the bucket adds is masked, so the call's own outputs do not change:
- added positions go after the call's (a real token keeps its position index, absolute or RoBERTa's count of real
  tokens) with padding-mask 0, the pad token as id (RoBERTa's position of a padding token) and the neutral value of
  every other role (token type 0, not global): no real query attends to them;
- added rows are all padding. Attention over nothing but masked keys stays finite (the models mask with the most
  negative finite fp32 value and softmax in fp32; the sliding-window op zeroes padding), rows never mix, and the
  added rows' outputs are dropped;
- outputs are cut back along the axes whose dims are the graph's batch and sequence symbols.

Batch buckets stop at 16: padding a batch to the next power of two costs up to twice its compute, one graph per batch
size would cost a capture and its outputs' memory per size, and at 16 rows an encoder forward is compute-bound enough
that a launch per row-chunk no longer matters. Larger batches run in chunks of 16 rows. Calls longer than the largest
sequence bucket (only with `buckets=` below the graph's limit; the Session refuses anything past the limit) run as they
are, unpadded and never captured, rather than being refused: the graph accepts them.

A captured bucket keeps its static inputs and outputs allocated for the backend's life; its outputs are overwritten
by its next replay, so a call's results are copied out before the next call may replay (calls hold a lock).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ...artifact import shapes
from ...errors import BackendError
from .buffers import Device, Tensor, to_numpy
from .graphs import Captured, no_host_reads

Forward = Callable[[dict[str, Tensor]], dict[str, Tensor]]

BATCH_BUCKETS = (1, 2, 4, 8, 16)
SMALLEST = 16  # the default first sequence bucket: below it a padded forward costs next to nothing more
UNBOUNDED = 4096  # the default largest sequence bucket of a graph that gives no limit
# The value each role's input takes where a bucket pads; the ids take the model's pad token.
NEUTRAL = {"padding-mask": 0, "token-types": 0, "global-mask": 0}


def unsupported(graph) -> str | None:
    """Why `graph` cannot be padded to buckets (the contract above), or None when it can."""
    ids, mask = graph.role_input("ids"), graph.role_input("padding-mask")
    if graph.state:
        return f"carries state ({', '.join(sorted(graph.state_kinds))})"
    if ids is None or mask is None:
        return "has no ids and padding-mask inputs"
    seq = graph.sequence_dim
    if ids.rank != 2 or seq is None or not shapes.is_symbol(ids.shape[0]):
        return f"has ids of shape {list(ids.shape)}, not [batch, seq]"
    odd = [t.name for t in graph.inputs if t.role != "ids" and (t.role not in NEUTRAL or t.shape != ids.shape)]
    if odd:
        return f"has inputs {odd} that padding cannot fill with a neutral value"
    batch = ids.shape[0]
    for t in graph.outputs:
        cut = [d for d in t.shape if isinstance(d, str) and d not in (batch, seq)]
        if cut or t.shape.count(batch) != 1 or t.shape.count(seq) > 1:
            return f"has the output {t.name} of shape {list(t.shape)}, which cannot be cut back to a call's {batch} and {seq}"
    return None


def largest_length(graph) -> int | None:
    """The graph's most positions per call, from its dims and limits (None: unbounded)."""
    seq = graph.sequence_dim
    dim = graph.dims.get(seq)
    bounds = [b for b in (dim.max if dim else None, graph.limits.get(seq)) if b is not None]
    return min(bounds) if bounds else None


def sequence_buckets(graph, given: Sequence[int] | None) -> tuple[int, ...]:
    """`given` checked against the graph, or the default powers of two (see the module docstring)."""
    seq = graph.sequence_dim
    dim = graph.dims.get(seq)
    lo, hi = (dim.min if dim else 1), largest_length(graph)
    if given is None:
        top = hi if hi is not None else UNBOUNDED
        start = SMALLEST
        while start < lo:
            start *= 2
        out = []
        while start < top:
            out.append(start)
            start *= 2
        return (*out, top)
    if isinstance(given, (str, bytes)) or not isinstance(given, Sequence) or not given:
        raise BackendError(f"buckets must be a list of sequence lengths, got {given!r}")
    previous = 0
    for b in given:
        if isinstance(b, bool) or not isinstance(b, int) or b <= previous or b < lo or (hi is not None and b > hi):
            raise BackendError(f"buckets must be increasing integers in [{lo}, {hi if hi is not None else 'any'}] "
                               f"(graph {graph.name!r}'s {seq}); {b!r} in {list(given)} is not",
                               hint="e.g. buckets=[64, 128, 256]")  # fmt: skip
        previous = b
    return tuple(given)


class EncoderBuckets:
    """The calls of a stateless encoder graph padded to (batch, sequence) buckets; with `cuda_graphs` (an attribute:
    it may be switched on later) each bucket a Captured graph."""

    def __init__(self, graph, forward: Forward, device: Device, pad_id: int = 0, buckets: Sequence[int] | None = None,
                 batches: Sequence[int] = BATCH_BUCKETS, cuda_graphs: bool = False, backend: str = "",
                 compiled: bool = False):
        why = unsupported(graph)
        if why is not None:
            raise BackendError(f"shape buckets are for encoder graphs with [batch, seq] ids and a padding mask; graph "
                               f"{graph.name!r} {why}", hint="leave buckets and cuda_graphs unset")  # fmt: skip
        if cuda_graphs and device.type != "cuda":
            raise BackendError("CUDA graphs need a CUDA device", hint="use torch-cuda, torch-cuda-triton or torch-cuda-compile")
        self.graph, self.forward, self.device, self.backend = graph, forward, device, backend
        self.lengths, self.batches = sequence_buckets(graph, buckets), tuple(batches)
        self.cuda_graphs = cuda_graphs
        self.compiled = compiled  # torch.compile runs under no dispatch mode: captures skip no_host_reads (see check)
        ids = graph.role_input("ids")
        self.ids = ids.name
        self.fill = {t.name: pad_id if t.role == "ids" else NEUTRAL[t.role] for t in graph.inputs}
        # Per output, which axes a call's batch ("b") and length ("s") cut back.
        kinds = {ids.shape[0]: "b", graph.sequence_dim: "s"}
        self.axes = {t.name: tuple(kinds.get(d) for d in t.shape) for t in graph.outputs}
        self.captured: dict[tuple, Captured] = {}  # (batch bucket, length bucket, input names) -> its graph
        self.pool = None  # one CUDA graph memory pool for every bucket, made at the first capture
        self.lock = threading.Lock()

    def bucket(self, batch: int, length: int) -> tuple[int, int] | None:
        """The (batch, length) bucket of a call of at most the largest batch bucket's rows; None past every length."""
        seq = next((s for s in self.lengths if s >= length), None)
        return None if seq is None else (next(b for b in self.batches if b >= batch), seq)

    def run(self, tensors: Mapping[str, Tensor], fetch: Sequence[str]) -> dict[str, np.ndarray]:
        """One call (inputs on the device, [batch, seq] each) through its buckets; the fetched outputs as numpy."""
        batch, length = tensors[self.ids].shape
        if self.bucket(1, length) is None:  # longer than every bucket: as it is
            return self._numpy(self.forward(dict(tensors)), fetch, batch, length)
        step = self.batches[-1]
        parts = [self._run_rows({n: t[start : start + step] for n, t in tensors.items()}, fetch)
                 for start in range(0, batch, step)]  # fmt: skip
        if len(parts) == 1:
            return parts[0]
        return {n: np.concatenate([p[n] for p in parts], axis=self.axes[n].index("b")) for n in fetch}

    def _run_rows(self, rows: Mapping[str, Tensor], fetch: Sequence[str]) -> dict[str, np.ndarray]:
        batch, length = rows[self.ids].shape
        size = self.bucket(batch, length)
        if not self.cuda_graphs:
            return self._numpy(self.forward({n: self._padded(n, t, size) for n, t in rows.items()}), fetch, batch, length)
        with self.lock:  # the static buffers are shared by every call of the bucket
            key = (*size, tuple(sorted(rows)))
            captured = self.captured.get(key)
            if captured is None:
                if self.pool is None and self.device.type == "cuda":
                    import torch

                    self.pool = torch.cuda.graph_pool_handle()
                inputs = {n: self._padded(n, t, size) for n, t in rows.items()}
                captured = self.captured[key] = Captured(self.forward, inputs, self.pool, check=not self.compiled)
            else:
                for name, value in rows.items():
                    self._write(captured.inputs[name], name, value)
            return self._numpy(captured.replay(), fetch, batch, length, copy=True)

    def _padded(self, name: str, value: Tensor, size: tuple[int, int]) -> Tensor:
        out = value.new_empty(size)
        self._write(out, name, value)
        return out

    def _write(self, buffer: Tensor, name: str, value: Tensor) -> None:
        """`value` into the top-left corner of `buffer`, the input's neutral value around it."""
        batch, length = value.shape
        buffer[:batch, :length].copy_(value)
        buffer[:batch, length:].fill_(self.fill[name])
        buffer[batch:].fill_(self.fill[name])

    def _numpy(self, out: Mapping[str, Tensor], fetch: Sequence[str], batch: int, length: int,
               copy: bool = False) -> dict[str, np.ndarray]:
        """The fetched outputs cut to the call's rows and positions. `copy`: they are static buffers, which the next
        replay overwrites (a device tensor is copied to the host anyway)."""
        result = {}
        for name in fetch:
            cut = tuple(slice(0, batch) if k == "b" else slice(0, length) if k == "s" else slice(None) for k in self.axes[name])
            value = out[name][cut]
            if value.device.type == "cpu":  # a numpy view of it would share its memory: a dense copy of its own
                value = value.clone() if copy else value.contiguous()
            result[name] = to_numpy(value)
        return result

    def check(self, forward: Forward) -> None:
        """Run `forward` once at the smallest bucket under graphs.no_host_reads: a forward that reads device values
        on the host (which no CUDA graph can capture) is refused now rather than at a first call's capture."""
        import torch

        size = (self.batches[0], self.lengths[0])
        inputs = {t.name: torch.full(size, 1 if t.role == "padding-mask" else self.fill[t.name], dtype=torch.int64,
                                     device=self.device) for t in self.graph.inputs}  # fmt: skip
        try:
            with no_host_reads():
                forward(inputs)
        except BackendError as exc:
            raise BackendError(f"graph {self.graph.name!r} cannot run as CUDA graphs on {self.backend}: {exc}",
                               hint="the fused ops' Triton kernels can be captured (torch-cuda-triton, torch-cuda-compile);"
                                    " or set cuda_graphs=False") from None  # fmt: skip
