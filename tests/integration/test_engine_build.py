"""Engines built ahead of time with TensorRT-RTX on this CPU-only machine: every landed family, the cache, the
checks at load time, parser and builder failures, and the `trtformer build` command. Running an engine needs a
GPU, so nothing here deserializes one."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from support import manifest

from trtformer.artifact import SCHEMA_VERSION, Artifact, file_entries, write_json_atomic
from trtformer.cli import main
from trtformer.engines import build_engine, profiles, read_engine
from trtformer.engines.build import capture_flag, configure, load_timing_cache, save_timing_cache
from trtformer.errors import ArtifactError, DependencyError, EngineError, InputError
from trtformer.trt import flavors

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install 'trtformer[tensorrt-rtx]'; CI installs it)")

RTX = "tensorrt-rtx"


def copy_of(src: Path, tmp_path: Path) -> Path:
    """The session artifacts are shared: build into a private copy."""
    return Path(shutil.copytree(src, tmp_path / src.name))


def set_manifest(art: Path, m: dict) -> None:
    write_json_atomic(art / "manifest.json", m)


def entries(art: Path, names: list[str]) -> dict:
    """The manifest's `files` entries of `names`, as JSON."""
    return {k: v.to_dict() for k, v in file_entries(art, names).items()}


def snapshot(art: Path) -> dict[str, bytes]:
    """Every file of the manifest and engines/, hidden temporaries included, by content."""
    paths = [art / "manifest.json", *sorted((art / "engines").iterdir())]
    return {p.name: p.read_bytes() for p in paths}


# ---------------------------------------------------------------------------------------------- landed families


def landed_cases() -> list:
    """Every registered family and form, in fp32 and fp16, and every family's portable form in bf16. GPT uses the
    session artifacts (and the presets for fp16 and bf16); a family added later builds from its tiny-<family> preset
    (transfo_xl: tiny-transfo-xl) without a change here."""
    from trtformer.families import FAMILIES

    cases = [
        pytest.param("gpt2_artifact", id="gpt2-portable-fp32"),
        pytest.param("gpt2_fp16_artifact", id="gpt2-portable-fp16"),
        pytest.param("openai_gpt_artifact", id="openai-gpt-portable-fp32"),
        pytest.param(("tiny-openai-gpt", "portable", "fp16"), id="openai-gpt-portable-fp16"),
        pytest.param(("tiny-gpt2", "portable", "bf16"), id="gpt2-portable-bf16"),
    ]
    for family in sorted(set(FAMILIES) - {"gpt"}):
        preset = f"tiny-{family.replace('_', '-')}"
        for form in ("portable", "plugin") if FAMILIES[family].fused_ops else ("portable",):
            for precision in ("fp32", "fp16", "bf16") if form == "portable" else ("fp32", "fp16"):
                cases.append(pytest.param((preset, form, precision), id=f"{family}-{form}-{precision}"))
    return cases


