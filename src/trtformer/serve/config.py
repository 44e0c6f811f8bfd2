"""Triton model configurations built as Triton's own protobuf messages, so every field name and enum is checked
by its schema (`model_config_pb2`, shipped with tritonclient) before a `config.pbtxt` is written.

`Port` is one input or output as Triton sees it: a name, a Triton data type and the dims after the batch axis
(-1 where the size varies). `model_config` assembles ports, batching and parameters; `write_config` writes the
text form and reads it back through the schema; `validate_config` checks any `config.pbtxt`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..artifact.dtypes import dtype
from ..errors import ArtifactError, DependencyError, InputError

# manifest dtype -> Triton's TYPE_* (model_config.proto's DataType)
TRITON_TYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "float64": "TYPE_FP64",
    "int64": "TYPE_INT64", "int32": "TYPE_INT32", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL",
}  # fmt: skip
# Triton's TYPE_* -> the datatype string of the KServe v2 protocol (what clients send)
WIRE_TYPES = {
    "TYPE_FP32": "FP32", "TYPE_FP16": "FP16", "TYPE_BF16": "BF16", "TYPE_FP64": "FP64", "TYPE_INT64": "INT64",
    "TYPE_INT32": "INT32", "TYPE_INT8": "INT8", "TYPE_UINT8": "UINT8", "TYPE_BOOL": "BOOL",
}  # fmt: skip


def schema():
    """Triton's model_config_pb2 (from tritonclient), or a DependencyError naming the extra."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as exc:
        raise DependencyError("tritonclient", "serve", "Triton model configurations") from exc
    return model_config_pb2


def triton_type(name: str) -> str:
    """The Triton TYPE_* of a manifest dtype name (float64 included: the scores the server computes)."""
    if name != "float64":
        dtype(name)  # an unknown name is an ArtifactError that lists the known ones
    return TRITON_TYPES[name]


@dataclass(frozen=True)
class Port:
    name: str
    data_type: str  # Triton TYPE_*
    dims: tuple[int, ...]  # after the batch axis when the model batches; -1 = any size
    optional: bool = False
    ragged: bool = False  # the dynamic batcher may put requests of different shapes in one batch

    @property
    def wire_type(self) -> str:
        return WIRE_TYPES[self.data_type]


def tensor_dims(shape: Sequence[str | int], batched: bool) -> tuple[int, ...]:
    """Manifest shape -> Triton dims: symbolic dims become -1, the batch axis goes when Triton batches."""
    dims = tuple(d if isinstance(d, int) else -1 for d in shape)
    return dims[1:] if batched else dims


def model_config(
    name: str,
    backend: str,
    inputs: Sequence[Port],
    outputs: Sequence[Port],
    max_batch_size: int = 0,
    max_queue_delay_us: int | None = None,
    instances: int = 1,
    instance_kind: str = "KIND_CPU",
    decoupled: bool = False,
    parameters: dict[str, str] | None = None,
    states: Sequence[tuple[Port, Port, tuple[int, ...]]] = (),
    default_model_filename: str | None = None,
):
    """A ModelConfig message. `states` holds (input, output, initial dims) per implicit-state pair: the pair
    becomes Triton state under the sequence batcher, starting as zeros of the initial dims."""
    pb = schema()
    if instances < 1:
        raise InputError(f"--instances must be >= 1, got {instances}")
    if max_batch_size < 0:
        raise InputError(f"--max-batch-size must be >= 0, got {max_batch_size}")
    cfg = pb.ModelConfig(name=name, backend=backend, max_batch_size=max_batch_size)
    if default_model_filename:
        cfg.default_model_filename = default_model_filename
    for port in inputs:
        cfg.input.add(name=port.name, data_type=pb.DataType.Value(port.data_type), dims=list(port.dims),
                      optional=port.optional, allow_ragged_batch=port.ragged)
    for port in outputs:
        cfg.output.add(name=port.name, data_type=pb.DataType.Value(port.data_type), dims=list(port.dims))
    if max_queue_delay_us is not None and not states:
        cfg.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    if states:
        seq = cfg.sequence_batching
        for state_in, state_out, initial in states:
            seq.state.add(input_name=state_in.name, output_name=state_out.name,
                          data_type=pb.DataType.Value(state_in.data_type), dims=list(state_in.dims),
                          initial_state=[pb.ModelSequenceBatching.InitialState(
                              name=f"{state_in.name}.initial", data_type=pb.DataType.Value(state_in.data_type),
                              dims=list(initial), zero_data=True)])
    cfg.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.Kind.Value(instance_kind))
    if decoupled:
        cfg.model_transaction_policy.decoupled = True
    for key, value in (parameters or {}).items():
        cfg.parameters[key].string_value = value
    return cfg


def write_config(directory: Path, cfg) -> Path:
    """Write `directory/config.pbtxt` in Triton's text format and check it parses back to the same message."""
    from google.protobuf import text_format

    path = directory / "config.pbtxt"
    path.write_text(text_format.MessageToString(cfg))
    if validate_config(path) != cfg:
        raise ArtifactError(f"{path} does not read back as the configuration written")
    return path


def validate_config(path: Path):
    """Parse a config.pbtxt with Triton's schema and check what the schema alone cannot (names, dims, state)."""
    from google.protobuf import text_format

    pb = schema()
    try:
        cfg = text_format.Parse(Path(path).read_text(), pb.ModelConfig())
    except (text_format.ParseError, OSError) as exc:
        raise ArtifactError(f"{path} is not a valid Triton model configuration: {exc}") from exc
    names = [t.name for t in (*cfg.input, *cfg.output)]
    problems = [f"tensor {n!r} is declared twice" for n in sorted({n for n in names if names.count(n) > 1})]
    problems += [f"{t.name} has no dims" for t in (*cfg.input, *cfg.output) if not t.dims]
    problems += [f"{t.name} has dim {d}" for t in (*cfg.input, *cfg.output) for d in t.dims if d < -1 or d == 0]
    inputs, outputs = {t.name for t in cfg.input}, {t.name for t in cfg.output}
    for state in cfg.sequence_batching.state:
        if state.input_name in inputs or state.output_name in outputs:
            problems.append(f"state {state.input_name} -> {state.output_name} is also a declared input or output")
        if len(state.initial_state) != 1 or not state.initial_state[0].zero_data:
            problems.append(f"state {state.input_name} needs one zero initial state")
    if cfg.HasField("sequence_batching") and cfg.HasField("dynamic_batching"):
        problems.append("a model has either sequence or dynamic batching, not both")
    if problems:
        raise ArtifactError(f"{path}: " + "; ".join(problems))
    return cfg
