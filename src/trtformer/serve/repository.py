"""Model repositories: the Python-backend repository `trtformer serve` runs, and a repository for Triton's own
backends (onnxruntime, tensorrt) that runs without Python.

The serving repository's models read their artifact where it lies; `1/model.py` imports
trtformer.serve.triton_model. The portable repository copies the ONNX (with its external data) or a TensorRT
engine into `1/` and declares the manifest's inputs and outputs; stateful graphs get the sequence batcher with
each state pair as implicit state, so the KV cache or the memory stays in the server between the requests of a
sequence (a zero-length past or memory to start, which every trtformer graph accepts).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..artifact import Artifact, atomic_directory
from ..errors import ArtifactError, InputError
from .config import Port, model_config, tensor_dims, triton_type, write_config
from .models import ENCODER, ServedModel, kind_of, served_models

MODEL_PY = "from trtformer.serve.triton_model import TritonPythonModel  # noqa: F401\n"
NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def model_name(artifact: Path, name: str | None) -> str:
    text = name or Path(artifact).resolve().name
    if not NAME.match(text):
        raise InputError(f"model name {text!r} may hold only letters, digits, '_', '-' and '.'", hint="pass --name")
    return text


@dataclass(frozen=True)
class Batching:
    max_batch_size: int = 32
    max_queue_delay_us: int = 2000
    instances: int = 1


DEFAULT_BATCHING = Batching()


def write_serving_model(repo: Path, model: ServedModel, artifact: Artifact, backend: str, options: dict,
                        graph: str | None, batching: Batching) -> Path:
    directory = repo / model.name
    (directory / "1").mkdir(parents=True)
    (directory / "1" / "model.py").write_text(MODEL_PY)
    params = {"artifact": str(artifact.path.resolve()), "backend": backend, "kind": model.kind,
              "graph": graph or "", "options": json.dumps(options)}
    batched = model.batched and batching.max_batch_size > 0
    cfg = model_config(model.name, "python", model.inputs, model.outputs,
                       max_batch_size=batching.max_batch_size if batched else 0,
                       max_queue_delay_us=batching.max_queue_delay_us if batched else None,
                       instances=batching.instances, decoupled=model.decoupled, parameters=params)
    if not batched and model.batched:  # without the batcher every dim is explicit, the batch axis first
        for tensor in (*cfg.input, *cfg.output):
            tensor.dims.insert(0, -1)
            tensor.allow_ragged_batch = False
    return write_config(directory, cfg)


def serving_repository(repo: Path, artifacts: list[tuple[str, Artifact]], backend: str, options: dict,
                       graph: str | None, batching: Batching) -> list[ServedModel]:
    """Write one model (two for a generator: plain and streaming) per artifact into `repo` (an empty dir)."""
    models = []
    for name, art in artifacts:
        for model in served_models(art, name, graph):
            if model.name in {m.name for m in models}:
                raise InputError(f"two artifacts would both serve as {model.name!r}", hint="give each a --name")
            write_serving_model(repo, model, art, backend, options, graph, batching)
            models.append(model)
    return models


# ------------------------------------------------------------------------------ Triton's own backends


def _ports(tensors, batched: bool) -> list[Port]:
    return [Port(t.name, triton_type(t.dtype), tensor_dims(t.shape, batched)) for t in tensors]


def _state_ports(graph) -> list[tuple[Port, Port, tuple[int, ...]]]:
    """Each state pair as Triton implicit state: full dims (the batch axis included, as max_batch_size is 0) and a
    zero initial state of one row with the growing axis at length 0."""
    states = []
    for pair in graph.state:
        t_in, t_out = graph.input(pair.input), graph.output(pair.output)
        batch_axis = next(i for i, d in enumerate(t_in.shape) if d == "batch")
        initial = tuple(0 if i == pair.axis else 1 if i == batch_axis else d for i, d in enumerate(tensor_dims(t_in.shape, False)))
        if -1 in initial:
            raise ArtifactError(f"state {pair.input} has a dim besides batch and {pair.axis} that is not fixed: {t_in.shape}")
        states.append((Port(t_in.name, triton_type(t_in.dtype), tensor_dims(t_in.shape, False)),
                       Port(t_out.name, triton_type(t_out.dtype), tensor_dims(t_out.shape, False)), initial))
    return states


def _engine_file(art: Artifact, graph) -> Path:
    engines = [(n, r) for n, r in art.manifest.engines.items() if r.graph == graph.name and r.flavor == "tensorrt"]
    if not engines:
        raise InputError(f"{art.path} has no full-TensorRT engine for graph {graph.name}; Triton's tensorrt backend "
                         "cannot run TensorRT-RTX engines",
                         hint="trtformer build ARTIFACT --flavor tensorrt, on a GPU like the server's")  # fmt: skip
    name, _ = max(engines, key=lambda e: e[1].created)
    return art.file(name)


def write_portable_repository(artifact: str | Path, out: str | Path, backend: str = "onnxruntime",
                              name: str | None = None, variant: str = "default", graph: str | None = None,
                              batching: Batching = DEFAULT_BATCHING) -> Path:
    """A repository of one model for Triton's `backend` from the artifact's ONNX (or engine) at `out`, a new
    directory; returns its path."""
    if backend not in ("onnxruntime", "tensorrt"):
        raise InputError(f"unknown Triton backend {backend!r}; choose onnxruntime or tensorrt")
    art = Artifact.load(artifact)
    spec = art.graph(graph)
    name = model_name(art.path, name)
    if Path(out).exists():
        raise InputError(f"{out} already exists; a repository is written to a new directory")
    if backend == "onnxruntime" and any(t.dtype == "bfloat16" for t in (*spec.inputs, *spec.outputs)):
        raise InputError("Triton's onnxruntime backend takes no bfloat16 tensors", hint="export fp32 or fp16 for it")
    stateful = bool(spec.state)
    batched = not stateful and batching.max_batch_size > 0
    state_names = {*spec.state_inputs, *spec.state_outputs}
    inputs = _ports([t for t in spec.inputs if t.name not in state_names], batched)
    outputs = _ports([t for t in spec.outputs if t.name not in state_names], batched)
    with atomic_directory(Path(out)) as tmp:
        version = tmp / name / "1"
        version.mkdir(parents=True)
        if backend == "onnxruntime":
            source = art.model_path(variant, spec.name)
            filename = "model.onnx"
            shutil.copyfile(source, version / filename)
            data = source.with_name(source.name + ".data")  # external data keeps its name: the ONNX refers to it
            if data.exists():
                shutil.copyfile(data, version / data.name)
        else:
            filename = "model.plan"
            shutil.copyfile(_engine_file(art, spec), version / filename)
        # Only encoders gain from batching requests of one length together; other stateless graphs run as sent.
        delay = batching.max_queue_delay_us if batched and _is_encoder(spec) else None
        cfg = model_config(name, backend, inputs, outputs, max_batch_size=batching.max_batch_size if batched else 0,
                           max_queue_delay_us=delay, instances=batching.instances,
                           states=_state_ports(spec) if stateful else (), default_model_filename=filename)
        write_config(tmp / name, cfg)
    return Path(out)


def _is_encoder(graph) -> bool:
    try:
        return kind_of(graph) == ENCODER
    except InputError:
        return False
