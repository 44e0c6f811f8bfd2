"""`trtformer serve` on a real tritonserver, on loopback: every family through HTTP and gRPC equals the Python API,
dynamic batching across lengths, streaming generation, bad requests, health and metrics, and a clean stop.

One server serves all four families for the module (a tiny BERT and Longformer exported here, the GPT-2 and
Transformer-XL artifacts of tests/fixtures); every request count and wait is bounded.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import trtformer
from trtformer.runtime.encode import encode
from trtformer.runtime.generate import generate
from trtformer.runtime.stream import log_likelihood
from trtformer.serve.launch import start_serving
from trtformer.serve.repository import Batching
from trtformer.serve.server import find_distribution

httpclient = pytest.importorskip("tritonclient.http", reason="the serve extra is not installed")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="the serve extra is not installed")

FIXTURES = Path(__file__).parents[1] / "fixtures"
TIMEOUT = 60  # seconds, for any one request
WIRE = {"int64": "INT64", "int32": "INT32", "float32": "FP32", "bool": "BOOL"}
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    find_distribution()  # a missing server fails here with the install hint, before minutes of export
    root = tmp_path_factory.mktemp("serve")
    return {"bert": trtformer.export("tiny-bert", root / "bert", reference=False),
            "longformer": trtformer.export("tiny-longformer", root / "longformer", reference=False),
            "gpt": FIXTURES / "schema1-tiny-gpt2", "txl": FIXTURES / "schema1-tiny-transfo-xl"}


@pytest.fixture(scope="module")
def serving(artifacts):
    names = list(artifacts)
    # 20 ms of queue delay: a Python client on a busy two-core machine sends about a hundred requests a second,
    # and concurrent requests should still meet in one batch.
    batching = Batching(max_batch_size=32, max_queue_delay_us=20_000)
    with start_serving(list(artifacts.values()), names=names, options={"threads": 1}, batching=batching) as s:
        yield s


@pytest.fixture(scope="module")
def local(artifacts):
    sessions = {k: trtformer.load(v) for k, v in artifacts.items()}
    yield sessions
    for s in sessions.values():
        s.close()


@pytest.fixture(params=["http", "grpc"])
def client(request, serving):
    mod = httpclient if request.param == "http" else grpcclient
    c = httpclient.InferenceServerClient(serving.url("http"), network_timeout=TIMEOUT) if mod is httpclient \
        else grpcclient.InferenceServerClient(serving.url("grpc"))
    yield mod, c
    c.close()


def tensor(mod, name, array):
    array = np.asarray(array)
    t = mod.InferInput(name, list(array.shape), WIRE[str(array.dtype)])
    t.set_data_from_numpy(array)
    return t


def infer(client, model, **inputs):
    mod, c = client
    kw = {} if mod is httpclient else {"client_timeout": TIMEOUT}  # http: the client's network_timeout
    return c.infer(model, [tensor(mod, k, v) for k, v in inputs.items()], **kw)


def lengths_rows(seed: int, count: int, vocab: int = 512) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab, int(n)).tolist() for n in rng.integers(2, 40, count)]


# ------------------------------------------------------------------------------------------- every family


@pytest.mark.parametrize("family", ["bert", "longformer"])
def test_encoder_responses_equal_encode(client, local, family):
    rows = lengths_rows(1, 3)
    for row in rows:
        got = infer(client, family, input_ids=np.array([row]))
        want = encode(local[family], [row])
        for name in want.outputs:
            np.testing.assert_allclose(got.as_numpy(name), want[name], rtol=1e-5, atol=1e-5, err_msg=name)
    # Two rows of different lengths in one request, padded on the right and masked by the client.
    long, short = list(range(10, 22)), [30, 31, 32, 33, 34]
    ids = np.array([long, short + [0] * 7])
    mask = np.array([[1] * 12, [1] * 5 + [0] * 7])
    got = infer(client, family, input_ids=ids, attention_mask=mask)
    want = encode(local[family], [long, short])
    for name in want.outputs:
        np.testing.assert_allclose(got.as_numpy(name), want[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_token_types_and_global_tokens_reach_the_model(client, local):
    ids = np.array([[2, 40, 41, 42, 3, 50, 51, 3]])
    types = np.array([[0, 0, 0, 0, 0, 1, 1, 1]])
    got = infer(client, "bert", input_ids=ids, token_type_ids=types).as_numpy("logits")
    np.testing.assert_allclose(got, encode(local["bert"], ids, types)["logits"], rtol=1e-5, atol=1e-5)
    assert not np.allclose(got, encode(local["bert"], ids)["logits"], atol=1e-3)  # the types changed the result
    glob = np.array([[1, 0, 0, 0, 0, 1, 0, 0]])
    got = infer(client, "longformer", input_ids=ids, global_attention_mask=glob).as_numpy("logits")
    want = encode(local["longformer"], ids, global_attention_mask=glob)["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("params", [{}, {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "seed": 7}],
                         ids=["greedy", "sampled"])
def test_generation_equals_generate(client, local, params):
    prompt = [5, 17, 99, 4]
    cast = {"temperature": np.float32, "top_p": np.float32, "top_k": np.int32, "seed": np.int64}
    sent = {k: np.array([v], cast[k]) for k, v in params.items()}
    got = infer(client, "gpt", input_ids=np.array(prompt), max_new_tokens=np.array([12], np.int32),
                ignore_eos=np.array([True]), **sent)
    want = generate(local["gpt"], [prompt], max_new_tokens=12, ignore_eos=True, **params)
    assert got.as_numpy("output_ids").tolist() == want.tokens[0]
    assert len(want.tokens[0]) == 12 and got.as_numpy("finished").tolist() == [False]


def test_generation_stops_at_eos_like_generate(client, local):
    prompt = [5, 17, 99, 4]
    free = generate(local["gpt"], [prompt], max_new_tokens=10, ignore_eos=True).tokens[0]
    eos = free[3]  # a token greedy decoding reaches: generation stops there
    got = infer(client, "gpt", input_ids=np.array(prompt), max_new_tokens=np.array([10], np.int32),
                eos_token_id=np.array([eos]))
    want = generate(local["gpt"], [prompt], max_new_tokens=10, eos_token_id=eos)
    assert got.as_numpy("output_ids").tolist() == want.tokens[0] == free[: free.index(eos) + 1]
    assert got.as_numpy("finished").tolist() == [True]


def stream_tokens(serving, model, **inputs) -> tuple[list[int], list[float]]:
    """Tokens of one streamed generation over gRPC, with the time each arrived."""
    results: queue.Queue = queue.Queue()
    c = grpcclient.InferenceServerClient(serving.url("grpc"))
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        c.async_stream_infer(model, [tensor(grpcclient, k, v) for k, v in inputs.items()], enable_empty_final_response=True)
        tokens, times = [], []
        while True:
            result, error = results.get(timeout=TIMEOUT)
            if error is not None:
                raise error
            if result.get_response().parameters["triton_final_response"].bool_param:
                return tokens, times
            tokens.append(int(result.as_numpy("output_ids")[0]))
            times.append(time.perf_counter())
    finally:
        c.stop_stream()
        c.close()


@pytest.mark.parametrize("params", [{}, {"temperature": 1.0, "top_k": 50, "seed": 3}], ids=["greedy", "sampled"])
def test_streaming_yields_the_tokens_of_generate(serving, local, params):
    cast = {"temperature": np.float32, "top_k": np.int32, "seed": np.int64}
    tokens, times = stream_tokens(serving, "gpt_stream", input_ids=np.array([9, 8, 7]), max_new_tokens=np.array([16], np.int32),
                                  ignore_eos=np.array([True]), **{k: np.array([v], cast[k]) for k, v in params.items()})
    assert tokens == generate(local["gpt"], [[9, 8, 7]], max_new_tokens=16, ignore_eos=True, **params).tokens[0]
    assert len(times) == 16 and times[-1] > times[0]  # sixteen responses, one per token


def test_scoring_equals_log_likelihood(client, local):
    tokens = np.random.default_rng(4).integers(0, 512, 75)
    for seg_len in (None, 10):
        sent = {} if seg_len is None else {"seg_len": np.array([seg_len], np.int32)}
        got = infer(client, "txl", input_ids=tokens, **sent)
        want = log_likelihood(local["txl"], tokens.tolist(), seg_len)
        assert got.as_numpy("scored").tolist() == [want.scored] == [74]
        np.testing.assert_allclose(got.as_numpy("log_likelihood"), [want.total_log_prob], rtol=1e-9)
        np.testing.assert_allclose(got.as_numpy("perplexity"), [want.perplexity], rtol=1e-9)
        np.testing.assert_allclose(got.as_numpy("nll"), [want.nll], rtol=1e-9)


# ------------------------------------------------------------------------------------------ batching


def test_64_concurrent_mixed_length_requests_batch_and_equal_single_requests(serving, local):
    rows = lengths_rows(7, 64)
    stats = httpclient.InferenceServerClient(serving.url("http"))
    before = batch_sizes(stats, "bert")
    done: queue.Queue = queue.Queue()
    c = grpcclient.InferenceServerClient(serving.url("grpc"))
    for i, row in enumerate(rows):
        c.async_infer("bert", [tensor(grpcclient, "input_ids", np.array([row]))],
                      callback=lambda result, error, i=i: done.put((i, result, error)), client_timeout=TIMEOUT)
    results = dict((i, (r, e)) for i, r, e in (done.get(timeout=TIMEOUT) for _ in rows))
    c.close()
    for i, row in enumerate(rows):
        result, error = results[i]
        assert error is None, error
        np.testing.assert_allclose(result.as_numpy("logits"), encode(local["bert"], [row])["logits"], rtol=1e-5, atol=1e-5)
    after = batch_sizes(stats, "bert")
    stats.close()
    grown = {size: n - before.get(size, 0) for size, n in after.items() if n > before.get(size, 0)}
    assert sum(size * n for size, n in grown.items()) == 64  # every request in exactly one batch
    assert max(grown) > 1, f"no batch held more than one request: {grown}"


def batch_sizes(c, model: str) -> dict[int, int]:
    """The server's count of executions per batch size, from its statistics endpoint."""
    entries = c.get_inference_statistics(model)["model_stats"][0].get("batch_stats", [])
    return {int(e["batch_size"]): int(e["compute_infer"]["count"]) for e in entries}


