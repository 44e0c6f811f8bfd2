"""The `trtformer` command: exit codes 0 (ok), 1 (parity failed), 2 (bad input, one line with a hint)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from trtformer.cli import main
from trtformer.artifact import file_entries


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_export_info_parity_generate_bench(tmp_path, capsys):
    art = tmp_path / "tiny"
    assert run(capsys, "export", "tiny-openai-gpt", "-o", art)[0] == 0
    code, out, _ = run(capsys, "info", art)
    assert code == 0 and "past + seq <= 128" in out and "present.1.value" in out
    assert "engines    none (trtformer build ARTIFACT makes one)" in out
    code, out, _ = run(capsys, "parity", art, "--json", tmp_path / "p.json")
    assert code == 0 and "0 failed" in out
    assert json.loads((tmp_path / "p.json").read_text())["passed"] is True
    code, out, _ = run(capsys, "generate", art, "--prompt-ids", "1,2,3", "--max-new-tokens", "5", "--ignore-eos")
    assert code == 0 and len(out.split("new ids")[1].split()[0].split(",")) == 5
    code, out, _ = run(capsys, "bench", art, "--batch", "2", "--prompt-len", "4", "--new-tokens", "4", "--runs", "1", "--json", tmp_path / "b.json")
    assert code == 0 and "tokens/s" in out
    assert json.loads((tmp_path / "b.json").read_text())[0]["batch"] == 2


def test_text_prompt_through_the_artifact_tokenizer(gpt2_artifact, capsys):
    code, out, _ = run(capsys, "generate", gpt2_artifact, "--prompt", "the quick brown fox", "--max-new-tokens", "4")
    assert code == 0
    assert out.split("text", 1)[1].strip().startswith("the quick brown fox")


def test_text_prompt_without_tokenizer_is_a_clear_error(tmp_path, capsys):
    art = tmp_path / "t"
    main(["export", "tiny-gpt2", "-o", str(art)])
    code, _, err = run(capsys, "generate", art, "--prompt", "hi")
    assert code == 2 and "no tokenizer files" in err and "hint:" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["export", "/nonexistent/ckpt", "-o", "{tmp}/x"], "does not exist"),
        (["info", "{tmp}/missing"], "does not exist"),
        (["generate", "{art}", "--prompt-ids", "1,2,999999"], "outside [0, 299]"),
        (["generate", "{art}", "--prompt-ids", "1", "--max-new-tokens", "500"], "exceeds the context of 64"),
        (["parity", "{art}", "--backend", "ort-cuda"], "CUDAExecutionProvider"),
        (["parity", "{art}", "--cuda-graphs"], "--cuda-graphs applies to the torch-cuda, torch-cuda-triton, torch-cuda-compile, tensorrt backends, not ort-cpu"),
        (["generate", "{art}", "--prompt-ids", "1", "--backend", "torch", "--engine", "engines/x.engine"],
         "--engine applies to the tensorrt backend, not torch"),
        (["bench", "{art}", "--backend", "tensorrt", "--threads", "2"], "the tensorrt backend runs on the GPU"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, gpt2_artifact, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, art=gpt2_artifact) for a in argv]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and err.startswith("error:")


def test_unknown_model_type_exits_2(tmp_path, hf_gpt2_dir, capsys):
    import shutil

    ckpt = shutil.copytree(hf_gpt2_dir, tmp_path / "ckpt")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    code, _, err = run(capsys, "export", ckpt, "-o", tmp_path / "out")
    assert code == 2 and "unknown model type 'mamba'" in err
    assert not (tmp_path / "out").exists()


def test_altered_file_exits_2(artifact_copy, capsys):
    (artifact_copy / "reference.safetensors").write_bytes(b"garbage")
    code, _, err = run(capsys, "info", artifact_copy)
    assert code == 2 and "reference.safetensors" in err


def test_parity_failure_exits_1(artifact_copy, capsys):
    """A graph whose weights were changed (and re-checksummed, so it loads) must fail parity."""
    path = artifact_copy / "model.onnx"
    model = onnx.load(path)
    init = max(model.graph.initializer, key=lambda i: numpy_helper.to_array(i).size)  # the token embedding
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))
    onnx.save(model, path)
    manifest = json.loads((artifact_copy / "manifest.json").read_text())
    manifest["files"].update({n: e.to_dict() for n, e in file_entries(artifact_copy, ["model.onnx"]).items()})
    (artifact_copy / "manifest.json").write_text(json.dumps(manifest))
    code, out, _ = run(capsys, "parity", artifact_copy)
    assert code == 1 and "FAIL" in out
    report = json.loads((artifact_copy / "parity.json").read_text())["ort-cpu"]
    assert report["passed"] is False
    assert np.isfinite([c["max_abs"] for c in report["comparisons"]]).all()
