"""Tokenizers: any HF tokenizer by name or local directory, or a word-level BERT vocabulary we write."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load a HF tokenizer from a local directory or hub name (hub names need the network)."""
    path = Path(name_or_path)
    if path.exists() and not (path / "tokenizer_config.json").exists() and not (path / "vocab.txt").exists():
        raise FileNotFoundError(f"{path} holds no tokenizer files (tokenizer_config.json or vocab.txt)")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a vlbert model directory's config.json is not a HF model config
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    finally:
        hf_logging.set_verbosity(verbosity)
    for attr in ("cls_token_id", "sep_token_id", "mask_token_id", "pad_token_id"):
        if getattr(tokenizer, attr) is None:
            raise ValueError(f"tokenizer {name_or_path} has no {attr.removesuffix('_id')}; vlbert needs a BERT-style tokenizer")
    return tokenizer


def build_word_tokenizer(words: Iterable[str], out_dir: str | os.PathLike) -> BertTokenizerFast:
    """Write a small lower-cased WordPiece vocabulary (special tokens, the words, single characters)
    to ``out_dir`` and return its tokenizer. Used by the synthetic world and the tests, so that
    nothing is downloaded."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = list(SPECIAL_TOKENS)
    seen = set(vocab)
    chars = "abcdefghijklmnopqrstuvwxyz0123456789.,?!'-"
    for token in sorted({w.lower() for w in words}) + list(chars) + ["##" + c for c in chars]:
        if token not in seen:
            vocab.append(token)
            seen.add(token)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(str(out))
    return tokenizer