# ------------------------------------------------------------------------------------------ bad requests


BAD = [
    ("bert", {"input_ids": np.array([[1, 999]])}, r"input_ids has 999 at \(0, 1\), outside \[0, 511\] \(hint: "),
    ("bert", {"input_idz": np.array([[1, 2]])}, r"unexpected inference input 'input_idz'"),
    ("bert", {"input_ids": np.array([[1.0, 2.0]], np.float32)}, r"expects 'INT64'"),
    ("bert", {"input_ids": np.array([[1, 2, 3]]), "attention_mask": np.array([[1, 0, 1]])},
     r"attention_mask must mark real tokens with 1 and padding with 0, padding on the right"),
    ("longformer", {"input_ids": np.ones((1, 5000), np.int64)}, r"5000.*\(hint: "),
    ("gpt", {"input_ids": np.array([1, 2]), "max_new_tokens": np.array([500], np.int32)},
     r"prompt of 2 tokens \+ 500 new tokens exceeds the context of 128 \(hint: "),
    ("gpt", {"input_ids": np.array([1, 2]), "temperature": np.array([-1.0], np.float32)}, r"temperature must be >= 0"),
    ("txl", {"input_ids": np.array([3])}, r"scoring needs at least 2 tokens per row, got 1"),
]


@pytest.mark.parametrize("model,inputs,message", BAD, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(BAD)])
def test_bad_request_gets_the_one_line_error_and_the_server_keeps_serving(client, serving, model, inputs, message):
    with pytest.raises(Exception) as err:  # noqa: B017  tritonclient raises its own error type per protocol
        infer(client, model, **inputs)
    assert type(err.value).__name__ == "InferenceServerException"
    assert re.search(message, str(err.value)), str(err.value)
    good = {"bert": {"input_ids": np.array([[1, 2]])}, "longformer": {"input_ids": np.array([[1, 2]])},
            "gpt": {"input_ids": np.array([1, 2]), "max_new_tokens": np.array([2], np.int32)},
            "txl": {"input_ids": np.array([1, 2, 3])}}[model]
    assert infer(client, model, **good).get_response() is not None
    assert serving.server.process.poll() is None


