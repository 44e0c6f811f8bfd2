"""PyTorch reference model -> ONNX artifact directory (manifest, model.onnx, reference weights, tokenizer).

What differs between families (graph I/O, keyword arguments, fp32 heads, ONNX Runtime's optimizer, fused ops) comes
from the family's registry entry; the manifest is the typed one of trtformer.artifact.
"""

from __future__ import annotations

import contextlib
import io
import logging
import platform
import shutil
import time
from dataclasses import replace
from pathlib import Path

import onnx
import torch

from .. import __version__
from ..artifact import GraphSpec, Manifest, PluginRecord, atomic_directory, file_entries, write_manifest
from ..artifact.dtypes import PRECISIONS
from ..artifact.manifest import FORMS
from ..artifact.store import check_destination
from ..errors import ExportError, TrtformerError
from ..families import Family, LoadedModel, family, load_model
from . import translations
from .precision import apply_precision, fp32_heads, fp32_modules
from .quantize import QUANTIZATIONS, quantize_graph
from .trace import Flattened, dynamic_shapes, example_args, fix_graph_signature

log = logging.getLogger(__name__)

DEFAULT_OPSET = 20
# onnx 1.23 writes IR 14; the onnxruntime releases in use read up to IR 10 for opset <= 21.
IR_VERSION = 10
# Above this the graph is saved with external data (protobuf's 2 GiB limit).
EXTERNAL_DATA_BYTES = 1 << 30


def summarize(exc: BaseException) -> str:
    """The one line that says what went wrong in torch.onnx's multi-paragraph errors."""
    text = str(exc)
    if "## Exception summary" in text:
        lines = [ln.strip() for ln in text.split("## Exception summary", 1)[1].splitlines() if ln.strip()]
        if lines:
            return lines[0]
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def to_onnx(
    loaded: LoadedModel, fam: Family, model: torch.nn.Module, graph: GraphSpec, opset: int, form: str = "portable"
) -> tuple[onnx.ModelProto, tuple[PluginRecord, ...]]:
    """The model's ONNX, and the manifest's records of the plugin-form custom ops in it."""
    wrapper = Flattened(model, graph, fam.to_kwargs).eval()
    args = example_args(graph)
    dims = (tuple(dynamic_shapes(graph)),)  # forward(*tensors)
    captured = io.StringIO()
    t0 = time.perf_counter()
    plugins: list[PluginRecord] = []
    try:
        # torch.onnx prints progress to stdout; the library logs instead.
        with torch.no_grad(), contextlib.redirect_stdout(captured):
            target, table, calls = wrapper, None, {}
            if fam.has_plugin_form:
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
                input_names=graph.input_names,
                output_names=graph.output_names,
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
    fix_graph_signature(proto, graph)
    return proto, tuple(plugins)


def save_onnx(proto: onnx.ModelProto, path: Path) -> list[str]:
    """Save the graph; external data when it is large. Returns the file names written."""
    if proto.ByteSize() < EXTERNAL_DATA_BYTES:
        onnx.save(proto, path)
        return [path.name]
    data = path.name + ".data"
    onnx.save(proto, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data)
    return [path.name, data]


def write_graph(tmp: Path, stem: str, proto: onnx.ModelProto, model: torch.nn.Module, fam: Family, config: dict,
                optimize: bool, quantize: str | None) -> tuple[list[str], dict]:
    """Save one graph as STEM.onnx, plus STEM.opt.onnx (ONNX Runtime's fusions) and STEM.int8.onnx when asked; return
    the files written and the graph record's fields (models, fusions, quantization)."""
    written = save_onnx(proto, tmp / f"{stem}.onnx")
    models, fusions, quantization = {"plain": f"{stem}.onnx"}, {}, None
    if optimize:
        from .optimize import optimize_graph

        fused, fusions = optimize_graph(tmp / f"{stem}.onnx", fam.ort_optimizer, config, IR_VERSION)
        models["optimized"] = f"{stem}.opt.onnx"
        written += save_onnx(fused, tmp / models["optimized"])
    if quantize is not None:
        heads = fp32_heads(model, fam.fp32_heads)
        int8, quantization = quantize_graph(tmp / models.get("optimized", f"{stem}.onnx"), IR_VERSION, heads)
        models["int8"] = f"{stem}.int8.onnx"
        written += save_onnx(int8, tmp / models["int8"])
    return written, {"models": models, "fusions": fusions, "quantization": quantization}


