"""`trtformer doctor`: what this machine has and what that means for each backend; with `--run`, proof that it works.

Without --run it only looks (versions, providers, the GPU through the driver API, plugin registration) and exports
nothing, so it answers in seconds. With --run it exports the tiny preset of every family in each form it has, builds
the engines of every toolkit installed (TensorRT-RTX ahead of time on any machine, full TensorRT on a GPU), checks
parity on every backend that can run here, runs a CUDA-graph decode (KV cache) and a CUDA-graph stream (segment
memory) on the tensorrt backend, and checks that full TensorRT made plugin-form engines with plugin layers. Each
artifact is one job (export, builds, parity, state runs), jobs run in parallel processes, and a row says what ran,
passed, failed or was skipped and why. `--workdir` keeps the artifacts, and a later run reuses those that the same
trtformer and torch exported and that still verify.

Only `command` prints; everything else returns rows.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import __version__
from .errors import ArtifactError, InputError, TrtformerError
from .trt import flavors

log = logging.getLogger(__name__)

FORMS = ("portable", "plugin")
GPU_BACKENDS = ("torch-cuda", "torch-cuda-triton", "ort-cuda", "tensorrt")
PASS, FAIL, SKIPPED, ERROR = "pass", "FAIL", "skipped", "error"
DECODE_TOKENS, STREAM_SEGMENTS = 16, 10
STATE_ATOL = 1e-3  # the state runs compare fp32 engines with the torch reference, as the GPU tests do


# ---------------------------------------------------------------------------------------------- what the machine has


@dataclass(frozen=True)
class Fact:
    name: str
    value: str


@dataclass
class Machine:
    facts: list[Fact]
    backends: dict[str, str | None]  # backend -> None when it can run here, else why not
    build_flavors: dict[str, str | None]  # TensorRT flavor -> None when it can build here, else why not
    run_flavor: str | None  # the flavor the tensorrt backend runs engines of
    plugin_problem: str | None  # why plugin-form engines will have no plugin layers here, or None


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _toolkit(name: str) -> tuple[flavors.Toolkit | None, str]:
    """The flavor's toolkit, or None with why not."""
    fl = flavors.FLAVORS[name]
    if not flavors.installed(name):
        return None, f"not installed (pip install 'trtformer[{fl.extra}]')"
    try:
        return flavors.load(name), ""
    except TrtformerError as exc:
        return None, f"not usable: {exc.one_line()}"


def _plugins(kit: flavors.Toolkit | None, why_not: str) -> str:
    """Which trtformer plugins register in full TensorRT, or why none does."""
    from .plugins.registry import PLUGINS

    if kit is None:
        return f"{', '.join(PLUGINS)}: not registered (full TensorRT is {why_not}; TensorRT-RTX inlines the plugin form)"
    done = []
    for name, plugin in PLUGINS.items():
        try:
            plugin.load_trt().register()
            done.append(f"{name} registered")
        except TrtformerError as exc:
            done.append(f"{name} not registered: {exc.one_line()}")
        except Exception as exc:  # a plugin class TensorRT's bindings refuse: the doctor reports it, not crash
            done.append(f"{name} not registered: {type(exc).__name__}: {exc}")
    return "; ".join(done)