def test_a_bad_request_in_a_batch_fails_alone(serving, local):
    rows = lengths_rows(11, 8)
    rows[3] = [1, 700, 2]
    c = httpclient.InferenceServerClient(serving.url("http"), concurrency=8, network_timeout=TIMEOUT)
    pending = [c.async_infer("bert", [tensor(httpclient, "input_ids", np.array([r]))]) for r in rows]
    outcomes = []
    for p in pending:
        try:
            outcomes.append(p.get_result(timeout=TIMEOUT).as_numpy("logits"))
        except Exception as exc:  # the one bad request
            outcomes.append(exc)
    c.close()
    assert "700" in str(outcomes[3]) and "outside [0, 511]" in str(outcomes[3])
    for i, row in enumerate(rows):
        if i != 3:
            np.testing.assert_allclose(outcomes[i], encode(local["bert"], [row])["logits"], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- health and metrics


def test_health_readiness_and_metrics(serving):
    c = httpclient.InferenceServerClient(serving.url("http"))
    assert c.is_server_live() and c.is_server_ready()
    assert all(c.is_model_ready(m.name) for m in serving.models)
    assert not c.is_model_ready("no-such-model")
    infer((httpclient, c), "bert", input_ids=np.array([[1, 2, 3]]))
    with urllib.request.urlopen(f"http://{serving.url('metrics')}/metrics", timeout=10) as r:
        text = r.read().decode()
    ok = re.search(r'nv_inference_request_success\{model="bert",version="1"\} (\d+)', text)
    assert ok and int(ok.group(1)) >= 1, text[:2000]
    assert 'nv_inference_request_failure{model="bert"' in text
    meta = c.get_model_metadata("bert")
    assert [i["name"] for i in meta["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    assert meta["inputs"][0]["shape"] == [-1, -1] and meta["outputs"][0]["datatype"] == "FP32"
    c.close()


# --------------------------------------------------------------------------------------- the command


def test_serve_command_stops_cleanly_on_sigterm(artifacts, tmp_path):
    log = tmp_path / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "trtformer.cli", "serve", str(artifacts["txl"]), "--name", "txl",
                             "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", "--log-file", str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not any(line.startswith("serving on") for line in lines):
            line = proc.stdout.readline()
            assert line, "trtformer serve exited before serving: " + "".join(lines)
            lines.append(line)
        http = re.search(r"serving on http (\S+),", lines[-1]).group(1)
        c = httpclient.InferenceServerClient(http)
        assert c.is_model_ready("txl")
        out = c.infer("txl", [tensor(httpclient, "input_ids", np.array([1, 2, 3, 4]))])
        assert out.as_numpy("scored").tolist() == [3]
        c.close()  # Triton waits (up to its exit timeout) for open client connections before it stops
        server_pid = int(re.search(r"tritonserver pid (\d+)", "".join(lines)).group(1))
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, rest
    assert "stopped (tritonserver exit code 0)" in rest, log.read_text()[-3000:]
    with pytest.raises(ProcessLookupError):  # the server (and with it its stubs) is gone
        os.kill(server_pid, 0)


@pytest.mark.parametrize("argv,message", [
    (["serve", "/nonexistent/artifact"], "artifact directory /nonexistent/artifact does not exist"),
    (["serve", "FIXTURE", "--engine", "x.engine"], "engine applies to the tensorrt backend, not ort-cpu"),
    (["serve", "FIXTURE", "--name", "a", "--name", "b"], "--name given 2 times for 1 artifacts"),
    (["serve", "FIXTURE", "--name", "bad name"], "model name 'bad name' may hold only"),
])
def test_serve_command_refuses_bad_input_before_starting(argv, message, capsys):
    from trtformer.cli import main

    argv = [str(FIXTURES / "schema1-tiny-gpt2") if a == "FIXTURE" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