def precision_notes(model: torch.nn.Module, precision: str) -> dict:
    """The manifest's `fp32_modules` (and the model's `fp32_compute`, what it says it computes in fp32) where a
    low-precision graph keeps more than the usual contract in fp32."""
    kept = fp32_modules(model) if precision != "fp32" else {}
    if not kept:
        return {}
    return {"fp32_modules": kept, **({"fp32_compute": model.fp32_compute} if hasattr(model, "fp32_compute") else {})}


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
    one), which ONNX Runtime backends then prefer; reference=True stores the fp32 weights of the torch reference in
    the artifact so that parity can be checked anywhere later; it doubles the artifact's size.
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
    out = check_destination(out, overwrite)  # before tracing, which takes seconds to minutes
    loaded = load_model(source)
    fam = family(loaded.family)
    if form == "plugin" and not fam.has_plugin_form:
        raise ExportError(
            f"the {fam.name} family has no fused ops, so it has no plugin form",
            hint="use --form portable; TensorRT runs the portable graph natively",
        )
    if optimize and fam.ort_optimizer is None:
        raise ExportError(f"ONNX Runtime's transformer optimizer has no fusions for the {fam.name} family",
                          hint="export without --optimize; ONNX Runtime still optimises the graph when it loads it")  # fmt: skip
    model = apply_precision(loaded.model, precision, fam.fp32_heads)
    exported = fam.export_graphs(model)
    log.info("exporting %s (%s, %s, %s, opset %d)", loaded.source, fam.name, form, precision, opset)
    protos, plugins = [], []
    for graph in exported.graphs:
        proto, found = to_onnx(loaded, fam, model, graph, opset, form)
        protos.append(proto)
        plugins += [p for p in found if p not in plugins]
    config = loaded.model.config.to_dict()
    # One graph keeps the name "model" and its files model*.onnx; several are named after their graphs.
    stems = ["model"] if len(exported.graphs) == 1 else [g.name for g in exported.graphs]
    try:
        with atomic_directory(out, overwrite=overwrite) as tmp:
            written, graphs = [], {}
            for graph, proto, stem in zip(exported.graphs, protos, stems, strict=True):
                files, names = write_graph(tmp, stem, proto, model, fam, config, optimize, quantize)
                written += files
                graphs[graph.name] = replace(graph, **names)
            if reference:
                save_reference(loaded.model, tmp / "reference.safetensors")
                written.append("reference.safetensors")
            if loaded.tokenizer_files:
                (tmp / "tokenizer").mkdir()
                for f in loaded.tokenizer_files:
                    shutil.copy2(f, tmp / "tokenizer" / f.name)
                    written.append(f"tokenizer/{f.name}")
            (tmp / "engines").mkdir()
            manifest = Manifest(
                family=fam.name,
                config=config,
                form=form,
                precision=precision,
                opset=opset,
                graphs=graphs,
                files=file_entries(tmp, written),
                links=exported.links,
                plugins=tuple(plugins),
                reference="reference.safetensors" if reference else None,
                source=str(loaded.source),
                versions=versions(),
                created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                extra=precision_notes(model, precision),
            )
            Manifest.from_dict(manifest.to_dict(), f"the manifest of {out}")  # every check a reader makes, before writing
            write_manifest(tmp, manifest)
    except TrtformerError:
        raise
    except OSError as exc:
        raise ExportError(f"cannot write the artifact {out}: {exc}") from exc
    log.info("wrote %s", out)
    return out