def probe() -> Machine:
    """Look at this machine without exporting or building anything."""
    import onnxruntime
    import torch

    from .runtime.backends import REGISTRY

    device, capability = flavors.device_name(), flavors.device_capability()
    cuda = torch.cuda.is_available()
    full, full_why = _toolkit("tensorrt")
    rtx, rtx_why = _toolkit("tensorrt-rtx")
    providers = onnxruntime.get_available_providers()
    triton = _version("triton")

    facts = [Fact("trtformer", f"{__version__} (Python {platform.python_version()})")]
    cuda_text = f"CUDA {torch.version.cuda}, {'sees the GPU' if cuda else 'sees no GPU'}" if torch.version.cuda else "CPU build"
    facts.append(Fact("torch", f"{torch.__version__} ({cuda_text})"))
    facts.append(Fact("GPU", f"{device}, compute capability {capability}" if device else "none visible (no CUDA driver or GPU)"))
    if full is not None:
        facts.append(Fact("TensorRT", f"{full.version}: builds for and runs on this GPU"
                                      + (f"; {problem}" if (problem := full.plugin_problem()) else "; runs the plugins")))
    else:
        facts.append(Fact("TensorRT", full_why))
    if rtx is not None:
        targets = flavors.rtx_capabilities(rtx.trt)
        default = [t for t in targets if t not in flavors.RTX_OPT_IN]
        asked = [t for t in targets if t in flavors.RTX_OPT_IN]
        here = "" if capability is None else "; runs on this GPU" if capability in targets else f"; cannot run on this GPU ({capability})"
        facts.append(Fact("TensorRT-RTX", f"{rtx.version}: builds ahead of time for {', '.join(default)}"
                                          + (f" ({', '.join(asked)} on request)" if asked else "") + f"{here}; no plugin layers"))
    else:
        facts.append(Fact("TensorRT-RTX", rtx_why))
    facts.append(Fact("ONNX Runtime", f"{onnxruntime.__version__}: {', '.join(providers)}"))
    facts.append(Fact("Triton", f"{triton}" + ("" if cuda else " (its kernels need a CUDA GPU)") if triton else
                      "not installed (pip install 'trtformer[triton]')"))  # fmt: skip
    facts.append(Fact("plugins", _plugins(full, full_why)))

    no_gpu = f"no CUDA GPU (torch {torch.__version__} sees none)"
    run_flavor, tensorrt_why = None, None
    if not cuda:
        tensorrt_why = no_gpu + ("; engines still build ahead of time with TensorRT-RTX" if rtx is not None else "")
    elif full is not None:
        run_flavor = "tensorrt"
    elif rtx is not None and capability in flavors.rtx_capabilities(rtx.trt):
        run_flavor = "tensorrt-rtx"
    else:
        tensorrt_why = (f"full TensorRT is {full_why}" + (f", and TensorRT-RTX cannot run on compute capability "
                                                         f"{capability}" if rtx is not None else ""))  # fmt: skip
    backends = {
        "torch": None,
        "ort-cpu": None if "CPUExecutionProvider" in providers else "onnxruntime has no CPUExecutionProvider",
        "torch-cuda": None if cuda else no_gpu,
        "torch-cuda-triton": (no_gpu if not cuda else None if triton else "triton is not installed (pip install 'trtformer[triton]')"),
        "ort-cuda": (no_gpu if not cuda else None if "CUDAExecutionProvider" in providers
                     else "onnxruntime has no CUDAExecutionProvider (pip install 'trtformer[ort-gpu]')"),
        "tensorrt": tensorrt_why,
    }  # fmt: skip
    # In the registry's order; a backend registered after the doctor was written is named, not guessed at.
    unknown = "not checked by the doctor, which does not know what it needs: try `trtformer parity ARTIFACT --backend {}`"
    for name, (_, _, defaults) in REGISTRY.items():
        if name not in backends:
            backends[name] = no_gpu if defaults.get("device") == "cuda" and not cuda else unknown.format(name)
    backends = {name: backends[name] for name in REGISTRY}
    build = {"tensorrt": None if full is not None and capability is not None else
             f"full TensorRT is {full_why}" if full is None else "full TensorRT builds on the GPU it targets, and none is visible",
             "tensorrt-rtx": None if rtx is not None else f"TensorRT-RTX is {rtx_why}"}  # fmt: skip
    plugin_problem = full.plugin_problem() if full is not None else f"full TensorRT is {full_why}"
    return Machine(facts, backends, build, run_flavor, plugin_problem)


# ---------------------------------------------------------------------------------------------- rows and jobs


@dataclass
class Row:
    step: str  # export, build, plugin layers, parity, cuda-graph decode, cuda-graph stream
    subject: str  # "tiny-gpt2 portable", or what a skipped row stands for
    target: str  # the backend or toolkit; "" for an export
    result: str  # pass, FAIL, skipped, error
    seconds: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class Job:
    """One artifact and everything that runs on it."""

    preset: str
    form: str
    path: str
    builds: tuple[str, ...]  # flavors to build
    backends: tuple[str, ...]  # backends to check parity on
    run_flavor: str | None  # the tensorrt backend's flavor, None when it cannot run here
    threads: int

    @property
    def subject(self) -> str:
        return f"{self.preset} {self.form}"


