"""Tiny BERT-family checkpoints for tests: random ones of every type and head, and one trained here.

The trained checkpoint exists because agreement (int8 argmax) only means something for a model whose
predictions are decided: a random BERT's logits are near-ties. It learns, in a few seconds, to fill masked
tokens of counting sequences and to tell whether sentence B continues sentence A.
"""

from __future__ import annotations

from pathlib import Path

import torch

SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             max_position_embeddings=64, initializer_range=0.2)
VARIANTS = {
    "bert": ("Bert", "BertConfig", {}),
    "roberta": ("Roberta", "RobertaConfig", {"pad_token_id": 1, "type_vocab_size": 1}),  # as roberta-base
    "albert": ("Albert", "AlbertConfig", {"embedding_size": 16, "inner_group_num": 2, "hidden_act": "gelu_new"}),
    "electra": ("Electra", "ElectraConfig", {"embedding_size": 16}),
}
HEADS = ["Model", "ForMaskedLM", "ForNextSentencePrediction", "ForPreTraining", "ForSequenceClassification",
         "ForTokenClassification", "ForQuestionAnswering"]


def architectures() -> list[tuple[str, str]]:
    """Every (variant, head suffix) transformers has."""
    import transformers as T

    return [(v, h) for v, (prefix, _, _) in VARIANTS.items() for h in HEADS if hasattr(T, prefix + h)]


def hf_model(variant: str, head: str, seed: int = 0, **overrides):
    import transformers as T

    prefix, cfg_name, extra = VARIANTS[variant]
    torch.manual_seed(seed)
    cfg = getattr(T, cfg_name)(**{**SMALL, **extra, "num_labels": 2 if head == "ForQuestionAnswering" else 3, **overrides})
    return getattr(T, prefix + head)(cfg).eval()


def save_hf(variant: str, head: str, directory: Path, **overrides) -> Path:
    hf_model(variant, head, **overrides).save_pretrained(directory)
    return directory


# ---------------------------------------------------------------------------------------------- trained

PAD, CLS, SEP, MASK, FIRST = 0, 1, 2, 3, 4
VOCAB = 64
HALF = 8  # tokens per sentence


def counting_batch(gen: torch.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """[CLS] A [SEP] B [SEP] where A counts up from a random token; B continues A (label 0) or starts anew (1)."""
    span = VOCAB - FIRST
    start = torch.randint(0, span, (batch, 1), generator=gen)
    a = (start + torch.arange(HALF)) % span + FIRST
    is_random = torch.randint(0, 2, (batch,), generator=gen)
    b_start = torch.where(is_random.bool()[:, None], torch.randint(0, span, (batch, 1), generator=gen), start + HALF)
    b = (b_start + torch.arange(HALF)) % span + FIRST
    col = torch.full((batch, 1), CLS), torch.full((batch, 1), SEP)
    ids = torch.cat([col[0], a, col[1], b, col[1]], dim=1)  # [batch, 2 * HALF + 3]
    types = torch.cat([torch.zeros(batch, HALF + 2, dtype=torch.long), torch.ones(batch, HALF + 1, dtype=torch.long)], 1)
    return ids, types, is_random, start


def train_bert_pretraining(directory: Path, steps: int = 600) -> Path:
    """A tiny BertForPreTraining trained on counting sequences; saved with a WordPiece vocab.txt."""
    import transformers as T

    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                       max_position_embeddings=64)
    model = T.BertForPreTraining(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        ids, types, nsp, _ = counting_batch(gen, 32)
        masked = (torch.rand(ids.shape, generator=gen) < 0.15) & (ids >= FIRST)
        labels = torch.where(masked, ids, torch.full_like(ids, -100))
        out = model(input_ids=ids.masked_fill(masked, MASK), token_type_ids=types, labels=labels, next_sentence_label=nsp)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval().save_pretrained(directory)
    words = ["[PAD]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - FIRST)]
    (directory / "vocab.txt").write_text("\n".join(words) + "\n")
    return directory
