"""Serve artifacts: check them, write the serving repository into a private working directory, start the server.

`start_serving` is what `trtformer serve`, the tests and the load benchmark call. Every problem with the artifacts,
names, backend or options is raised before the server starts; the working directory goes when it stops.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..artifact import Artifact
from ..errors import InputError
from ..runtime import backends
from .models import ServedModel
from .repository import DEFAULT_BATCHING, Batching, model_name, serving_repository
from .server import Ports, TritonServer


def backend_options(backend: str, options: dict) -> dict:
    """The options that reach each model instance's Session; a tensorrt flag with another backend is refused."""
    if backend not in backends.names():
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(backends.names())}")
    options = {k: v for k, v in options.items() if v}
    for option in options:
        why = backends.misplaced(option, backend)
        if why:
            raise InputError(why)
    return options


@dataclass
class Serving:
    server: TritonServer
    models: list[ServedModel]
    workdir: Path

    def url(self, protocol: str = "http") -> str:
        return self.server.url(protocol)

    def stop(self) -> int | None:
        try:
            return self.server.stop()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Serving:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_serving(artifacts: list[str | Path], backend: str = "ort-cpu", names: list[str] | None = None,
                  graph: str | None = None, options: dict | None = None, batching: Batching = DEFAULT_BATCHING,
                  ports: Ports | None = None, host: str = "127.0.0.1", timeout: float = 180.0,
                  log_path: Path | None = None, verbose: int = 0) -> Serving:
    """Start a tritonserver serving each artifact (see models.py for what each kind becomes); returns once all
    its models are ready."""
    if not artifacts:
        raise InputError("give at least one artifact to serve")
    if names and len(names) != len(artifacts):
        raise InputError(f"--name given {len(names)} times for {len(artifacts)} artifacts; give one per artifact")
    options = backend_options(backend, options or {})
    loaded = [(model_name(Path(a), names[i] if names else None), Artifact.load(a)) for i, a in enumerate(artifacts)]
    workdir = Path(tempfile.mkdtemp(prefix="trtformer-serve-"))
    try:
        repo = workdir / "repository"
        repo.mkdir()
        models = serving_repository(repo, loaded, backend, options, graph, batching)
        server = TritonServer(repo, workdir, ports or Ports(), host=host, log_path=log_path, verbose=verbose)
        server.start(timeout)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return Serving(server, models, workdir)
