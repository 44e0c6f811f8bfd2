"""Built-in model presets: random weights from a fixed seed, so demos and tests need no download."""

from __future__ import annotations

from ..errors import CheckpointError
from . import bert, gpt, longformer, transfo_xl

PRESETS = {
    "tiny-gpt2": ("gpt", gpt.GPTConfig(variant="gpt2", vocab_size=512, n_positions=128, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)),
    "tiny-openai-gpt": ("gpt", gpt.GPTConfig(variant="gpt1", vocab_size=512, n_positions=128, n_embd=64, n_layer=2, n_head=4)),
    "gpt2-small-random": ("gpt", gpt.GPTConfig(variant="gpt2", bos_token_id=50256, eos_token_id=50256)),
    "tiny-bert": ("bert", bert.BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=128, head="masked-lm")),
    "bert-base-random": ("bert", bert.BertConfig(head="sequence-classification")),
    # Positions up to 4096 tokens as longformer-base-4096; the second layer dilates two heads (an extension).
    "tiny-longformer": ("longformer", longformer.LongformerConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=4098, type_vocab_size=1, layer_norm_eps=1e-5, attention_window=(8, 16), attention_dilation=((1, 1, 1, 1), (1, 1, 2, 4)), head="masked-lm")),
    "tiny-transfo-xl": ("transfo_xl", transfo_xl.TransfoXLConfig(vocab_size=512, cutoffs=(64, 256), d_model=64, d_embed=64, n_head=4, d_head=16, d_inner=128, div_val=2, n_layer=2, mem_len=16, clamp_len=24)),
    # The other head and the other attention paths: plain softmax (logits), one projected table, shared u and v,
    # pre-LayerNorm, causal windows that grow with the memory, no clamp. A wider init gives logits of order 1
    # (at 0.02 they stay near 1e-3 with no final LayerNorm), so parity compares numbers that mean something.
    "tiny-transfo-xl-softmax": ("transfo_xl", transfo_xl.TransfoXLConfig(vocab_size=512, cutoffs=(), d_model=64, d_embed=48, n_head=4, d_head=16, d_inner=128, div_val=1, n_layer=2, mem_len=12, clamp_len=0, same_length=False, untie_r=False, pre_lnorm=True, init_std=0.1, proj_init_std=0.1)),
}

MODEL_CLASSES = {"bert": bert.Bert, "gpt": gpt.GPT, "longformer": longformer.Longformer, "transfo_xl": transfo_xl.TransfoXL}


def preset(name: str, seed: int = 0):
    from .checkpoints import LoadedModel

    if name not in PRESETS:
        raise CheckpointError(f"unknown preset {name!r}", hint=f"presets: {', '.join(PRESETS)}")
    family, cfg = PRESETS[name]
    model = MODEL_CLASSES[family](cfg).init_weights(seed)
    return LoadedModel(family, model.eval(), name)
