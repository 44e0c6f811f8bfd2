"""PyTorch reference model -> ONNX artifact directory (manifest, model.onnx, reference weights, tokenizer)."""

from __future__ import annotations

import contextlib
import io
import logging
import platform
import shutil
import time
from pathlib import Path

import onnx
import torch

from .. import __version__
from ..errors import ExportError, TrtformerError
from ..models import LoadedModel, load_model
from ..runtime.artifact import MANIFEST, SCHEMA_VERSION, atomic_directory, file_entries, write_json_atomic
from . import translations
from .precision import PRECISIONS, apply_precision, fp32_heads
from .quantize import QUANTIZATIONS, quantize_graph
from .specs import IOSpec, example_inputs, flatten, spec_for

log = logging.getLogger(__name__)

FORMS = ("portable", "plugin")
DEFAULT_OPSET = 20
# onnx 1.23 writes IR 14; the onnxruntime releases in use read up to IR 10 for opset <= 21.
IR_VERSION = 10
# Families whose graphs contain fused ops (and so differ between the portable and plugin forms); their ops'
# ONNX is in translations.py.
FUSED_OP_FAMILIES: set[str] = {"transfo_xl", "longformer"}
# Above this the graph is saved with external data (protobuf's 2 GiB limit).
EXTERNAL_DATA_BYTES = 1 << 30


def export_sizes(spec: IOSpec) -> dict[str, int]:
    """Example sizes for tracing: every dynamic dim >= 2 and distinct, so torch.export keeps it symbolic."""
    sizes, value = {}, 2
    for name in spec.dims:
        sizes[name] = value
        value += 1
    return sizes


def dynamic_shapes(spec: IOSpec) -> list[dict]:
    dims = {name: torch.export.Dim(name.replace(" ", "_")) for name in spec.dims}
    out = []
    for t in spec.inputs:
        axes = {}
        for axis, d in enumerate(t.shape):
            if isinstance(d, str):
                # A sum such as "past + seq" is left for torch.export to derive.
                axes[axis] = dims[d] if d in dims else torch.export.Dim.DYNAMIC
        out.append(axes)
    return out


def fix_graph_signature(model: onnx.ModelProto, spec: IOSpec) -> None:
    """Write the spec's names, dtypes' symbolic dims onto the graph inputs and outputs."""
    for values, tensors in ((model.graph.input, spec.inputs), (model.graph.output, spec.outputs)):
        by_name = {v.name: v for v in values}
        for t in tensors:
            if t.name not in by_name:
                raise ExportError(f"the exported graph lacks {t.name!r}; it has {sorted(by_name)}")
            dims = by_name[t.name].type.tensor_type.shape.dim
            if len(dims) != len(t.shape):
                raise ExportError(f"{t.name} has rank {len(dims)} in the graph, the spec says {len(t.shape)}")
            for dim, want in zip(dims, t.shape, strict=True):
                if isinstance(want, str):
                    dim.dim_param = want
                elif dim.HasField("dim_value") and dim.dim_value != want:
                    raise ExportError(f"{t.name} has a fixed dim {dim.dim_value} where the spec says {want}")
                else:
                    dim.dim_value = want


def summarize(exc: BaseException) -> str:
    """The one line that says what went wrong in torch.onnx's multi-paragraph errors."""
    text = str(exc)
    if "## Exception summary" in text:
        lines = [ln.strip() for ln in text.split("## Exception summary", 1)[1].splitlines() if ln.strip()]
        if lines:
            return lines[0]
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def to_onnx(loaded: LoadedModel, model: torch.nn.Module, spec: IOSpec, opset: int, form: str = "portable") -> tuple[onnx.ModelProto, list[dict]]:
    """The model's ONNX, and the manifest's records of the plugin-form custom ops in it."""
    wrapper = flatten(loaded.family, model, spec).eval()
    example = example_inputs(spec, export_sizes(spec))
    args = tuple(example[n] for n in spec.input_names)
    dims = (tuple(dynamic_shapes(spec)),)  # forward(*tensors)
    captured = io.StringIO()
    t0 = time.perf_counter()
    plugins: list[dict] = []
    try:
        # torch.onnx prints progress to stdout; the library logs instead.
        with torch.no_grad(), contextlib.redirect_stdout(captured):
            target, table, calls = wrapper, None, {}
            if loaded.family in FUSED_OP_FAMILIES:
                # Fused ops stay single nodes in the traced program until the form decides their ONNX.
                target = torch.export.export(wrapper, args, dynamic_shapes=dims, strict=False)
                if form == "portable":
                    target = translations.decompose(target)
                else:
                    calls = translations.plugin_calls(target)
                    table = translations.onnx_table(calls)
            program = torch.onnx.export(
                target,
                args,
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_shapes=dims,
                opset_version=opset,
                dynamo=True,
                external_data=False,
                custom_translation_table=table,
            )
            proto = program.model_proto
            plugins = translations.attach_functions(proto, calls, opset)
    except TrtformerError:
        raise
    except Exception as exc:  # torch raises many types here; the user needs to know which step failed
        log.debug("torch.onnx.export failed", exc_info=True)
        raise ExportError(f"torch.onnx.export failed for {loaded.source}: {summarize(exc)}") from exc
    finally:
        for line in captured.getvalue().splitlines():
            log.debug("torch.onnx: %s", line)
    log.info("traced and converted in %.1f s", time.perf_counter() - t0)
    proto.ir_version = IR_VERSION
    fix_graph_signature(proto, spec)
    return proto, plugins


