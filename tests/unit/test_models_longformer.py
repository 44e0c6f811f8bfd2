"""The Longformer reference model against transformers (every head, global tokens, padding, lengths that are not
multiples of the window), its checkpoint loading, and an export that runs at any length."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T
from torch.export import Dim

from trtformer.errors import CheckpointError
from trtformer.families import build_model, load_model, preset

# Windows 4 and 8: transformers pads every input to a multiple of the largest window (8 here), which must then be a
# multiple of every layer's window: with 4 and 6 it pads 13 tokens to 18 and fails. trtformer takes any length.
SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=64, attention_window=[4, 8], initializer_range=0.2)  # fmt: skip
ARCHITECTURES = ["Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering"]
PAD, SEP = 1, 2  # LongformerConfig's pad_token_id and sep_token_id
GLOBALS = {"no-global": [], "global-at-start": [(0, 0), (1, 0), (2, 0)], "global-elsewhere": [(0, 5), (0, 6), (2, 9)]}


def save_hf(directory, arch: str, **overrides):
    torch.manual_seed(0)
    cfg = T.LongformerConfig(**{**SMALL, "num_labels": 2 if arch == "ForQuestionAnswering" else 3, **overrides})
    hf = getattr(T, "Longformer" + arch)(cfg).eval()
    hf.save_pretrained(directory)
    return hf


@pytest.fixture(scope="module", params=ARCHITECTURES)
def pair(request, tmp_path_factory):
    """(transformers model, trtformer model loaded from its checkpoint directory)."""
    directory = tmp_path_factory.mktemp(request.param)
    return save_hf(directory, request.param), load_model(directory).model


def batch(seq: int, padded: bool, globals_at=()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and global_attention_mask [3, seq]; padded: rows 1 and 2 end in padding."""
    ids = torch.randint(3, 99, (3, seq), generator=torch.Generator().manual_seed(seq))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, seq - 3 :] = 0
        mask[2, seq // 2 :] = 0
    glob = torch.zeros_like(ids)
    for row, col in globals_at:
        glob[row, col] = 1
    return ids.masked_fill(mask == 0, PAD), mask, glob


def assert_outputs_match(got: dict, want, mask: torch.Tensor, tol: float = 1e-5):
    assert got, "no outputs"
    real = mask.bool()
    for name, value in got.items():
        ref = want[name]
        assert value.shape == ref.shape, name
        if value.dim() >= 2 and value.shape[:2] == mask.shape:  # per-token outputs: real tokens only
            value, ref = value[real], ref[real]
        assert (value - ref).abs().max() <= tol, name


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded"])
@pytest.mark.parametrize("globals_at", GLOBALS.values(), ids=GLOBALS.keys())
def test_matches_transformers(pair, globals_at, padded):
    hf, ours = pair
    ids, mask, glob = batch(13, padded, globals_at)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, global_attention_mask=glob)
        got = ours(ids, mask, glob)
    assert_outputs_match(got, want, mask)


@pytest.mark.parametrize("seq", [1, 2, 5, 12, 19])
def test_any_length_matches_transformers(tmp_path, seq):
    hf = save_hf(tmp_path, "Model")
    ids, mask, glob = batch(seq, padded=seq > 4, globals_at=[(0, 0), (1, seq - 1)])
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask, global_attention_mask=glob)
        got = load_model(tmp_path).model(ids, mask, glob)
    assert_outputs_match(got, want, mask)


@pytest.mark.parametrize("arch", ["ForSequenceClassification", "ForQuestionAnswering"])
def test_default_global_attention_matches_transformers(tmp_path, arch):
    """Without a global mask: the first token (classification) or the question before the first sep (QA)."""
    hf = save_hf(tmp_path, arch)
    ids, mask, _ = batch(13, padded=True)
    ids[:, [4, 5]] = SEP  # question [SEP][SEP] context ... [SEP], as transformers' QA expects
    ids[0, 12], ids[1, 9], ids[2, 6] = SEP, SEP, SEP
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask)
        got = load_model(tmp_path).model(ids, mask)
    assert_outputs_match(got, want, mask)


# ---------------------------------------------------------------------------------------------- loading


def test_dilation_from_config(tmp_path):
    """The original Longformer configs give one dilation a layer; transformers ignores the key."""
    save_hf(tmp_path, "Model")
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "attention_dilation": [1, 2]}))
    dilated = load_model(tmp_path).model
    assert dilated.config.attention_dilation == ((1, 1, 1, 1), (2, 2, 2, 2))
    ids, mask, glob = batch(13, padded=False)
    with torch.no_grad():
        plain = T.LongformerModel.from_pretrained(tmp_path).eval()(input_ids=ids).last_hidden_state
        assert (dilated(ids, mask, glob)["last_hidden_state"] - plain).abs().max() > 1e-3  # the second layer dilates


def test_unsupported_architecture(tmp_path):
    save_hf(tmp_path, "Model")
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "architectures": ["LongformerForMultipleChoice"]}))
    with pytest.raises(CheckpointError, match="not supported"):
        load_model(tmp_path)


def test_odd_window_is_a_checkpoint_error(tmp_path):
    save_hf(tmp_path, "Model")
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "attention_window": [4, 5]}))
    with pytest.raises(CheckpointError, match="even"):
        load_model(tmp_path)


def test_preset_is_deterministic_and_rebuilds_from_its_config():
    model = preset("tiny-longformer").model
    again = build_model("longformer", json.loads(json.dumps(model.config.to_dict())))  # as a manifest holds it
    assert again.config == model.config
    again.load_state_dict(model.state_dict())
    ids = torch.randint(3, 512, (2, 9))
    with torch.no_grad():
        assert torch.equal(again.eval()(ids)["logits"], model(ids)["logits"])
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), preset("tiny-longformer").model.state_dict().values(), strict=True)
    )


# ---------------------------------------------------------------------------------------------- export


def test_export_has_one_op_per_layer_and_runs_at_any_length():
    model = preset("tiny-longformer").model
    batch_dim, seq_dim = Dim("batch"), Dim("seq")
    shapes = {"input_ids": {0: batch_dim, 1: seq_dim}, "attention_mask": {0: batch_dim, 1: seq_dim},
              "global_attention_mask": {0: batch_dim, 1: seq_dim}}  # fmt: skip
    ids, mask, glob = batch(6, padded=True, globals_at=[(0, 0)])  # sizes >= 2: torch.export specialises 0 and 1
    program = torch.export.export(model, (ids, mask, glob), dynamic_shapes=shapes, strict=False)
    ops = [n for n in program.graph.nodes if n.op == "call_function" and "sliding_window_attention" in str(n.target)]
    assert len(ops) == model.config.num_hidden_layers
    for seq, globals_at in [
        (5, [(0, 2)]),
        (33, [(1, 0), (2, 30)]),
        (64, []),
        (1000, [(0, i) for i in range(0, 999, 50)]),
    ]:
        ids, mask, glob = batch(seq, padded=True, globals_at=globals_at)
        with torch.no_grad():
            assert torch.equal(program.module()(ids, mask, glob)["logits"], model(ids, mask, glob)["logits"]), seq