@pytest.mark.parametrize("case", landed_cases())
def test_every_landed_family_builds_ahead_of_time(case, request, tmp_path):
    if isinstance(case, str):
        art = copy_of(request.getfixturevalue(case), tmp_path)
    else:
        import trtformer

        preset, form, precision = case
        art = trtformer.export(preset, tmp_path / "art", form=form, precision=precision, reference=False)
    before = manifest(art)
    graphs = Artifact.load(art).manifest.graphs  # "model", or an encoder-decoder's encoder and decoder
    for graph in graphs.values():
        result = build_engine(art, graph=graph.name if len(graphs) > 1 else None, flavor=RTX)
        prefix = "" if graph.name == "model" else f"{graph.name}-"
        assert not result.cached and result.path == art / result.name and result.path.is_file()
        assert result.name.startswith(f"engines/{prefix}{RTX}-") and result.name.endswith(".engine")
        r = manifest(art)["engines"][result.name]
        assert r["flavor"] == RTX and r["version"] == trt.__version__
        assert {"8.6", "8.9", "12.0"} <= set(r["compute_capability"]) and "7.5" not in r["compute_capability"]
        assert r["profiles"] == [profiles.resolve(graph).to_dict()] and r["graph"] == graph.name
        onnx_name = graph.models["plain"]
        assert r["onnx"] == onnx_name and r["onnx_sha256"] == before["files"][onnx_name]["sha256"]
        assert r["plugins"] == []  # TensorRT-RTX has no plugin layers: a plugin-form graph's functions were inlined
        assert r["sha256"] == hashlib.sha256(result.path.read_bytes()).hexdigest() and r["bytes"] == result.path.stat().st_size
        assert r["build_seconds"] < 30  # tiny models build in about half a second here
        assert read_engine(art, graph=graph.name, flavor=RTX).data == result.path.read_bytes()
    m = manifest(art)
    assert len(m["engines"]) == len(graphs)
    unchanged = lambda d: {k: v for k, v in d.items() if k != "engines"}  # noqa: E731
    assert unchanged(m) == unchanged(before)  # nothing else in the manifest changed


# ---------------------------------------------------------------------------------------------- the cache


@pytest.fixture
def built(tmp_path, gpt2_artifact):
    """A private GPT-2 copy with one engine for compute capability 8.6."""
    art = copy_of(gpt2_artifact, tmp_path)
    return art, build_engine(art, flavor=RTX, compute_capability=["8.6"])


def test_a_second_build_reuses_the_engine_and_a_new_profile_adds_one(built):
    art, first = built
    stat, before = first.path.stat(), snapshot(art)
    again = build_engine(art, flavor=RTX, compute_capability=["sm86"])
    assert again.cached and again.name == first.name and again.record == first.record
    assert (first.path.stat().st_mtime_ns, first.path.stat().st_ino) == (stat.st_mtime_ns, stat.st_ino)
    assert snapshot(art) == before

    wider = build_engine(art, flavor=RTX, compute_capability=["8.6"], profile=["batch=1:4:32"])
    assert not wider.cached and wider.name != first.name
    assert set(manifest(art)["engines"]) == {first.name, wider.name}
    assert wider.record.profiles[0]["inputs"]["input_ids"]["max"] == [32, 64]
    assert read_engine(art, flavor=RTX).name == wider.name  # the newest that matches
    assert read_engine(art, flavor=RTX, engine=first.name).record == first.record


def test_engine_from_another_onnx_fails_to_load_until_rebuilt(built):
    art, first = built
    model = onnx.load(art / "model.onnx")
    weight = model.graph.initializer[0]
    changed = numpy_helper.to_array(weight).copy()
    changed.flat[0] += 1
    weight.CopyFrom(numpy_helper.from_array(changed, weight.name))
    onnx.save(model, art / "model.onnx")
    # An ONNX that differs from its manifest entry is refused before any build.
    with pytest.raises(ArtifactError, match="model.onnx does not match its sha256"):
        build_engine(art, flavor=RTX)
    m = manifest(art)
    m["files"].update(entries(art, ["model.onnx"]))
    set_manifest(art, m)

    with pytest.raises(EngineError, match=r"built from another model.onnx \(sha256 [0-9a-f]{12}\.\.\.\); the artifact's is now"):
        read_engine(art, flavor=RTX)
    second = build_engine(art, flavor=RTX, compute_capability=["8.6"])
    assert not second.cached and second.name != first.name
    assert read_engine(art, flavor=RTX).name == second.name
    with pytest.raises(EngineError, match="built from another model.onnx"):
        read_engine(art, flavor=RTX, engine=first.name)