def tiny_presets() -> dict[str, str]:
    """family -> its first tiny preset, in registry order."""
    from .families import FAMILIES, PRESETS

    out = {}
    for name in FAMILIES:
        found = [p for p, entry in PRESETS.items() if entry.family == name and p.startswith("tiny-")]
        if found:
            out[name] = found[0]
    return out


def reusable(path: Path, preset: str, form: str) -> bool:
    """True when `path` holds an fp32 artifact of `preset` in `form` that this trtformer and torch exported and that
    still verifies: a doctor run may use it instead of exporting again."""
    import torch

    from .artifact import Artifact

    try:
        m = Artifact.load(path, verify=True).manifest
    except ArtifactError:
        return False
    versions = m.versions or {}
    return (m.source, m.form, m.precision, versions.get("trtformer"), versions.get("torch")) == (
        preset, form, "fp32", __version__, torch.__version__)  # fmt: skip


def _timed(rows: list[Row], step: str, subject: str, target: str, work: Callable[[], tuple[str, str]]) -> bool:
    """Run `work` (-> result, detail) as one row; an exception is an error row. True when the row passed."""
    t0 = time.perf_counter()
    try:
        result, detail = work()
    except TrtformerError as exc:
        result, detail = ERROR, exc.one_line()
    except Exception as exc:  # the doctor reports what broke and carries on with the other rows
        log.debug("%s of %s on %s failed", step, subject, target, exc_info=True)
        result, detail = ERROR, f"{type(exc).__name__}: {exc}".splitlines()[0]
    rows.append(Row(step, subject, target, result, round(time.perf_counter() - t0, 2), detail))
    return result == PASS


def _export(job: Job) -> tuple[str, str]:
    from .exporter.export import export

    path = Path(job.path)
    if reusable(path, job.preset, job.form):
        return PASS, f"reused {path}"
    export(job.preset, path, form=job.form, overwrite=path.exists())
    return PASS, str(path)


def _build(job: Job, flavor: str) -> tuple[str, str]:
    """An engine of every graph of the artifact (an encoder-decoder has two)."""
    from .artifact import Artifact
    from .engines import build_engine

    graphs = list(Artifact.load(job.path, verify=False).manifest.graphs)
    done = []
    for graph in graphs:
        built = build_engine(job.path, graph=graph, flavor=flavor)
        r = built.record
        layers = f"plugin layers: {', '.join(r.plugins)}" if r.plugins else "no plugin layers"
        what = f"{'reused, ' if built.cached else ''}{r.bytes / 1e6:.1f} MB, {layers}"
        done.append(what if len(graphs) == 1 else f"{graph}: {what}")
    return PASS, f"compute capability {', '.join(r.compute_capability)}; {'; '.join(done)}"


def _plugin_layers(job: Job) -> tuple[str, str]:
    """Full TensorRT's engine of a plugin-form artifact must list every plugin the artifact uses."""
    from .artifact import Artifact
    from .engines.cache import records

    art = Artifact.load(job.path, verify=False)
    want = sorted(p.name for p in art.manifest.plugins)
    got = [r for r in records(art.manifest).values() if r.flavor == "tensorrt"]
    if not got:
        return FAIL, "no full-TensorRT engine was built"
    missing = sorted(set(want) - set(got[-1].plugins))
    return (FAIL, f"the engine lacks plugin layers of {', '.join(missing)}") if missing else (PASS, ", ".join(want))


def _parity(job: Job, backend: str) -> tuple[str, str]:
    from .parity import check_parity

    options = {"flavor": job.run_flavor} if backend == "tensorrt" else {"threads": job.threads}
    report = check_parity(job.path, backend=backend, write=False, **options)
    judged = [c for c in report.comparisons if c.passed is not None]
    failed = [c for c in judged if not c.passed]
    if failed:
        worst = max(failed, key=lambda c: c.max_abs)
        return FAIL, f"{len(failed)} of {len(judged)} comparisons failed; worst {worst.case} {worst.output} max abs {worst.max_abs:.2e}"
    return PASS, f"{len(judged)} comparisons; max abs {max(c.max_abs for c in judged):.1e}"


