"""Tokenizers kept with an artifact, loaded offline through the `tokenizers` library."""

from __future__ import annotations

from pathlib import Path

from ..errors import ArtifactError, require


def load_tokenizer(directory: Path | None, ids_flag: str = "--prompt-ids"):
    """tokenizer.json, GPT-2's vocab.json + merges.txt (byte-level BPE), or BERT's vocab.txt (WordPiece).
    `ids_flag` is the command's way to pass token ids instead, for the hint when there is no tokenizer."""
    if directory is None:
        raise ArtifactError("the artifact has no tokenizer files",
                            hint=f"pass token ids with {ids_flag}, or export from a checkpoint directory that has tokenizer files")
    tk = require("tokenizers", "hf", "text prompts")
    if (directory / "tokenizer.json").is_file():
        return tk.Tokenizer.from_file(str(directory / "tokenizer.json"))
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    if vocab.is_file() and merges.is_file():
        tok = tk.Tokenizer(tk.models.BPE.from_file(str(vocab), str(merges)))
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        return tok
    wordpiece = directory / "vocab.txt"
    if wordpiece.is_file():  # BERT-style checkpoints without tokenizer.json
        from tokenizers.implementations import BertWordPieceTokenizer

        return BertWordPieceTokenizer(str(wordpiece), lowercase=_lowercase(directory))
    raise ArtifactError(f"{directory} has neither tokenizer.json, vocab.json + merges.txt, nor vocab.txt")


def _lowercase(directory: Path) -> bool:
    import json

    cfg = directory / "tokenizer_config.json"
    try:
        return bool(json.loads(cfg.read_text()).get("do_lower_case", True)) if cfg.is_file() else True
    except ValueError:
        return True
