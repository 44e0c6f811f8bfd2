"""`trtformer repository`: model repositories for Triton's own backends, their config.pbtxt checked against Triton's
model_config schema, and the implicit-state contract played with ONNX Runtime as Triton's onnxruntime backend plays
it (state inputs start as zeros of the initial dims; each response's state outputs are the next request's inputs).

The tritonserver bundled with nvidia-pytriton has only the Python backend, so it cannot load these repositories here;
test_a_full_triton_serves_the_repository runs where a Triton with the onnxruntime backend is installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import trtformer
from trtformer.artifact import Artifact
from trtformer.errors import ArtifactError
from trtformer.serve.config import schema, validate_config
from trtformer.serve.repository import write_portable_repository

pytest.importorskip("tritonclient.grpc", reason="the serve extra is not installed")
FIXTURES = Path(__file__).parents[1] / "fixtures"
NP = {"TYPE_INT64": np.int64, "TYPE_FP32": np.float32}


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return trtformer.export("tiny-bert", tmp_path_factory.mktemp("repo") / "bert", reference=False)


def ort_session(repo: Path, name: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(repo / name / "1" / "model.onnx"), providers=["CPUExecutionProvider"])


def test_encoder_repository_batches_dynamically(bert, tmp_path):
    repo = write_portable_repository(bert, tmp_path / "repo", name="bert")
    cfg = validate_config(repo / "bert" / "config.pbtxt")
    assert (cfg.backend, cfg.max_batch_size, cfg.default_model_filename) == ("onnxruntime", 32, "model.onnx")
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2000 and not cfg.HasField("sequence_batching")
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("input_ids", [-1]), ("attention_mask", [-1]), ("token_type_ids", [-1])]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("logits", [-1, 512])]
    art = Artifact.load(bert)
    assert (repo / "bert" / "1" / "model.onnx").read_bytes() == art.model_path().read_bytes()
    # What Triton declares is what the ONNX takes: names, types, and the batch axis in front.
    sess = ort_session(repo, "bert")
    assert [i.name for i in sess.get_inputs()] == [i.name for i in cfg.input]
    assert all(i.type == "tensor(int64)" for i in sess.get_inputs())
    ids = np.array([[1, 5, 6, 2], [1, 7, 8, 2]])
    got = sess.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})[0]
    with trtformer.load(bert) as session:
        np.testing.assert_allclose(got, session.run({"input_ids": ids, "attention_mask": np.ones_like(ids),
                                                     "token_type_ids": np.zeros_like(ids)})["logits"], rtol=1e-5, atol=1e-5)


def play_sequence(repo: Path, name: str, requests: list[dict]) -> list[np.ndarray]:
    """Run requests of one sequence as Triton's implicit state does: zeros of the initial dims first, then each
    response's state outputs as the next request's state inputs. Returns the head output of each request."""
    cfg = validate_config(repo / name / "config.pbtxt")
    sess = ort_session(repo, name)
    types = schema().DataType
    state = {s.input_name: np.zeros(list(s.initial_state[0].dims), NP[types.Name(s.initial_state[0].data_type)])
             for s in cfg.sequence_batching.state}
    outs = []
    head = [o.name for o in cfg.output]
    for request in requests:
        fetch = head + [s.output_name for s in cfg.sequence_batching.state]
        values = dict(zip(fetch, sess.run(fetch, {**request, **state}), strict=True))
        state = {s.input_name: values[s.output_name] for s in cfg.sequence_batching.state}
        outs.append(values[head[0]])
    return outs


def test_gpt_repository_keeps_the_kv_cache_as_implicit_state(tmp_path):
    art = FIXTURES / "schema1-tiny-gpt2"
    repo = write_portable_repository(art, tmp_path / "repo", name="gpt")
    cfg = validate_config(repo / "gpt" / "config.pbtxt")
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert [i.name for i in cfg.input] == ["input_ids", "attention_mask"] and [o.name for o in cfg.output] == ["logits"]
    states = cfg.sequence_batching.state
    assert [(s.input_name, s.output_name) for s in states][:2] == [("past.0.key", "present.0.key"), ("past.0.value", "present.0.value")]
    assert len(states) == 4 and all(list(s.dims) == [-1, 4, -1, 16] for s in states)
    assert all(list(s.initial_state[0].dims) == [1, 4, 0, 16] and s.initial_state[0].zero_data for s in states)
    steps = [np.array([[5, 17, 99]]), np.array([[4]]), np.array([[8]])]
    requests, seen = [], 0
    for ids in steps:
        seen += ids.shape[1]
        requests.append({"input_ids": ids, "attention_mask": np.ones((1, seen), np.int64)})
    got = play_sequence(repo, "gpt", requests)
    with trtformer.load(art) as session:
        state = None
        for request, logits in zip(requests, got, strict=True):
            out, state = session.step(request, state)
            np.testing.assert_allclose(logits, out["logits"], rtol=1e-5, atol=1e-5)


def test_transformer_xl_repository_keeps_the_memory_as_implicit_state(tmp_path):
    art = FIXTURES / "schema1-tiny-transfo-xl"
    repo = write_portable_repository(art, tmp_path / "repo", name="txl")
    cfg = validate_config(repo / "txl" / "config.pbtxt")
    states = cfg.sequence_batching.state
    assert [(s.input_name, s.output_name) for s in states] == [("mems.0", "new_mems.0"), ("mems.1", "new_mems.1")]
    assert all(list(s.dims) == [-1, -1, 64] and list(s.initial_state[0].dims) == [0, 1, 64] for s in states)
    segments = [np.arange(1, 11)[None], np.arange(20, 32)[None], np.arange(40, 45)[None]]
    got = play_sequence(repo, "txl", [{"input_ids": s} for s in segments])
    with trtformer.load(art) as session:
        state = None
        for segment, head in zip(segments, got, strict=True):
            out, state = session.step({"input_ids": segment}, state)
            np.testing.assert_allclose(head, next(iter(out.values())), rtol=1e-5, atol=1e-5)


def test_repository_command(bert, tmp_path, capsys):
    from trtformer.cli import main

    assert main(["repository", str(bert), "-o", str(tmp_path / "r"), "--max-batch-size", "8", "--instances", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    cfg = validate_config(tmp_path / "r" / "bert" / "config.pbtxt")
    assert cfg.max_batch_size == 8 and cfg.instance_group[0].count == 2
    assert main(["repository", str(bert), "-o", str(tmp_path / "r")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["repository", str(bert), "-o", str(tmp_path / "t"), "--backend", "tensorrt"]) == 2
    assert "has no full-TensorRT engine" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_validate_config_names_what_is_wrong(tmp_path):
    bad = tmp_path / "config.pbtxt"
    bad.write_text('name: "m"\nbackend: "onnxruntime"\ninput [ { name: "x" data_type: TYPE_INT64 dimz: [ -1 ] } ]\n')
    with pytest.raises(ArtifactError, match="dimz"):
        validate_config(bad)
    bad.write_text('name: "m"\ninput [ { name: "x" data_type: TYPE_INT64 dims: [ -1 ] } ]\n'
                   'output [ { name: "x" data_type: TYPE_FP32 dims: [ 0 ] } ]\n')
    with pytest.raises(ArtifactError, match="tensor 'x' is declared twice; x has dim 0"):
        validate_config(bad)


def test_a_full_triton_serves_the_repository(bert, tmp_path):
    from trtformer.serve.server import TritonServer, find_distribution

    if "onnxruntime" not in find_distribution().backend_names:
        pytest.skip("this tritonserver has no onnxruntime backend (nvidia-pytriton bundles only the Python backend)")
    import tritonclient.http as httpclient

    repo = write_portable_repository(bert, tmp_path / "repo", name="bert")
    with TritonServer(repo, tmp_path) as server:
        c = httpclient.InferenceServerClient(server.url("http"))
        ids = np.array([[1, 5, 6, 2]])
        inputs = []
        for name, value in (("input_ids", ids), ("attention_mask", np.ones_like(ids)), ("token_type_ids", np.zeros_like(ids))):
            inputs.append(httpclient.InferInput(name, list(value.shape), "INT64"))
            inputs[-1].set_data_from_numpy(value)
        got = c.infer("bert", inputs).as_numpy("logits")
        c.close()
    with trtformer.load(bert) as session:
        want = session.run({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    np.testing.assert_allclose(got, want["logits"], rtol=1e-5, atol=1e-5)