def test_a_build_that_cannot_record_its_engine_leaves_the_artifact_as_it_was(built):
    art, _ = built
    before = snapshot(art)
    # A directory where the manifest update opens its lock file makes that update fail for real.
    (art / ".manifest.lock").unlink(missing_ok=True)
    (art / ".manifest.lock").mkdir()
    for options in ({"profile": ["batch=2"]}, {"rebuild": True}):  # a new engine; a rebuild over the stored one
        with pytest.raises(EngineError, match="cannot store the engine"):
            build_engine(art, flavor=RTX, compute_capability=["8.6"], **options)
        assert snapshot(art) == before


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("flavor", "tensorrt", "was built with TensorRT, not TensorRT-RTX"),
        ("version", "1.0.0.0", f"was built with TensorRT-RTX 1.0.0.0, but {trt.__version__} is installed"),
    ],
)
def test_engine_from_another_flavor_or_version_fails_to_load(built, field, value, message):
    art, first = built
    m = manifest(art)
    m["engines"][first.name][field] = value
    set_manifest(art, m)
    with pytest.raises(EngineError, match=message) as info:
        read_engine(art, flavor=RTX)
    assert first.name in str(info.value) and "trtformer build" in info.value.hint


def test_engine_for_other_gpus_and_damaged_engines_are_refused(built):
    art, first = built
    assert read_engine(art, flavor=RTX, compute_capability="8.6").name == first.name
    with pytest.raises(EngineError, match="targets compute capability 8.6, not this GPU's 8.9"):
        read_engine(art, flavor=RTX, compute_capability="8.9")
    data = bytearray(first.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.path.write_bytes(bytes(data))
    with pytest.raises(EngineError, match="altered or corrupted"):
        read_engine(art, flavor=RTX)
    rebuilt = build_engine(art, flavor=RTX, compute_capability=["8.6"])  # a damaged cache entry is rebuilt
    assert not rebuilt.cached and read_engine(art, flavor=RTX).data == first.path.read_bytes()
    with pytest.raises(EngineError, match="has no engine 'engines/nope.engine'"):
        read_engine(art, flavor=RTX, engine="engines/nope.engine")


def test_missing_flavors_are_dependency_errors(tmp_path, gpt2_artifact, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # full TensorRT is absent (as it is here and in CI)
    with pytest.raises(DependencyError, match="'tensorrt' package") as info:
        build_engine(copy_of(gpt2_artifact, tmp_path), flavor="tensorrt")
    assert "trtformer[tensorrt]" in info.value.hint
    assert flavors.load("auto").name == RTX
    with pytest.raises(EngineError, match="has no engines"):
        read_engine(gpt2_artifact)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    with pytest.raises(DependencyError) as info:
        flavors.load("auto")
    assert "trtformer[tensorrt-rtx]" in info.value.hint and "trtformer[tensorrt]" in info.value.hint


def test_compute_capability_targets():
    kit = flavors.load(RTX)
    known = flavors.rtx_capabilities(trt)
    assert {"7.5", "8.6", "12.0"} <= set(known)
    assert flavors.targets(kit).labels == tuple(c for c in known if c != "7.5")
    assert flavors.targets(kit, ["120", "7.5"]).values == (trt.ComputeCapability.SM75, trt.ComputeCapability.SM120)
    with pytest.raises(EngineError, match="cannot target compute capability 9.0"):
        flavors.targets(kit, ["9.0"])
    device = flavors.device_capability()
    if device is None:  # CI and this machine
        with pytest.raises(EngineError, match="'current' needs a visible CUDA GPU"):
            flavors.targets(kit, ["current"])
    elif device in known:
        assert flavors.targets(kit, ["current"]) == flavors.Targets((device,), (trt.ComputeCapability.CURRENT,))
    else:
        with pytest.raises(EngineError, match=f"cannot target this GPU \\(compute capability {device}\\)"):
            flavors.targets(kit, ["current"])


def test_engine_package_imports_neither_flavor_nor_torch():
    code = ("import sys, trtformer.engines, trtformer.engines.loader; "
            "print([m for m in ('torch', 'onnx', 'tensorrt', 'tensorrt_rtx') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---------------------------------------------------------------------------------------------- failures


def shape(dim: str) -> list:
    return [dim, 4, 4]


def toy_artifact(root: Path, extra_op: str | None = None, graphs: tuple[str, ...] = ("model",)) -> Path:
    """An artifact of y = extra_op(x + z), x [a, 4, 4] and z [b, 4, 4]: tiny, and its dims can be made to clash. Each
    name in `graphs` is a graph of that one file."""
    root.mkdir()
    nodes = [helper.make_node("Add", ["x", "z"], ["s"], name="add")]
    if extra_op:
        nodes.append(helper.make_node(extra_op, ["s"], ["y"], name=extra_op.lower()))
    graph = helper.make_graph(nodes, "toy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape("a")),
                                             helper.make_tensor_value_info("z", TensorProto.FLOAT, shape("b"))],
                              [helper.make_tensor_value_info("y" if extra_op else "s", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    onnx.save(model, root / "model.onnx")
    dim = {"min": 1, "max": None, "opt": 2, "description": ""}
    spec = {
        "inputs": [{"name": n, "dtype": "float32", "shape": shape(d), "role": "features"} for n, d in (("x", "a"), ("z", "b"))],
        "outputs": [{"name": "y", "dtype": "float32", "shape": shape("a")}],
        "state": [], "dims": {"a": dim, "b": dim}, "limits": {}, "models": {"plain": "model.onnx"},
    }  # fmt: skip
    set_manifest(root, {
        "schema_version": SCHEMA_VERSION, "family": "toy", "config": {}, "form": "portable", "precision": "fp32",
        "opset": 20, "graphs": dict.fromkeys(graphs, spec), "files": entries(root, ["model.onnx"]),
    })  # fmt: skip
    (root / "engines").mkdir()
    return root


def test_parser_failure_names_node_op_and_reason(tmp_path, capsys):
    art = toy_artifact(tmp_path / "det", extra_op="Det")
    before = snapshot(art)
    expected = "cannot parse model.onnx: node 'det' (op Det): TensorRT does not support this op [UNSUPPORTED_NODE]"
    with pytest.raises(EngineError, match=re.escape(expected)):
        build_engine(art, flavor=RTX)
    assert main(["build", str(art), "--flavor", RTX]) == 2
    assert expected in capsys.readouterr().err
    assert snapshot(art) == before


def test_failed_build_leaves_manifest_and_engines_untouched(tmp_path):
    art = toy_artifact(tmp_path / "toy")
    first = build_engine(art, flavor=RTX, compute_capability=["8.6"])  # unbounded dims get DEFAULT_MAX
    assert first.record.profiles[0]["dims"]["a"] == {"min": 1, "opt": 2, "max": profiles.DEFAULT_MAX}
    before = snapshot(art)
    # x + z cannot broadcast when a and b never meet: TensorRT's builder, not trtformer, refuses this profile.
    with pytest.raises(EngineError, match="failed to build the engine: .*not compatible"):
        build_engine(art, flavor=RTX, compute_capability=["8.6"], profile=["a=2:2:3", "b=5:5:6"])
    assert snapshot(art) == before


def test_each_graph_gets_its_own_engines(tmp_path):
    """Two graphs of one ONNX file: same key, but each engine is named and recorded for its graph, and read by it."""
    art = toy_artifact(tmp_path / "two", graphs=("model", "step"))
    first = build_engine(art, flavor=RTX, compute_capability=["8.6"])  # "model" is the default graph
    step = build_engine(art, graph="step", flavor=RTX, compute_capability=["8.6"])
    assert first.record.key == step.record.key and not step.cached
    assert first.name == f"engines/{RTX}-{first.record.key[:16]}.engine"  # graph "model" keeps the names it had
    assert step.name == f"engines/step-{RTX}-{step.record.key[:16]}.engine"
    assert {n: r["graph"] for n, r in manifest(art)["engines"].items()} == {first.name: "model", step.name: "step"}
    assert read_engine(art, flavor=RTX).name == first.name and read_engine(art, graph="step", flavor=RTX).name == step.name
    assert read_engine(art, flavor=RTX, engine=step.name).record.graph == "step"  # an engine named brings its graph
    with pytest.raises(EngineError, match="built from the graph 'step', not 'model'"):
        read_engine(art, graph="model", flavor=RTX, engine=step.name)
    with pytest.raises(ArtifactError, match="no graph 'other'"):
        build_engine(art, graph="other", flavor=RTX)


def test_an_opt_override_at_the_full_context_builds(tmp_path, gpt2_artifact):
    """seq's opt at the context (64) leaves past's opt 0: TensorRT-RTX builds it. Clamping `past + seq` alone used to
    give opt shapes that break the graph's relation ("kOPT values for profile 0 violate shape constraints")."""
    art = copy_of(gpt2_artifact, tmp_path)
    built = build_engine(art, flavor=RTX, compute_capability=["8.6"], profile=["seq=1:64:64"])
    dims = built.record.profiles[0]["dims"]
    assert dims["seq"]["opt"] == 64 and dims["past"]["opt"] == 0 and dims["past + seq"]["opt"] == 64
    with pytest.raises(InputError, match="the opt sizes of past \\+ seq \\(past 40, seq 30\\) make 70"):
        build_engine(art, flavor=RTX, compute_capability=["8.6"], profile=["seq=1:30:64", "past=0:40:63"])
    assert list(manifest(art)["engines"]) == [built.name]


def test_tensorrt_rtx_engines_are_configured_for_stream_capture(tmp_path):
    """TensorRT-RTX captures a context in a CUDA graph only when its engine was built with REQUIRE_USER_ALLOCATION;
    full TensorRT has no such requirement (and 10.x no such flag)."""
    art = toy_artifact(tmp_path / "toy")
    rtx = flavors.load(RTX)
    assert capture_flag(rtx) is trt.BuilderFlag.REQUIRE_USER_ALLOCATION
    assert capture_flag(flavors.Toolkit(flavors.FLAVORS["tensorrt"], trt)) is None
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(art / "model.onnx"))
    graph = Artifact.load(art).graph()
    config = configure(rtx, builder, network, profiles.resolve(graph), flavors.targets(rtx, ["8.6"]))
    assert config.get_flag(trt.BuilderFlag.REQUIRE_USER_ALLOCATION) and config.num_optimization_profiles == 1
    assert builder.build_serialized_network(network, config) is not None  # every family builds so (above)


def test_full_tensorrt_that_inlines_the_plugin_form_fails_the_build(tmp_path):
    """TensorRT before 10.7 inlines a plugin-form node's local function even with the plugin registered, and the engine
    would run without plugins under the plugin form's name. TensorRT-RTX's parser inlines them too (it has no plugin
    layers), so it stands in for such a TensorRT here: driven as a flavor with plugin layers, the build must fail."""
    import trtformer
    from trtformer.engines.build import compile_engine, plugin_layers

    art = trtformer.export("tiny-transfo-xl", tmp_path / "xl", form="plugin", reference=False)
    m = Artifact.load(art).manifest
    inlining = flavors.Toolkit(flavors.FLAVORS["tensorrt"], trt)
    targets = flavors.Targets(("8.6",), (trt.ComputeCapability.SM86,))
    message = ("made 0 plugin layers of the 2 plugin-form nodes (RelPositionAttention (2 nodes)): it inlined their local "
               "functions instead of using the registered plugins")  # fmt: skip
    with pytest.raises(EngineError, match=re.escape(message)) as info:
        compile_engine(inlining, art / "model.onnx", profiles.resolve(m.graph()), targets, plugins=m.plugins)
    assert "TensorRT >= 10.7" in info.value.hint
    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(art / "model.onnx")) and plugin_layers(trt, network) == 0
    # The real flavor of the same module builds it, inlined, and records no plugin layers.
    assert build_engine(art, flavor=RTX, compute_capability=["8.6"]).record.plugins == ()
    assert inlining.plugin_problem().endswith("instead of using the plugins (needs >= 10.7)")  # its 1.7 reads as < 10.7


# ---------------------------------------------------------------------------------------------- timing cache


def test_timing_cache_file_round_trip(tmp_path):
    """The full-TensorRT timing-cache path, driven through the API TensorRT-RTX shares (where it is a no-op)."""
    path = tmp_path / "sub" / "timing.cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        config = trt.Builder(trt.Logger(trt.Logger.ERROR)).create_builder_config()
        load_timing_cache(config, path)  # absent: starts empty
        save_timing_cache(config, path)
        saved = path.read_bytes()
        load_timing_cache(config, path)  # present: read back
        save_timing_cache(config, path)
    assert saved and path.read_bytes() == saved and [p.name for p in path.parent.iterdir()] == ["timing.cache"]


# ---------------------------------------------------------------------------------------------- CLI


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_build_then_cached(tmp_path, gpt2_artifact, capsys, caplog):
    art = copy_of(gpt2_artifact, tmp_path)
    cache = tmp_path / "timing.cache"
    argv = ["build", art, "--flavor", RTX, "--profile", "batch=1:2:4", "past=0:8:63", "--compute-capability", "8.6", "12.0"]
    code, out, _ = run(capsys, *argv, "--timing-cache", cache)
    assert code == 0 and out.startswith("built in") and "compute capability 8.6, 12.0" in out
    assert "batch 1:2:4, seq 1:1:64, past 0:8:63, past + seq 1:9:64" in out
    assert "ignores timing caches" in caplog.text and not cache.exists()
    code, out, _ = run(capsys, *argv)
    assert code == 0 and out.startswith("reused cached")
    code, out, _ = run(capsys, *argv, "--rebuild")
    assert code == 0 and out.startswith("built in") and len(manifest(art)["engines"]) == 1


def test_cli_info_lists_engines_and_what_keeps_one_from_loading(built, capsys):
    art, first = built
    code, out, _ = run(capsys, "info", art)
    assert code == 0 and f"engines    1\n  {first.name}  " in out
    assert f"{RTX} {trt.__version__}, compute capability 8.6, built " in out and "[" not in out.split("engines    1")[1]
    assert "    profile batch 1:1:16, seq 1:" in out
    data = bytearray(first.path.read_bytes())
    data[-1] ^= 0xFF
    first.path.write_bytes(bytes(data))
    assert "[altered: it does not match its sha256]" in run(capsys, "info", art)[1]
    assert "[altered" not in run(capsys, "info", art, "--no-verify")[1]  # the engine is not hashed then
    first.path.unlink()
    assert "[missing]" in run(capsys, "info", art)[1]


def test_cli_runtime_commands_pass_the_engine_to_the_tensorrt_backend(built, capsys):
    art, first = built
    code, out, err = run(capsys, "parity", art, "--backend", "tensorrt", "--engine", "engines/nope.engine")
    assert code == 2 and out == "" and f"has no engine 'engines/nope.engine'; it has {first.name}" in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--profile", "batch=4:2:1"], "0 <= min <= opt <= max"),
        (["--profile", "batch:1:2:4"], "is not NAME=MIN:OPT:MAX"),
        (["--profile", "heads=1:1:1"], "no such dim"),
        (["--profile", "seq=1:1:1000"], "accepts 1 <= seq <= 64"),
        (["--compute-capability", "9.0"], "cannot target compute capability 9.0"),
        (["--compute-capability", "ampere"], "is not like 8.6"),
        (["--flavor", "tensorrt"], "'tensorrt' package"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, gpt2_artifact, capsys, monkeypatch, extra, message):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    art = copy_of(gpt2_artifact, tmp_path)
    code, out, err = run(capsys, "build", art, *extra)
    assert code == 2 and out == "" and message in err and "hint:" in err
    assert err.count("\n") == 1 and list((art / "engines").iterdir()) == []

