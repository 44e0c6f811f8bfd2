"""`trtformer doctor`: the machine report (fast, no export) against what this machine really has, and one `--run`
over every family's tiny preset in each form: TensorRT-RTX builds ahead of time, parity on ONNX Runtime and torch,
and a reason on every row this CPU-only machine cannot run. The GPU rows (tensorrt parity, CUDA-graph decode and
stream, plugin layers) run their code here on the CPU backends where they can."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper
from support import manifest

from trtformer import doctor
from trtformer.artifact import file_entries, write_json_atomic
from trtformer.cli import main
from trtformer.families import FAMILIES

RTX = importlib.util.find_spec("tensorrt_rtx") is not None


def expected_artifacts() -> list[str]:
    """'preset form' of every job a full run plans: each family's tiny preset, in each form it has."""
    presets = doctor.tiny_presets()
    return [f"{presets[name]} {form}" for name, fam in FAMILIES.items() if name in presets
            for form in (("portable", "plugin") if fam.has_plugin_form else ("portable",))]  # fmt: skip


# ---------------------------------------------------------------------------------------------- without --run


def test_doctor_reports_this_machine_without_exporting():
    code = ("import sys\nfrom trtformer.cli import main\nrc = main(['doctor'])\n"
            "print('exported:', any(m.startswith('trtformer.exporter') for m in sys.modules), 'rc:', rc)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    out = done.stdout
    assert done.returncode == 0 and out.rstrip().endswith("exported: False rc: 0"), done.stderr[-2000:]
    import onnxruntime
    import torch

    from trtformer.trt import flavors

    machine_part, _, backend_part = out.partition("\nbackends\n")
    lines = {ln.split()[0]: ln.strip() for ln in machine_part.splitlines() if ln.startswith("  ")}
    backends = {ln.split()[0]: ln.strip() for ln in backend_part.splitlines() if ln.startswith("  ")}
    assert lines["ONNX"] == f"ONNX Runtime  {onnxruntime.__version__}: {', '.join(onnxruntime.get_available_providers())}"
    assert lines["torch"].startswith(f"torch         {torch.__version__} (")
    if RTX:
        import tensorrt_rtx

        assert lines["TensorRT-RTX"].startswith(f"TensorRT-RTX  {tensorrt_rtx.__version__}: builds ahead of time for 8.0, 8.6")
    if importlib.util.find_spec("tensorrt") is None:
        assert lines["TensorRT"] == "TensorRT      not installed (pip install 'trtformer[tensorrt]')"
        assert "not registered (full TensorRT is not installed" in lines["plugins"]
    if flavors.device_capability() is None:
        assert lines["GPU"].endswith("none visible (no CUDA driver or GPU)")
    from trtformer.runtime.backends import names

    assert list(backends) == names()  # every registered backend, in the registry's order
    assert backends["torch"].split() == ["torch", "ready"] and backends["ort-cpu"].split() == ["ort-cpu", "ready"]
    if not torch.cuda.is_available():
        for backend in ("torch-cuda", "torch-cuda-triton", "ort-cuda", "tensorrt"):
            said = " ".join(backends[backend].split())
            assert said.startswith(f"{backend} no: no CUDA GPU (torch {torch.__version__} sees none)")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--jobs", "2"], "--jobs only make sense with --run"),
        (["--run", "--family", "gpt", "nope"], "--family nope: no such family"),
        (["--run", "--jobs", "0"], "expected an integer >= 1"),
        (["--run", "--json", "/nonexistent-dir/x.json"], "its directory does not exist"),
    ],
)
def test_bad_doctor_options_exit_2_with_one_line(capsys, argv, message):
    try:
        code = main(["doctor", *argv])
    except SystemExit as exc:  # argparse's own errors exit from the parser
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------- --run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One `trtformer doctor --run` into a kept workdir: (exit code, stdout, JSON report, workdir)."""
    root = tmp_path_factory.mktemp("doctor")
    workdir, report = root / "work", root / "report.json"
    code = f"import sys\nfrom trtformer.cli import main\nsys.exit(main(['doctor', '--run', '--workdir', {str(workdir)!r}, '--json', {str(report)!r}]))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert report.is_file(), done.stderr[-3000:]
    return done.returncode, done.stdout, json.loads(report.read_text()), workdir


def test_run_passes_everything_this_machine_can_run(run):
    code, out, report, _ = run
    assert code == 0 and report["passed"], out
    rows = report["rows"]
    ran = {(r["step"], r["subject"], r["target"]): r for r in rows if r["result"] != "skipped"}
    assert all(r["result"] == "pass" for r in ran.values()), [r for r in ran.values() if r["result"] != "pass"]
    for subject in expected_artifacts():
        assert ("export", subject, "") in ran
        for backend in ("ort-cpu", "torch"):
            assert ("parity", subject, backend) in ran and "comparisons; max abs" in ran[("parity", subject, backend)]["detail"]
        if RTX:
            build = ran[("build", subject, "tensorrt-rtx")]["detail"]
            assert build.startswith("compute capability 8.0, 8.6") and "no plugin layers" in build  # RTX inlines
    assert {r["subject"] for r in rows if r["step"] == "export"} == set(expected_artifacts())
    c = report["counts"]
    assert out.splitlines()[-1].startswith(f"{c['pass']} passed, 0 failed, 0 errors, {c['skipped']} skipped in ")
    assert out.splitlines()[-1].endswith("everything that could run here passed")
    assert ["step", "artifact", "target", "result", "seconds", "detail"] in [line.split() for line in out.splitlines()]


def test_run_says_why_each_row_was_skipped(run):
    import torch

    _, _, report, _ = run
    skipped = {(r["step"], r["target"]): r["detail"] for r in report["rows"] if r["result"] == "skipped"}
    assert all(skipped.values())  # every skip has its reason
    machine = doctor.probe()
    for backend, why in machine.backends.items():
        assert skipped.get(("parity", backend)) == why  # None: it ran, and has no skipped row
    if importlib.util.find_spec("tensorrt") is None:
        assert skipped[("build", "tensorrt")].startswith("full TensorRT is not installed")
        assert skipped[("plugin layers", "tensorrt")].startswith("full TensorRT is not installed")
    if not torch.cuda.is_available():
        for step in ("cuda-graph decode", "cuda-graph stream"):
            assert skipped[(step, "tensorrt")].startswith("no CUDA GPU")


def job_of(workdir: Path, subject: str, **changes) -> doctor.Job:
    preset, form = subject.split()
    job = doctor.Job(preset, form, str(workdir / f"{preset}-{form}"), (), (), None, 1)
    return replace(job, **changes)


def test_a_later_run_reuses_what_the_same_trtformer_exported(run):
    _, _, _, workdir = run
    art = workdir / "tiny-gpt2-portable"
    assert doctor.reusable(art, "tiny-gpt2", "portable")
    assert not doctor.reusable(art, "tiny-gpt2", "plugin") and not doctor.reusable(art, "tiny-bert", "portable")
    builds = ("tensorrt-rtx",) if RTX else ()
    rows = doctor.run_job(job_of(workdir, "tiny-gpt2 portable", builds=builds))
    assert [(r.step, r.result) for r in rows] == [("export", "pass"), *(("build", "pass") for _ in builds)]
    assert rows[0].detail == f"reused {art}" and all(r.detail.startswith("compute capability") for r in rows[1:])
    assert all("reused, " in r.detail for r in rows[1:])  # the engine cache too
    m = manifest(art)
    m["versions"]["trtformer"] = "0.0.1"  # another trtformer exported it
    write_json_atomic(art / "manifest.json", m)
    assert not doctor.reusable(art, "tiny-gpt2", "portable")


def test_the_state_runs_compare_with_the_reference(run):
    """The CUDA-graph decode and stream rows run on tensorrt on a GPU; their comparisons run here on ONNX Runtime."""
    _, _, _, workdir = run
    result, detail = doctor._decode(job_of(workdir, "tiny-gpt2 portable"), "ort-cpu")
    assert (result, detail) == ("pass", f"{2 * doctor.DECODE_TOKENS} of {2 * doctor.DECODE_TOKENS} new tokens as the "
                                        "torch reference (greedy)")  # fmt: skip
    for form in ("portable", "plugin"):
        result, detail = doctor._stream(job_of(workdir, f"tiny-transfo-xl {form}"), "ort-cpu")
        assert result == "pass" and detail.startswith(f"{doctor.STREAM_SEGMENTS} segments, max abs ")


def test_a_parity_failure_is_a_fail_row_and_exit_1(run, tmp_path):
    """A graph whose weights differ from the reference: its parity row fails, and so does the report."""
    import shutil

    _, _, _, workdir = run
    art = Path(shutil.copytree(workdir / "tiny-bert-portable", tmp_path / "tiny-bert-portable"))
    model = onnx.load(art / "model.onnx")
    weight = max(model.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    changed = numpy_helper.to_array(weight) * 1.5
    weight.CopyFrom(numpy_helper.from_array(changed, weight.name))
    onnx.save(model, art / "model.onnx")
    m = manifest(art)
    m["files"].update({k: v.to_dict() for k, v in file_entries(art, ["model.onnx"]).items()})
    write_json_atomic(art / "manifest.json", m)
    rows: list[doctor.Row] = []
    doctor._timed(rows, "parity", "tiny-bert portable", "ort-cpu", lambda: doctor._parity(job_of(tmp_path, "tiny-bert portable"), "ort-cpu"))
    [row] = rows
    assert row.result == "FAIL" and "comparisons failed; worst" in row.detail
    report = doctor.Report(doctor.probe(), rows)
    assert not report.passed and report.counts["FAIL"] == 1
    assert doctor.rows_table(report).endswith("see the rows marked FAIL or error")
