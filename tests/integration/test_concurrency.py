"""Concurrency: threads sharing one session get what they would alone; processes exporting into one path, building
engines into one artifact, or recording parity at once leave a whole, valid artifact with every record."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import trtformer
from trtformer.artifact import Artifact, read_manifest
from trtformer.runtime.encode import encode
from trtformer.runtime.generate import generate
from trtformer.runtime.stream import log_likelihood

CLI = [sys.executable, "-m", "trtformer.cli"]


def spawn(*argv) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]


def test_threads_sharing_a_session_get_their_own_results(preset_artifact):
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 512, rng.integers(1, 12)).tolist() for _ in range(16)]
    rows = [rng.integers(0, 512, rng.integers(1, 40)).tolist() for _ in range(16)]
    streams = [rng.integers(0, 512, 50).tolist() for _ in range(8)]
    with trtformer.load(preset_artifact("tiny-gpt2")) as gpt, trtformer.load(preset_artifact("tiny-bert")) as bert, \
            trtformer.load(preset_artifact("tiny-transfo-xl")) as txl:
        jobs = [lambda p=p: generate(gpt, [p], max_new_tokens=6, ignore_eos=True).tokens for p in prompts]
        jobs += [lambda r=r: encode(bert, [r])["logits"] for r in rows]
        jobs += [lambda t=t: log_likelihood(txl, t, seg_len=8).total_log_prob for t in streams]
        alone = [job() for job in jobs]
        with ThreadPoolExecutor(16) as pool:
            together = list(pool.map(lambda job: job(), jobs))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_two_processes_exporting_into_one_path_leave_one_whole_artifact(tmp_path):
    dest = tmp_path / "art"
    finish([spawn("export", "tiny-gpt2", "-o", dest, "--overwrite"), spawn("export", "tiny-openai-gpt", "-o", dest, "--overwrite")])
    art = Artifact.load(dest)  # every listed file matches: not a mix of the two
    assert art.config["variant"] in ("gpt1", "gpt2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temporary or old sibling left


def test_two_processes_building_and_checking_parity_into_one_artifact_keep_every_record(tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install 'trtformer[tensorrt-rtx]')")
    art = trtformer.export("tiny-gpt2", tmp_path / "art")
    build = ["build", art, "--flavor", "tensorrt-rtx", "--compute-capability", "8.6"]
    finish([spawn(*build, "--profile", "batch=1:1:2"), spawn(*build, "--profile", "batch=1:2:4"),
            spawn("parity", art, "--decode-steps", "2"), spawn("parity", art, "--backend", "torch", "--decode-steps", "2")])
    m = read_manifest(art)
    assert len(m.engines) == 2 and {r.profiles[0]["dims"]["batch"]["max"] for r in m.engines.values()} == {2, 4}
    Artifact.load(art)
    import json

    assert set(json.loads((Path(art) / "parity.json").read_text())) == {"ort-cpu", "torch"}
