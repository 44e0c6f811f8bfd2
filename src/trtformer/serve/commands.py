"""`trtformer serve` and `trtformer repository` (added to the CLI through its EXTENSION_COMMANDS)."""

from __future__ import annotations

import functools
import signal
import threading
from pathlib import Path

from ..runtime import backends
from .repository import Batching
from .server import Ports


def add_commands(sub, add_backend_args, emit) -> None:
    """The subcommands; `emit` is the CLI's output (only the CLI prints), bound into each command."""
    p = sub.add_parser("serve", help="serve artifacts on Triton Inference Server (HTTP, gRPC, metrics)")
    p.add_argument("artifacts", nargs="+", metavar="ARTIFACT")
    p.add_argument("--name", action="append", help="the Triton model name of each artifact, in order (default: its directory's name)")
    add_backend_args(p, backends.names())
    p.add_argument("--graph", help="the artifact graph to serve (default: its only one)")
    p.add_argument("--threads", type=int, help="CPU threads of each model instance's session")
    p.add_argument("--host", default="127.0.0.1", help="address every endpoint binds to (default: loopback only)")
    for proto, port in (("http", 8000), ("grpc", 8001), ("metrics", 8002)):
        p.add_argument(f"--{proto}-port", type=int, default=port, help=f"default {port}; 0 picks a free port")
    add_batching_args(p)
    p.add_argument("--log-file", help="the server's log (default: in its working directory, removed at exit)")
    p.set_defaults(func=functools.partial(cmd_serve, emit=emit))

    r = sub.add_parser("repository", help="a Triton model repository for Triton's own backends (no Python at run time)")
    r.add_argument("artifact")
    r.add_argument("-o", "--out", required=True, help="a new directory")
    r.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "tensorrt"],
                   help="Triton backend: onnxruntime (the artifact's ONNX) or tensorrt (its full-TensorRT engine)")
    r.add_argument("--name", help="the model's name (default: the artifact directory's name)")
    r.add_argument("--variant", default="default", choices=["default", "plain", "optimized", "int8"],
                   help="which ONNX of the graph (default: the most processed)")
    r.add_argument("--graph", help="the artifact graph (default: its only one)")
    add_batching_args(r)
    r.set_defaults(func=functools.partial(cmd_repository, emit=emit))


def add_batching_args(p) -> None:
    p.add_argument("--max-batch-size", type=int, default=32, help="encoders: the most sequences one batch holds (0: no batching)")
    p.add_argument("--max-queue-delay-us", type=int, default=2000, help="encoders: how long a request waits for others to batch with")
    p.add_argument("--instances", type=int, default=1, help="model instances (each its own process and session)")


def batching(args) -> Batching:
    return Batching(args.max_batch_size, args.max_queue_delay_us, args.instances)


def cmd_serve(args, emit) -> int:
    from .launch import start_serving

    options = {"engine": args.engine, "cuda_graphs": args.cuda_graphs, "threads": args.threads}
    ports = Ports(args.http_port, args.grpc_port, args.metrics_port)
    # SIGTERM and SIGINT end the wait below; the server then stops in order (models unloaded, stubs gone).
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    serving = start_serving(args.artifacts, args.backend, args.name, args.graph, options, batching(args), ports,
                            host=args.host, log_path=Path(args.log_file) if args.log_file else None,
                            verbose=1 if args.verbose else 0)
    try:
        for m in serving.models:
            how = "decoupled, gRPC streaming" if m.decoupled else "batched" if m.batched else "one request at a time"
            emit(f"model {m.name:<24} {m.kind:<17} ({how}) inputs {', '.join(p.name for p in m.inputs)}")
        emit(f"serving on http {serving.url('http')}, grpc {serving.url('grpc')}, metrics "
              f"http://{serving.url('metrics')}/metrics (Ctrl-C or SIGTERM stops)")
        while not stop.wait(0.5):
            if serving.server.process.poll() is not None:
                emit(f"tritonserver exited with code {serving.server.process.returncode}: {serving.server.log_tail()}")
                return 1
    finally:
        code = serving.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    emit(f"stopped (tritonserver exit code {code})")
    return 0


def cmd_repository(args, emit) -> int:
    from .repository import write_portable_repository

    out = write_portable_repository(args.artifact, args.out, args.backend, args.name, args.variant, args.graph,
                                    batching(args))
    for config in sorted(out.glob("*/config.pbtxt")):
        emit(f"wrote {config.parent} ({args.backend}): {', '.join(p.name for p in sorted(config.parent.rglob('*')) if p.is_file())}")
    return 0
