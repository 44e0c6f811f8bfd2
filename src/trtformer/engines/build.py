"""An artifact graph's ONNX -> TensorRT or TensorRT-RTX engine in ARTIFACT/engines/, recorded in the manifest.

One code path for both flavors: a strongly typed network (precision lives in the ONNX), the ONNX parser,
one optimisation profile from the graph's dims, the compute capability targets, and
`build_serialized_network`. TensorRT's own messages and build phases go to logging, never to stdout.

Full TensorRT builds a plugin-form artifact with the trtformer plugins registered, and the parsed network must hold
one plugin layer per plugin-form node (`check_plugin_layers`), else the build fails. TensorRT-RTX engines are built
with REQUIRE_USER_ALLOCATION where the flag exists, which its stream capture (the backend's CUDA graphs) needs.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..artifact import Artifact, EngineRecord, PluginRecord
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


def plugin_layers(trt, network) -> int:
    """How many layers of the parsed network are V3 plugin layers."""
    kind = getattr(trt.LayerType, "PLUGIN_V3", None)
    return 0 if kind is None else sum(network.get_layer(i).type == kind for i in range(network.num_layers))


def check_plugin_layers(kit: Toolkit, network, expected: Sequence[PluginRecord]) -> list[str]:
    """The plugins whose layers the parsed network holds: every plugin-form node must have become a plugin layer.

    TensorRT's ONNX importer prefers a registered plugin over the node's local function only from 10.7 on; before, it
    inlines the function without a word, and the engine would run the portable body under a plugin-form name. Raises
    EngineError when the network holds fewer (or more) plugin layers than the graph has plugin-form nodes."""
    want = sum(p.nodes for p in expected)
    found = plugin_layers(kit.trt, network)
    if found != want:
        names = ", ".join(f"{p.name} ({p.nodes} nodes)" for p in expected)
        raise EngineError(
            f"{kit.label} made {found} plugin layers of the {want} plugin-form nodes ({names}): "
            + ("it inlined their local functions instead of using the registered plugins" if found < want else
               "the network has plugin layers the artifact does not list"),
            hint="install TensorRT >= 10.7 (pip install 'trtformer[tensorrt]'), which prefers registered plugins, or "
                 "export the portable form",
        )  # fmt: skip
    return [p.name for p in expected]


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


def capture_flag(kit: Toolkit):
    """The builder flag TensorRT-RTX's stream capture needs (REQUIRE_USER_ALLOCATION, from RTX 1.2), or None.

    TensorRT-RTX refuses to capture an engine that may allocate while it runs (`is_stream_capturable` says so), and
    the tensorrt backend captures CUDA graphs; full TensorRT captures without it. Every trtformer family builds with
    it; RTX documents that a network needing run-time allocation (NonZero, loops) then fails to build."""
    return getattr(kit.trt.BuilderFlag, "REQUIRE_USER_ALLOCATION", None) if kit.ahead_of_time else None


def configure(kit: Toolkit, builder, network, profile: Profile, targets: Targets):
    """The builder config of a parsed network: stream capture (RTX), the optimisation profile, the targets."""
    config = builder.create_builder_config()
    if (flag := capture_flag(kit)) is not None:
        config.set_flag(flag)
    _add_profile(builder, config, network, profile)
    if targets.values:
        config.num_compute_capabilities = len(targets.values)
        for i, value in enumerate(targets.values):
            if not config.set_compute_capability(value, i):
                raise EngineError(f"{kit.label} rejected compute capability {targets.labels[i]}")
    return config


def compile_engine(kit: Toolkit, onnx_path: Path, profile: Profile, targets: Targets, timing_cache: Path | None = None,
                   plugins: Sequence[PluginRecord] = ()) -> tuple[object, list[str]]:  # fmt: skip
    """Parse, configure and build; returns the serialized engine (a buffer) and the plugins whose layers it holds.

    plugins: the plugin-form nodes that must become plugin layers (full TensorRT with the plugins registered).
    Raises EngineError on failure."""
    trt = kit.trt
    logger = make_logger(trt)
    since = logger.mark()
    errors = lambda: logger.last_errors(since=since)  # noqa: E731
    try:
        builder = trt.Builder(logger)
    except (TypeError, RuntimeError) as exc:  # pybind reports a failed constructor as one of these
        raise EngineError(f"{kit.label} cannot create a builder: {errors()}") from exc
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    t0 = time.perf_counter()
    # parse_from_file finds external data next to the graph.
    if not parser.parse_from_file(str(onnx_path)):
        raise parser_failure(parser, onnx_path.name, errors())
    log.info("parsed %s (%d layers) in %.1f s", onnx_path.name, network.num_layers, time.perf_counter() - t0)
    found = check_plugin_layers(kit, network, plugins) if plugins else []
    config = configure(kit, builder, network, profile, targets)
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
        raise EngineError(f"{kit.label} failed to build the engine: {errors()}", hint="run with -v for TensorRT's messages")
    if use_timing_cache:
        save_timing_cache(config, timing_cache)
    return data, found


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
    # Full TensorRT: the plugins go in before parsing, so that each plugin-form node becomes one plugin layer, which
    # compile_engine counts. TensorRT-RTX has no plugin layers and inlines the nodes' local functions.
    expected = art.manifest.plugins if kit.plugin_layers else ()
    if expected:
        register_plugins(art.manifest)
    t0 = time.perf_counter()
    data, plugins = compile_engine(kit, onnx_path, prof, targets, Path(timing_cache) if timing_cache is not None else None,
                                   expected)  # fmt: skip
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
