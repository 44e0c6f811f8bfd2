"""Finding, starting and stopping a tritonserver process.

The server comes from the `nvidia-pytriton` wheel (tritonserver 2.51 with its Python backend; installed with
--no-deps, since the wheel declares numpy<2 and runs with numpy 2, see triton_model.py) or from a Triton install
such as NGC's container (/opt/tritonserver). Its Python-backend stub is a separate binary per Python version,
linked against a libpython of that version: the environment makes it load the running interpreter's libpython
and this interpreter's packages, so a model instance imports the same trtformer as the process that starts it.

Every endpoint binds to 127.0.0.1 unless asked otherwise.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import BackendError, DependencyError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'trtformer[serve]' && pip install --no-deps nvidia-pytriton==0.7.0"
SYSTEM_ROOTS = (Path("/opt/tritonserver"),)


def _missing(what: str) -> DependencyError:
    exc = DependencyError("nvidia-pytriton", "serve", what)
    exc.hint = INSTALL_HINT
    return exc


@dataclass(frozen=True)
class Distribution:
    """Where a tritonserver install keeps its binary, backends and Python-backend stub."""

    server: Path
    backends: Path
    stub: Path
    libs: Path | None  # shared libraries the binaries load (the wheel's nvidia_pytriton.libs)

    @property
    def backend_names(self) -> list[str]:
        return sorted(p.name for p in self.backends.iterdir() if p.is_dir() and not p.name.startswith("_"))


def find_distribution() -> Distribution:
    """The pytriton wheel's tritonserver, else a system install; a DependencyError names how to install one."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    spec = importlib.util.find_spec("pytriton")
    if spec is not None and spec.origin:
        root = Path(spec.origin).parent / "tritonserver"
        stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if (root / "bin" / "tritonserver").is_file():
            if not stub.is_file():
                raise BackendError(f"the tritonserver in {root} has no Python-backend stub for Python {version}")
            return Distribution(root / "bin" / "tritonserver", root / "backends", stub, root.parent.parent / "nvidia_pytriton.libs")
    for root in SYSTEM_ROOTS:
        stub = root / "backends" / "python" / "triton_python_backend_stub"
        if (root / "bin" / "tritonserver").is_file() and stub.is_file():
            return Distribution(root / "bin" / "tritonserver", root / "backends", stub, None)
    raise _missing("serving on Triton Inference Server")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Ports:
    http: int = 0  # 0: a free port
    grpc: int = 0
    metrics: int = 0

    def resolved(self, host: str) -> Ports:
        return Ports(*(p or free_port(host) for p in (self.http, self.grpc, self.metrics)))


def backend_directory(dist: Distribution, workdir: Path) -> Path:
    """A backend directory whose Python backend holds this interpreter's stub (the wheel keeps one per version
    apart from the backend); other backends are linked as they are."""
    out = workdir / "backends"
    python = out / "python"
    python.mkdir(parents=True)
    for item in (dist.backends / "python").iterdir():
        if item.name != "triton_python_backend_stub":
            (python / item.name).symlink_to(item)
    (python / "triton_python_backend_stub").symlink_to(dist.stub)
    for item in dist.backends.iterdir():
        if item.is_dir() and item.name != "python":
            (out / item.name).symlink_to(item)
    return out


def stub_environment() -> dict[str, str]:
    """The server's environment: the stub loads this interpreter's libpython and finds this environment's
    packages (the embedded interpreter locates its prefix from the first python on PATH)."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = [libdir] if libdir else []
    env["LD_LIBRARY_PATH"] = ":".join([*paths, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    package_root = str(Path(__file__).resolve().parents[2])  # the directory that holds this trtformer
    env["PYTHONPATH"] = ":".join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    return env


@dataclass
class TritonServer:
    """One tritonserver process over a model repository. `start` returns once every model is ready (or raises
    with the server's log tail); `stop` sends SIGTERM, then SIGKILL after `grace` seconds."""

    repository: Path
    workdir: Path
    ports: Ports = field(default_factory=Ports)
    host: str = "127.0.0.1"
    log_path: Path | None = None
    verbose: int = 0
    process: subprocess.Popen | None = None

    def command(self, dist: Distribution) -> list[str]:
        p = self.ports
        # The Python backend's shared-memory regions are named per server, so servers side by side never meet.
        shm = f"python,shm-region-prefix-name=trtformer{os.getpid()}_{p.http}_"
        return [str(dist.server), f"--model-repository={self.repository}", f"--backend-directory={self.backend_dir}",
                f"--backend-config={shm}", f"--http-address={self.host}", f"--http-port={p.http}",
                f"--grpc-address={self.host}", f"--grpc-port={p.grpc}", f"--metrics-address={self.host}",
                f"--metrics-port={p.metrics}", "--allow-metrics=true", "--allow-gpu-metrics=false",
                "--exit-timeout-secs=10", f"--log-verbose={self.verbose}", "--strict-readiness=true"]  # fmt: skip

    def url(self, protocol: str = "http") -> str:
        return f"{self.host}:{getattr(self.ports, protocol)}"

    def start(self, timeout: float = 120.0) -> TritonServer:
        dist = find_distribution()
        self.ports = self.ports.resolved(self.host)
        self.backend_dir = backend_directory(dist, self.workdir)
        self.log_path = self.log_path or self.workdir / "tritonserver.log"
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(self.command(dist), stdout=out, stderr=subprocess.STDOUT,
                                            env=stub_environment(), start_new_session=True)
        log.info("tritonserver pid %d: http %s, grpc %s, metrics %s", self.process.pid, self.url("http"),
                 self.url("grpc"), self.url("metrics"))
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.url()}/v2/health/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BackendError(f"tritonserver exited with code {self.process.returncode} while starting: "
                                   f"{self.log_tail()}", hint=f"its log is {self.log_path}")
            if self.ready():
                return
            time.sleep(0.2)
        raise BackendError(f"tritonserver was not ready after {timeout:.0f} s: {self.log_tail()}",
                           hint=f"its log is {self.log_path}")

    def log_tail(self, lines: int = 3) -> str:
        """The server's last error lines (model load failures say why there), else its last lines."""
        text = self.log_path.read_text(errors="replace").splitlines() if self.log_path and self.log_path.exists() else []
        errors = [line for line in text if line.startswith("E") or "error" in line.lower()]
        return " | ".join((errors or text)[-lines:]).strip() or "no output"

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM (Triton unloads its models and exits), SIGKILL to the process group after `grace` seconds."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(grace)
        except subprocess.TimeoutExpired:
            log.warning("tritonserver did not stop within %.0f s; killing it", grace)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait(10)

    def __enter__(self) -> TritonServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
