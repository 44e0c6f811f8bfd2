"""Built-in model presets: random weights from a fixed seed, so demos and tests need no download."""

from __future__ import annotations

from ..errors import CheckpointError
from . import gpt

PRESETS = {
    "tiny-gpt2": ("gpt", gpt.GPTConfig(variant="gpt2", vocab_size=512, n_positions=128, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)),
    "tiny-openai-gpt": ("gpt", gpt.GPTConfig(variant="gpt1", vocab_size=512, n_positions=128, n_embd=64, n_layer=2, n_head=4)),
    "gpt2-small-random": ("gpt", gpt.GPTConfig(variant="gpt2", bos_token_id=50256, eos_token_id=50256)),
}

MODEL_CLASSES = {"gpt": gpt.GPT}


def preset(name: str, seed: int = 0):
    from .checkpoints import LoadedModel

    if name not in PRESETS:
        raise CheckpointError(f"unknown preset {name!r}", hint=f"presets: {', '.join(PRESETS)}")
    family, cfg = PRESETS[name]
    model = MODEL_CLASSES[family](cfg).init_weights(seed)
    return LoadedModel(family, model.eval(), name)
