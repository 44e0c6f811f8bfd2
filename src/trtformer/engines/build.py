"""An artifact graph's ONNX -> TensorRT or TensorRT-RTX engine in ARTIFACT/engines/, recorded in the manifest.

One code path for both flavors: a strongly typed network (precision lives in the ONNX), the ONNX parser,
one optimisation profile from the graph's dims, the compute capability targets, and
`build_serialized_network`. TensorRT's own messages and build phases go to logging, never to stdout.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..artifact import Artifact, EngineRecord
from ..errors import EngineError
from ..trt import flavors
from ..trt.flavors import Targets, Toolkit
from ..trt.logger import make_logger
from ..trt.plugins import register_plugins
from . import cache, profiles
from .profiles import DimRange, Profile

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True)
class EngineBuild:
    path: Path  # the engine file
    name: str  # its key in manifest.engines
    record: EngineRecord
    cached: bool  # True when an intact engine with the same key was reused
    seconds: float


def _make_monitor(trt):
    """A trt.IProgressMonitor that logs the outer build phases at INFO (nested ones at DEBUG) and, in a long
    phase, the step it has reached every PROGRESS_EVERY_S seconds."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.phases: dict[str, tuple[int, int, float]] = {}  # name -> (depth, steps, start time)
            self.reported = time.perf_counter()

        def _level(self, depth: int) -> int:
            return logging.INFO if depth <= 1 else logging.DEBUG

        def phase_start(self, phase_name, parent_phase, num_steps):
            depth = self.phases[parent_phase][0] + 1 if parent_phase in self.phases else 0
            self.phases[phase_name] = (depth, num_steps, time.perf_counter())
            log.log(self._level(depth), "%s%s", "  " * depth, phase_name)

        def step_complete(self, phase_name, step):
            now = time.perf_counter()
            if now - self.reported >= PROGRESS_EVERY_S and phase_name in self.phases:
                self.reported = now
                log.info("%s: step %d of %d", phase_name, step + 1, self.phases[phase_name][1])
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            depth, _, start = self.phases.pop(phase_name, (0, 0, time.perf_counter()))
            log.log(self._level(depth), "%s%s done in %.1f s", "  " * depth, phase_name, time.perf_counter() - start)

    return Monitor()


def _reason(desc: str, code: str) -> str:
    """The readable part of a parser error, which often quotes the check that failed as source text."""
    desc = desc.strip()
    if desc in ("", "false"):
        return "TensorRT does not support this op" if code == "UNSUPPORTED_NODE" else "TensorRT rejected the node"
    if desc.startswith("Assertion failed:") and "): " in desc:
        return desc.partition("): ")[2]  # `Assertion failed: (cond): message`
    if desc.count('"') >= 2:
        return desc.split('"')[1]  # `creator && "Plugin not found, ..."`
    return " ".join(desc.split())


def parser_failure(parser, onnx_name: str, logged: str = "") -> EngineError:
    """One error naming every node the parser rejected: name, op type, reason, local function if any."""
    problems = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        node = f"node {e.node_name()!r}" if e.node_name() else f"node #{e.node()}"
        where = ""
        if e.local_function_stack_size():
            where = f" inside local function {' > '.join(e.local_function_stack())}"
        problems.append(f"{node} (op {e.node_operator()}){where}: {_reason(e.desc(), e.code().name)} [{e.code().name}]")
    return EngineError(f"cannot parse {onnx_name}: " + ("; ".join(problems) or logged),
                       hint="export the portable form, or a model whose ops TensorRT supports")


def _network_flags(trt) -> int:
    # Precision is in the ONNX: strongly typed networks keep it (and are the only kind TensorRT 11 and RTX build).
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _add_profile(builder, config, network, profile: Profile) -> None:
    opt = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        if t.name not in profile.shapes:
            raise EngineError(f"the network input {t.name!r} is not among the manifest's inputs")
        corners = profile.shapes[t.name]
        if len(corners["min"]) != len(t.shape):
            raise EngineError(f"{t.name} has rank {len(t.shape)} in the ONNX, {len(corners['min'])} in the manifest")
        opt.set_shape(t.name, corners["min"], corners["opt"], corners["max"])
    if config.add_optimization_profile(opt) < 0:
        raise EngineError(f"TensorRT rejected the profile {profile.summary()}")


def load_timing_cache(config, path: Path | None):
    """A timing cache from `path` (empty when the file is not there yet), set on the config."""
    blob = path.read_bytes() if path is not None and path.is_file() else b""
    timing = config.create_timing_cache(blob)
    if timing is None or not config.set_timing_cache(timing, False):
        raise EngineError(f"TensorRT cannot use the timing cache {path}", hint="delete the file; the next build writes a new one")
    return timing