def _graphs(job: Job, backend: str) -> dict:
    """The options of the state runs: the tensorrt backend with CUDA graphs (other backends run them in the tests)."""
    return {"flavor": job.run_flavor, "cuda_graphs": True} if backend == "tensorrt" else {}


def _decode(job: Job, backend: str = "tensorrt") -> tuple[str, str]:
    """Greedy decoding with the KV cache on the backend (CUDA graphs on tensorrt), token for token against the
    torch reference."""
    import numpy as np

    from .runtime.generate import generate
    from .runtime.session import Session

    prompts = np.random.default_rng(0).integers(1, 64, (2, 5)).tolist()
    with Session.open(job.path, backend=backend, **_graphs(job, backend)) as ours, \
            Session.open(job.path, backend="torch") as ref:  # fmt: skip
        got = generate(ours, prompts, max_new_tokens=DECODE_TOKENS, ignore_eos=True).tokens
        want = generate(ref, prompts, max_new_tokens=DECODE_TOKENS, ignore_eos=True).tokens
    same = sum(a == b for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=True))
    total = sum(len(w) for w in want)
    return (PASS if got == want else FAIL), f"{same} of {total} new tokens as the torch reference (greedy)"


def _stream(job: Job, backend: str = "tensorrt") -> tuple[str, str]:
    """Segments with the memory carried on the backend (in CUDA graphs on tensorrt, which must replay some), against
    the torch reference."""
    import numpy as np

    from .runtime.session import Session
    from .runtime.stream import Stream

    rng = np.random.default_rng(0)
    with Session.open(job.path, backend=backend, **_graphs(job, backend)) as session, \
            Session.open(job.path, backend="torch") as ref:  # fmt: skip
        ours, theirs = Stream(session, batch=2), Stream(ref, batch=2)
        dim = session.graph.dims.get(session.graph.sequence_dim)
        seg = dim.opt if dim is not None else 8  # a segment of the length the model is typically fed
        worst = 0.0
        for _ in range(STREAM_SEGMENTS):
            ids = rng.integers(0, 64, (2, seg))
            worst = max(worst, float(np.abs(ours.feed(ids) - theirs.feed(ids)).max()))
        cache = getattr(session.backend, "graphs", None)  # the tensorrt backend's CUDA graphs
        graphs = None if cache is None else len(cache.graphs)
    detail = f"{STREAM_SEGMENTS} segments, max abs {worst:.1e}" + ("" if graphs is None else f", {graphs} CUDA graphs")
    return (PASS if worst <= STATE_ATOL and graphs != 0 else FAIL), detail


def run_job(job: Job) -> list[Row]:
    """Export (or reuse), build, parity, state runs for one artifact; every step a row. A failed export skips the rest."""
    rows: list[Row] = []
    if not _timed(rows, "export", job.subject, "", lambda: _export(job)):
        return rows
    for flavor in job.builds:
        if _timed(rows, "build", job.subject, flavor, lambda f=flavor: _build(job, f)) and flavor == "tensorrt" and job.form == "plugin":
            _timed(rows, "plugin layers", job.subject, "tensorrt", lambda: _plugin_layers(job))
    for backend in job.backends:
        _timed(rows, "parity", job.subject, backend, lambda b=backend: _parity(job, b))
    if job.run_flavor is not None:
        kinds = _state_kinds(job.path)  # encoder-decoders (several graphs) have no single state kind: no row
        if kinds == {"kv-cache"}:
            _timed(rows, "cuda-graph decode", job.subject, "tensorrt", lambda: _decode(job))
        elif kinds == {"memory"}:
            _timed(rows, "cuda-graph stream", job.subject, "tensorrt", lambda: _stream(job))
    return rows


def _state_kinds(path: str) -> set[str]:
    """The state kinds of a single-graph artifact; empty for an artifact of several graphs."""
    from .artifact import Artifact

    graphs = Artifact.load(path, verify=False).manifest.graphs
    return next(iter(graphs.values())).state_kinds if len(graphs) == 1 else set()