def save_onnx(proto: onnx.ModelProto, path: Path) -> list[str]:
    """Save the graph; external data when it is large. Returns the file names written."""
    if proto.ByteSize() < EXTERNAL_DATA_BYTES:
        onnx.save(proto, path)
        return [path.name]
    data = path.name + ".data"
    onnx.save(proto, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data)
    return [path.name, data]


def save_reference(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    save_model(model, str(path))  # stores a tied parameter (Transformer-XL's embeddings and softmax) once


def versions() -> dict[str, str]:
    import onnxscript

    return {
        "trtformer": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxscript": onnxscript.__version__,
        "python": platform.python_version(),
    }


def export(
    source: str | Path,
    out: str | Path,
    *,
    form: str = "portable",
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
    reference: bool = True,
    optimize: bool = False,
    quantize: str | None = None,
) -> Path:
    """Export `source` (a preset name or HF checkpoint directory) to the artifact directory `out`.

    optimize=True adds ONNX Runtime's transformer fusions as model.opt.onnx, which ONNX Runtime backends
    then load by default; quantize="int8-dynamic" adds model.int8.onnx (from the fused graph when there is
    one), which ONNX Runtime backends then prefer; reference=True stores the fp32 weights of the torch reference in the artifact so that parity can be
    checked anywhere later; it doubles the artifact's size.
    """
    if form not in FORMS:
        raise ExportError(f"unknown form {form!r}", hint=f"forms: {', '.join(FORMS)}")
    if precision not in PRECISIONS:
        raise ExportError(f"unknown precision {precision!r}", hint=f"precisions: {', '.join(PRECISIONS)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ExportError(f"unknown quantization {quantize!r}", hint=f"quantizations: {', '.join(QUANTIZATIONS)}")
    if quantize is not None and precision != "fp32":
        raise ExportError(f"int8 quantization starts from an fp32 graph, not {precision}", hint="use --precision fp32")
    if not 17 <= opset <= 23:
        raise ExportError(f"opset {opset} is outside the supported range 17..23")
    out = Path(out)
    loaded = load_model(source)
    if form == "plugin" and loaded.family not in FUSED_OP_FAMILIES:
        raise ExportError(
            f"the {loaded.family} family has no fused ops, so it has no plugin form",
            hint="use --form portable; TensorRT runs the portable graph natively",
        )
    model = apply_precision(loaded.model, precision)
    spec = spec_for(loaded.family, model)
    log.info("exporting %s (%s, %s, %s, opset %d)", loaded.source, loaded.family, form, precision, opset)
    proto, plugins = to_onnx(loaded, model, spec, opset, form)
    try:
        with atomic_directory(out, overwrite=overwrite) as tmp:
            written = save_onnx(proto, tmp / "model.onnx")
            models, fusions = {"plain": "model.onnx"}, {}
            if optimize:
                from .optimize import optimize_graph

                fused, fusions = optimize_graph(tmp / "model.onnx", loaded.family, loaded.model.config.to_dict(), IR_VERSION)
                models["optimized"] = "model.opt.onnx"
                written += save_onnx(fused, tmp / "model.opt.onnx")
            quantization = None
            if quantize is not None:
                int8, quantization = quantize_graph(tmp / models.get("optimized", "model.onnx"), IR_VERSION, fp32_heads(model))
                models["int8"] = "model.int8.onnx"
                written += save_onnx(int8, tmp / "model.int8.onnx")
            if reference:
                save_reference(loaded.model, tmp / "reference.safetensors")
                written.append("reference.safetensors")
            if loaded.tokenizer_files:
                (tmp / "tokenizer").mkdir()
                for f in loaded.tokenizer_files:
                    shutil.copy2(f, tmp / "tokenizer" / f.name)
                    written.append(f"tokenizer/{f.name}")
            (tmp / "engines").mkdir()
            manifest = {
                "schema_version": SCHEMA_VERSION,
                "family": loaded.family,
                "config": loaded.model.config.to_dict(),
                "source": str(loaded.source),
                "form": form,
                "precision": precision,
                "opset": opset,
                **spec.to_dict(),
                "plugins": plugins,
                "models": models,
                "fusions": fusions,
                "quantization": quantization,
                "reference": "reference.safetensors" if reference else None,
                "files": file_entries(tmp, written),
                "versions": versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            write_json_atomic(tmp / MANIFEST, manifest)
    except TrtformerError:
        raise
    except OSError as exc:
        raise ExportError(f"cannot write the artifact {out}: {exc}") from exc
    log.info("wrote %s", out)
    return out