def save_timing_cache(config, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))
    tmp.replace(path)


def compile_engine(kit: Toolkit, onnx_path: Path, profile: Profile, targets: Targets, timing_cache: Path | None = None):
    """Parse, configure and build; returns the serialized engine (a buffer). Raises EngineError on failure."""
    trt = kit.trt
    logger = make_logger(trt)
    try:
        builder = trt.Builder(logger)
    except (TypeError, RuntimeError) as exc:  # pybind reports a failed constructor as one of these
        raise EngineError(f"{kit.label} cannot create a builder: {logger.last_errors()}") from exc
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    t0 = time.perf_counter()
    # parse_from_file finds external data next to the graph.
    if not parser.parse_from_file(str(onnx_path)):
        raise parser_failure(parser, onnx_path.name, logger.last_errors())
    log.info("parsed %s (%d layers) in %.1f s", onnx_path.name, network.num_layers, time.perf_counter() - t0)
    config = builder.create_builder_config()
    _add_profile(builder, config, network, profile)
    if targets.values:
        config.num_compute_capabilities = len(targets.values)
        for i, value in enumerate(targets.values):
            if not config.set_compute_capability(value, i):
                raise EngineError(f"{kit.label} rejected compute capability {targets.labels[i]}")
    use_timing_cache = timing_cache is not None and not kit.ahead_of_time
    if timing_cache is not None and kit.ahead_of_time:
        log.warning("%s ignores timing caches (their operations are no-ops since 1.2); %s is left as it is", kit.label, timing_cache)
    if use_timing_cache:
        load_timing_cache(config, timing_cache)
    monitor = _make_monitor(trt)  # held here: TensorRT does not keep the Python object alive
    config.progress_monitor = monitor
    log.info("building with %s for compute capability %s; profile %s", kit.label, ", ".join(targets.labels), profile.summary())
    data = builder.build_serialized_network(network, config)
    if data is None:
        raise EngineError(f"{kit.label} failed to build the engine: {logger.last_errors()}",
                          hint="run with -v for TensorRT's messages")
    if use_timing_cache:
        save_timing_cache(config, timing_cache)
    return data


def build_engine(
    artifact: str | Path | Artifact,
    *,
    graph: str | None = None,
    flavor: str = "auto",
    profile: list[str] | dict[str, DimRange] | None = None,
    compute_capability: list[str] | None = None,
    timing_cache: str | Path | None = None,
    rebuild: bool = False,
) -> EngineBuild:
    """Build (or reuse) the engine of one graph's ONNX for one flavor, profile and set of targets.

    graph: the artifact graph to build; by default its only graph.
    profile: overrides such as ["batch=1:4:32"]; every other dim comes from the graph (see profiles.py).
    compute_capability: targets such as ["8.6", "12.0"] or ["current"]; see trt.flavors.targets for the defaults.
    A failed build leaves the manifest and the engines already in the artifact untouched.
    """
    art = artifact if isinstance(artifact, Artifact) else Artifact.load(artifact, verify=False)
    spec = art.graph(graph)
    art.verify(cache.onnx_files(art.manifest, spec))
    prof = profiles.resolve(spec, profile)
    kit = flavors.load(flavor)
    targets = flavors.targets(kit, compute_capability)
    key = cache.cache_key(cache.onnx_sha256(art.manifest, spec), kit, targets, prof)
    name = cache.engine_name(kit.name, key, spec.name)
    if not rebuild and (record := cache.cached(art, name, key)) is not None:
        log.info("%s is up to date (same ONNX, %s, targets and profile)", name, kit.label)
        return EngineBuild(art.path / name, name, record, True, 0.0)
    onnx_path = art.model_path("plain", spec.name)
    plugins = register_plugins(art.manifest) if kit.plugin_layers else []
    t0 = time.perf_counter()
    data = compile_engine(kit, onnx_path, prof, targets, Path(timing_cache) if timing_cache is not None else None)
    seconds = time.perf_counter() - t0
    view = memoryview(data)
    record = cache.make_record(key=key, sha256=hashlib.sha256(view).hexdigest(), nbytes=view.nbytes, kit=kit,
                               targets=targets, profile=prof, manifest=art.manifest, graph=spec, seconds=seconds,
                               plugins=plugins)  # fmt: skip
    try:
        art.manifest = cache.commit(art.path, name, view, record)
    except OSError as exc:
        raise EngineError(f"cannot store the engine in {art.path}: {exc}", hint="check the artifact directory's permissions and free space") from exc
    log.info("built %s (%.1f MB) in %.1f s", name, view.nbytes / 1e6, seconds)
    return EngineBuild(art.path / name, name, record, False, seconds)