def _quiet_worker(threads: int) -> None:
    """A worker process logs warnings only (its rows carry what went wrong) and shares the cores."""
    import warnings

    import torch

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("onnxscript", "onnx_ir", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class Report:
    machine: Machine
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        return {r: sum(row.result == r for row in self.rows) for r in (PASS, FAIL, ERROR, SKIPPED)}

    @property
    def passed(self) -> bool:
        """Everything that could run passed (skipped rows say what could not)."""
        c = self.counts
        return c[FAIL] == 0 and c[ERROR] == 0

    def to_dict(self) -> dict:
        return {"machine": {f.name: f.value for f in self.machine.facts}, "backends": self.machine.backends,
                "rows": [asdict(r) for r in self.rows], "counts": self.counts, "passed": self.passed,
                "seconds": self.seconds}  # fmt: skip


def plan(machine: Machine, workdir: Path, jobs: int, families: list[str] | None = None) -> tuple[list[Job], list[Row]]:
    """The jobs to run (every family, or those named), and a skipped row for everything this machine cannot do, with
    its reason."""
    from .families import FAMILIES

    threads = max(1, (os.cpu_count() or 1) // jobs)
    builds = tuple(f for f, why in machine.build_flavors.items() if why is None)
    backends = tuple(b for b, why in machine.backends.items() if why is None)
    planned, skipped = [], []
    presets = tiny_presets()
    for name, fam in FAMILIES.items():
        if families and name not in families:
            continue
        if name not in presets:
            skipped.append(Row("export", f"the {name} family", "", SKIPPED, detail="it has no tiny preset"))
            continue
        for form in FORMS if fam.has_plugin_form else FORMS[:1]:
            path = workdir / f"{presets[name]}-{form}"
            planned.append(Job(presets[name], form, str(path), builds, backends, machine.run_flavor, threads))
    for flavor, why in machine.build_flavors.items():
        if why is not None:
            skipped.append(Row("build", "every artifact", flavor, SKIPPED, detail=why))
    # Full TensorRT's plugin-form engines are checked in their jobs; where it cannot build them, say why once.
    if (why := machine.plugin_problem or machine.build_flavors["tensorrt"]) is not None:
        skipped.append(Row("plugin layers", "plugin-form artifacts", "tensorrt", SKIPPED, detail=why))
    for backend, why in machine.backends.items():
        if why is not None:
            skipped.append(Row("parity", "every artifact", backend, SKIPPED, detail=why))
    if machine.run_flavor is None:
        why = machine.backends["tensorrt"]
        skipped.append(Row("cuda-graph decode", "KV-cache artifacts", "tensorrt", SKIPPED, detail=why))
        skipped.append(Row("cuda-graph stream", "segment-memory artifacts", "tensorrt", SKIPPED, detail=why))
    return planned, skipped


def run(machine: Machine, workdir: Path | None = None, jobs: int | None = None, families: list[str] | None = None) -> Report:
    """Every job of `plan`, in `jobs` processes (1: in this process); rows in plan order, skipped rows last."""
    t0 = time.perf_counter()
    if workdir is not None and workdir.exists() and not workdir.is_dir():
        raise InputError(f"--workdir {workdir} is a file, not a directory")
    with tempfile.TemporaryDirectory(prefix="trtformer-doctor-") as tmp:
        root = Path(workdir if workdir is not None else tmp)
        root.mkdir(parents=True, exist_ok=True)
        count = jobs or min(4, os.cpu_count() or 1)
        planned, skipped = plan(machine, root, count, families)
        report = Report(machine)
        workers = min(count, len(planned))
        if workers <= 1:
            results = [run_job(job) for job in planned]
        else:
            import multiprocessing

            # spawn: a fork of a process that has touched CUDA or torch's threads is not safe
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_quiet_worker,
                                     initargs=(planned[0].threads,)) as pool:  # fmt: skip
                futures = [pool.submit(run_job, job) for job in planned]
                results = [_result(future, job) for future, job in zip(futures, planned, strict=True)]
        report.rows = [row for rows in results for row in rows] + skipped
    report.seconds = round(time.perf_counter() - t0, 1)
    return report


def _result(future, job: Job) -> list[Row]:
    """A job's rows, or one error row when its process died (a crash in native code takes the worker with it)."""
    try:
        return future.result()
    except Exception as exc:
        return [Row("job", job.subject, "", ERROR, detail=f"the worker process failed: {type(exc).__name__}: {exc}")]


# ---------------------------------------------------------------------------------------------- the command


def machine_table(machine: Machine) -> str:
    width = max(len(f.name) for f in machine.facts)
    lines = ["this machine"] + [f"  {f.name:<{width}}  {f.value}" for f in machine.facts]
    lines += ["", "backends"]
    width = max(map(len, machine.backends))
    lines += [f"  {name:<{width}}  {'ready' if why is None else 'no: ' + why}" for name, why in machine.backends.items()]
    return "\n".join(lines)


def rows_table(report: Report) -> str:
    heads = ("step", "artifact", "target", "result", "seconds", "detail")
    cells = [(r.step, r.subject, r.target or "-", r.result, "-" if r.seconds is None else f"{r.seconds:.1f}", r.detail)
             for r in report.rows]  # fmt: skip
    widths = [max(len(str(x)) for x in col) for col in zip(heads, *cells, strict=True)][:5]
    fmt = lambda row: "  ".join(f"{v:<{w}}" if i != 4 else f"{v:>{w}}" for i, (v, w) in enumerate(zip(row, widths, strict=False))) + f"  {row[5]}"  # noqa: E731
    c = report.counts
    summary = (f"{c[PASS]} passed, {c[FAIL]} failed, {c[ERROR]} errors, {c[SKIPPED]} skipped in {report.seconds:.0f} s: "
               + ("everything that could run here passed" if report.passed else "see the rows marked FAIL or error"))
    return "\n".join([fmt(heads), *map(fmt, cells), "", summary])


def command(args, emit) -> int:
    needs_run = [flag for flag, value in (("--workdir", args.workdir), ("--jobs", args.jobs), ("--family", args.family),
                                          ("--json", args.json)) if value is not None]  # fmt: skip
    if needs_run and not args.run:
        raise InputError(f"{', '.join(needs_run)} only make sense with --run", hint="add --run, or drop them")
    if args.json and not Path(args.json).parent.is_dir():
        raise InputError(f"--json {args.json}: its directory does not exist")
    if args.family:  # checked here: the registry imports torch, which building the parser must not
        from .families import FAMILIES

        unknown = [f for f in args.family if f not in FAMILIES]
        if unknown:
            raise InputError(f"--family {', '.join(unknown)}: no such family", hint=f"families: {', '.join(FAMILIES)}")
    machine = probe()
    emit(machine_table(machine))
    if not args.run:
        emit("\n`trtformer doctor --run` exports the tiny presets, builds engines and checks parity on every backend above "
              "that is ready.")
        return 0
    report = run(machine, args.workdir, args.jobs, args.family)
    emit()
    emit(rows_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return 0 if report.passed else 1


def _jobs(text: str) -> int:
    """An argparse type: a process count >= 1."""
    import argparse

    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def add_commands(sub, add_backend_args, emit) -> None:
    """The subcommands; `emit` is the CLI's output (only the CLI prints), bound into each command."""
    d = sub.add_parser("doctor", help="what this machine can run (TensorRT, GPU, providers, plugins); --run proves it")
    d.add_argument("--run", action="store_true",
                   help="export every family's tiny preset in each form, build engines, check parity on every ready backend")
    d.add_argument("--workdir", type=Path, metavar="DIR", help="keep the artifacts here; a later run reuses them (default: a temporary directory)")
    d.add_argument("--jobs", type=_jobs, metavar="N", help="artifacts worked on in parallel processes (default: up to 4, one per core)")
    d.add_argument("--family", nargs="+", action="extend", metavar="NAME",
                   help="only these families (gpt, bert, ...; default: every family trtformer knows)")
    d.add_argument("--json", metavar="PATH", help="also write the report here")
    d.set_defaults(func=functools.partial(command, emit=emit))
