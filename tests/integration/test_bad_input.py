"""The bad-input catalogue (README, "Bad input"): every case exits 2 with one line on stderr that names what is wrong,
and leaves the artifact and every file of the user's byte-identical."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

import trtformer
from trtformer.cli import main
from trtformer.errors import ArtifactError, BackendError, InputError


@pytest.fixture
def arts(preset_artifact) -> dict[str, Path]:
    return {"gpt": preset_artifact("tiny-gpt2"), "bert": preset_artifact("tiny-bert"), "lf": preset_artifact("tiny-longformer"),
            "gpt-bf16": preset_artifact("tiny-gpt2", precision="bf16")}


class Evil:
    """A pickle that would run a command when unpickled by anything but a weights-only reader."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/trtformer-pwned",))


def user_files(tmp: Path) -> dict[str, Path]:
    """The files a user has lying around: the cases name them with {key}."""
    files = {
        "floats.json": json.dumps([[1.9999, 2.9999]]),
        "bools.json": json.dumps([[True, False]]),
        "big.txt": "1 2 99999999999999999999\n",
        "notes/notes.txt": "my notes",
        "plain.txt": "just a file",
        "ckpt-pickle/config.json": json.dumps({"model_type": "gpt2", "vocab_size": 10, "n_positions": 8, "n_embd": 8,
                                               "n_layer": 1, "n_head": 2, "architectures": ["GPT2LMHeadModel"]}),
        "ckpt-safetensors/model.safetensors": "garbage",
        "long.txt": " ".join(["1"] * 200) + "\n",
        "ids.txt": "1 5 6 2\n",
    }
    for name, text in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(text)
    (tmp / "ckpt-pickle/pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    shutil.copy(tmp / "ckpt-pickle/config.json", tmp / "ckpt-safetensors/config.json")
    np.save(tmp / "float.npy", np.array([[1.5, 2.0]]))
    (tmp / "empty.npy").write_bytes(b"")
    return {k.split("/")[0].split(".")[0].replace("-", "_"): tmp / k.split("/")[0] for k in [*files, "float.npy", "empty.npy"]}


CATALOGUE = [
    # token ids
    ("encode {bert} --input-ids {floats}", "is 1.9999, which is not an integer token id"),
    ("encode {bert} --input-ids {bools}", "is True, which is not an integer token id"),
    ("encode {bert} --input-ids {float}", "must hold integers, got an array of float64"),
    ("encode {bert} --input-ids {empty}", "cannot read token ids"),
    ("encode {bert} --input-ids {big}", "does not fit in int64"),
    ("generate {gpt} --prompt-ids 1,99999999999999999999", "does not fit in int64"),
    ("encode {bert} --input-ids {long}", "exceeds the model's context of 128 positions (hint: shorten the sequences"),
    ("encode {bert} --text hello", "hint: pass token ids with --input-ids FILE"),
    ("encode {lf} --input-ids {ids} --global-tokens -1", "global token position -1 is outside sequence 0 (4 tokens)"),
    ("encode {bert} --input-ids {ids} --global-tokens 0", "this model takes no global_attention_mask"),
    # destinations
    ("export tiny-gpt2 -o {notes} --overwrite", "is not a trtformer artifact"),
    ("export tiny-gpt2 -o {plain} --overwrite", "is not a directory"),
    ("export tiny-gpt2 -o .", "the working directory or above it"),
    ("export {ckpt_pickle} -o {tmp}/out", "ran nothing in it"),
    ("export {ckpt_safetensors} -o {tmp}/out", "cannot read the weights"),
    ("parity {gpt} --json {tmp}/missing/p.json", "the directory"),
    ("encode {bert} --input-ids {ids} --out {plain}", "is a file"),
    # numbers
    ("generate {gpt} --prompt-ids 1 --temperature nan", "must be a finite number"),
    ("generate {gpt} --prompt-ids 1 --top-p inf", "must be a finite number"),
    ("bench {gpt} --batch -1", "must be >= 1, got -1"),
    ("bench {gpt} --new-tokens 0", "must be >= 1, got 0"),
    ("bench {gpt} --runs 0", "must be >= 1, got 0"),
    ("bench {gpt} --threads -2", "must be >= 1, got -2"),
    ("parity {gpt} --decode-steps -1", "must be >= 1, got -1"),
    # backends
    ("generate {gpt_bf16} --prompt-ids 1,2", "ONNX Runtime backends cannot run this bfloat16 artifact"),
    ("parity {gpt_bf16}", "ONNX Runtime backends cannot run this bfloat16 artifact"),
]


def tree_digest(*roots: Path) -> dict[str, str]:
    out = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            if p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("command,message", CATALOGUE, ids=[c[0].split()[0] + ": " + c[1][:40] for c in CATALOGUE])
def test_bad_input_exits_2_with_one_line_and_touches_nothing(command, message, arts, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = {**user_files(tmp_path), **{k.replace("-", "_"): v for k, v in arts.items()}, "tmp": tmp_path}
    before = tree_digest(tmp_path, *arts.values())
    argv = [part.format(**names) for part in command.split()]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert message in err[0]
    assert "Traceback" not in err[0] and "weights_only=False" not in err[0]
    after = tree_digest(tmp_path, *arts.values())
    assert after == before
    assert not Path("/tmp/trtformer-pwned").exists()


def test_manifest_that_points_outside_is_refused(arts, tmp_path, capsys):
    art = Path(shutil.copytree(arts["gpt"], tmp_path / "a"))
    (tmp_path / "other.onnx").write_bytes((art / "model.onnx").read_bytes())
    m = json.loads((art / "manifest.json").read_text())
    for value in (str(tmp_path / "other.onnx"), "../other.onnx"):
        m["graphs"]["model"]["models"]["plain"] = value
        (art / "manifest.json").write_text(json.dumps(m))
        assert main(["generate", str(art), "--prompt-ids", "1"]) == 2
        assert "which files does not list" in capsys.readouterr().err
    for bad in ("null", "42", json.dumps({**m, "files": {}})):
        (art / "manifest.json").write_text(bad)
        assert main(["info", str(art)]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_unknown_family_names_the_known_ones(arts, tmp_path, capsys):
    art = Path(shutil.copytree(arts["gpt"], tmp_path / "a"))
    m = json.loads((art / "manifest.json").read_text())
    (art / "manifest.json").write_text(json.dumps({**m, "family": "mamba"}))
    assert main(["parity", str(art)]) == 2
    err = capsys.readouterr().err
    assert "mamba" in err and "gpt" in err


def test_parity_prints_its_table_when_the_report_cannot_be_recorded(arts, tmp_path, capsys):
    art = Path(shutil.copytree(arts["gpt"], tmp_path / "a"))
    (art / "parity.json").mkdir()  # as unwritable as a read-only artifact, also for root
    assert main(["parity", str(art), "--decode-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and "could not be recorded" in out


def test_python_api_errors_say_what_to_do(arts):
    with pytest.raises(ArtifactError, match="is a directory path, got NoneType"):
        trtformer.load(None)
    with pytest.raises(BackendError, match="takes no option thread"):
        trtformer.load(arts["gpt"], thread=2)
    with trtformer.load(arts["gpt"]) as s:
        with pytest.raises(InputError, match="must be a numpy array"):
            s.step({"input_ids": [[1, 2]], "attention_mask": np.ones((1, 2), np.int64)})
        with pytest.raises(InputError, match="mapping of names"):
            s.run([np.array([[1]])])
        with pytest.raises(InputError, match="must be a State"):
            s.step({"input_ids": np.array([[1]]), "attention_mask": np.ones((1, 1), np.int64)}, state={})
    from trtformer.runtime.encode import encode

    with trtformer.load(arts["bert"]) as s, pytest.raises(InputError, match="not an integer token id"):
        encode(s, [[1.5, 2]])


def test_a_dead_exports_leftovers_are_removed_by_the_next_write(arts, tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    tmp_left = tmp_path / f".art.tmp-{pid}-deadbeef"
    old_left = tmp_path / f".art.old-{pid}-cafe"
    mine = tmp_path / f".art.tmp-{os.getpid()}-0123"  # a live writer's: kept
    for d in (tmp_left, old_left, mine):
        d.mkdir()
    trtformer.export("tiny-gpt2", tmp_path / "art")
    assert not tmp_left.exists() and not old_left.exists() and mine.exists()
    trtformer.load(tmp_path / "art")
