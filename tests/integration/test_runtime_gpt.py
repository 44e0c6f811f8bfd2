"""Runtime on exported GPT artifacts: validation, state, generation against the reference and transformers."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers as T

import trtformer
from trtformer.errors import ArtifactError, InputError
from trtformer.runtime.generate import GenerationConfig, generate


@pytest.fixture(scope="module")
def ort(gpt2_artifact):
    return trtformer.load(gpt2_artifact, backend="ort-cpu")


@pytest.fixture(scope="module")
def ref(gpt2_artifact):
    return trtformer.load(gpt2_artifact, backend="torch")


def feeds(batch=1, seq=4, past=0):
    return {"input_ids": np.ones((batch, seq), np.int64), "attention_mask": np.ones((batch, past + seq), np.int64)}


# --- validation ---------------------------------------------------------------------------------------------


def test_unknown_and_missing_input_names(ort):
    with pytest.raises(InputError, match=r"unknown \['input'\], missing \['input_ids'\]"):
        ort.step({"input": np.ones((1, 2), np.int64), "attention_mask": np.ones((1, 2), np.int64)})


def test_wrong_dtype(ort):
    f = feeds()
    f["input_ids"] = f["input_ids"].astype(np.int32)
    with pytest.raises(InputError, match="input_ids must be int64, got int32"):
        ort.step(f)


def test_wrong_rank_and_inconsistent_batch(ort):
    with pytest.raises(InputError, match="rank 2"):
        ort.step({"input_ids": np.ones((4,), np.int64), "attention_mask": np.ones((1, 4), np.int64)})
    with pytest.raises(InputError, match=r"attention_mask .*batch = 1"):
        ort.step({"input_ids": np.ones((1, 4), np.int64), "attention_mask": np.ones((2, 4), np.int64)})


def test_token_id_out_of_range(ort):
    f = feeds()
    f["input_ids"][0, 2] = 300
    with pytest.raises(InputError, match=r"input_ids has 300 at \(0, 2\), outside \[0, 299\]"):
        ort.step(f)
    f["input_ids"][0, 2] = -1
    with pytest.raises(InputError, match="outside"):
        ort.step(f)


def test_sequence_longer_than_context(ort):
    with pytest.raises(InputError, match="exceeds the model's context of 64"):
        ort.step(feeds(seq=65))
    _, state = ort.step(feeds(seq=60))
    with pytest.raises(InputError, match=r"past \+ seq = 65 exceeds"):
        ort.step(feeds(seq=5, past=60), state)


def test_attention_mask_must_cover_past_and_new_tokens(ort):
    _, state = ort.step(feeds(seq=4))
    with pytest.raises(InputError, match=r"attention_mask .*must be 5, got 4"):
        ort.step(feeds(seq=1, past=3), state)


def test_state_of_the_wrong_shape(ort):
    arrays = {f"past.{i}.{p}": np.zeros((1, 4, 3, 16), np.float32) for i in range(2) for p in ("key", "value")}
    arrays["past.1.value"] = np.zeros((1, 4, 2, 16), np.float32)
    with pytest.raises(InputError, match=r"past.1.value .*past = 3"):
        ort.state_from_numpy(arrays)
    arrays["past.1.value"] = np.zeros((1, 8, 3, 16), np.float32)
    with pytest.raises(InputError, match="axis 1 must be 4, got 8"):
        ort.state_from_numpy(arrays)


def test_state_from_another_backend_is_refused(ort, ref):
    _, state = ref.step(feeds())
    with pytest.raises(InputError, match="belongs to backend 'torch'"):
        ort.step(feeds(seq=1, past=4), state)


def test_state_round_trips_through_numpy(ort):
    f = feeds(seq=5)
    _, state = ort.step(f)
    again = ort.state_from_numpy(ort.state_to_numpy(state))
    a, _ = ort.step(feeds(seq=1, past=5), state)
    b, _ = ort.step(feeds(seq=1, past=5), again)
    np.testing.assert_array_equal(a["logits"], b["logits"])


# --- artifact integrity ---------------------------------------------------------------------------------------


def test_altered_model_file_is_detected(artifact_copy):
    with open(artifact_copy / "model.onnx", "r+b") as f:
        f.seek(-10, 2)
        f.write(b"XXXXXXXXXX")
    with pytest.raises(ArtifactError, match=r"model.onnx does not match its sha256"):
        trtformer.load(artifact_copy)


def test_missing_model_file_is_detected(artifact_copy):
    (artifact_copy / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="model.onnx is missing"):
        trtformer.load(artifact_copy)


def test_unknown_schema_version(artifact_copy):
    m = json.loads((artifact_copy / "manifest.json").read_text())
    m["schema_version"] = 99
    (artifact_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="schema_version 99"):
        trtformer.load(artifact_copy)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json"):
        trtformer.load(tmp_path)


def test_runtime_imports_neither_torch_nor_onnx(gpt2_artifact):
    code = (
        "import sys; sys.modules['torch'] = sys.modules['onnx'] = None\n"  # any torch or onnx import now fails
        "import numpy as np, trtformer\n"
        "from trtformer.runtime.generate import generate\n"
        f"s = trtformer.load({str(gpt2_artifact)!r}, backend='ort-cpu')\n"
        "r = generate(s, [[1, 2, 3]], max_new_tokens=4)\n"
        "print(len(r.tokens[0]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "4"


def test_backend_helper_modules_import_without_torch():
    """The GPU backends' helpers import torch only inside the functions that use it: a service embedding the runtime
    imports them (the registry, type checks) without torch installed."""
    modules = ["buckets", "buffers", "compiled", "graphs", "segments", "static_cache", "tensorrt"]
    code = ("import sys; sys.modules['torch'] = None\n"
            + "".join(f"import trtformer.runtime.backends.{m}\n" for m in modules) + "print('ok')")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# --- generation -----------------------------------------------------------------------------------------------


PROMPTS = [[5, 17, 42, 9, 100, 7], [250, 3], [11, 12, 13, 14]]


def test_greedy_equals_reference_token_for_token(ort, ref):
    a = generate(ort, PROMPTS, max_new_tokens=20, ignore_eos=True)
    b = generate(ref, PROMPTS, max_new_tokens=20, ignore_eos=True)
    assert a.tokens == b.tokens
    assert len(set(a.tokens[0])) > 3, "the test model should not repeat one token"


def test_greedy_equals_transformers_generate(ort, hf_gpt2_dir):
    hf = T.GPT2LMHeadModel.from_pretrained(hf_gpt2_dir).eval()
    ours = generate(ort, PROMPTS, max_new_tokens=12, ignore_eos=True)
    for prompt, tokens in zip(PROMPTS, ours.tokens, strict=True):
        with torch.no_grad():
            want = hf.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
        assert tokens == want[0, len(prompt):].tolist()


def test_left_padded_batch_equals_rows_alone(ort):
    batched = generate(ort, PROMPTS, max_new_tokens=10, ignore_eos=True)
    for prompt, tokens in zip(PROMPTS, batched.tokens, strict=True):
        assert generate(ort, [prompt], max_new_tokens=10, ignore_eos=True).tokens[0] == tokens


def test_stops_at_eos(ort):
    free = generate(ort, [PROMPTS[0]], max_new_tokens=10, ignore_eos=True).tokens[0]
    eos = free[3]
    stopped = generate(ort, [PROMPTS[0], PROMPTS[1]], max_new_tokens=10, eos_token_id=eos)
    assert stopped.tokens[0] == free[: free.index(eos) + 1]
    assert stopped.finished[0]


def test_sampling_is_seeded_and_backend_independent(ort, ref):
    cfg = dict(max_new_tokens=12, temperature=0.9, top_k=50, top_p=0.9, ignore_eos=True)
    a = generate(ort, PROMPTS, seed=7, **cfg)
    assert a.tokens == generate(ort, PROMPTS, seed=7, **cfg).tokens
    assert a.tokens == generate(ref, PROMPTS, seed=7, **cfg).tokens
    assert a.tokens != generate(ort, PROMPTS, seed=8, **cfg).tokens


def test_generation_longer_than_context_is_refused_before_running(ort):
    with pytest.raises(InputError, match="exceeds the context of 64"):
        generate(ort, [[1] * 40], max_new_tokens=30)


def test_bad_generation_settings(ort):
    with pytest.raises(InputError, match="top_p"):
        generate(ort, [[1]], GenerationConfig(top_p=0.0))
    with pytest.raises(InputError, match="at least one token"):
        generate(ort, [[]])
