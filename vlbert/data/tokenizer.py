"""Tokenizers: any HF tokenizer by name or local directory, or a word-level BERT vocabulary we write."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from transformers import AutoTokenizer, BertTokenizerFast, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from vlbert.errors import InputError, InputNotFound

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TOKENIZER_FILES = ("tokenizer_config.json", "vocab.txt", "tokenizer.json")


def looks_like_path(name: str) -> bool:
    """A hub id is `name` or `owner/name`; anything else (./x, /x, a/b/c, ~/x) is meant as a path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def has_tokenizer_files(path: str | os.PathLike) -> bool:
    return any((Path(path) / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(name_or_path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load a HF tokenizer from a local directory or hub name (hub names need the network)."""
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.exists() and not has_tokenizer_files(path):
        raise InputNotFound(f"tokenizer {path} holds no tokenizer files (tokenizer_config.json or vocab.txt); "
                            "point data.tokenizer at a tokenizer directory (save_pretrained) or a vlbert model directory")
    if not path.exists() and looks_like_path(name):
        raise InputNotFound(f"tokenizer directory {name} does not exist; set data.tokenizer to a tokenizer directory "
                            "(the shipped tiny configs use demo_out/world/tokenizer: run `vlbert synth --out demo_out/world` first)")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a vlbert model directory's config.json is not a HF model config
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path) if path.exists() else name)
    except OSError as error:  # not on disk and the hub is not reachable, or no such hub repository
        raise InputError(f"tokenizer {name!r} is neither a local directory nor loadable from the hub "
                         f"({str(error).splitlines()[0][:160]}); on a machine without internet save it with "
                         "AutoTokenizer.from_pretrained(...).save_pretrained(DIR) elsewhere and set data.tokenizer: DIR") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    for attr in ("cls_token_id", "sep_token_id", "mask_token_id", "pad_token_id"):
        if getattr(tokenizer, attr) is None:
            raise InputError(f"tokenizer {name_or_path} has no {attr.removesuffix('_id')}; vlbert needs a BERT-style tokenizer")
    return tokenizer


def vocabulary_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A digest of the token -> id mapping (and lower-casing): equal for the same vocabulary whatever
    directory or file it was loaded from."""
    lowercase = bool(getattr(tokenizer, "do_lower_case", tokenizer.init_kwargs.get("do_lower_case", False)))
    items = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps([lowercase, items], ensure_ascii=False).encode()).hexdigest()[:16]


def vocabulary_difference(ours: PreTrainedTokenizerBase, theirs: PreTrainedTokenizerBase, shown: int = 3) -> str:
    """What differs between two vocabularies, in a few words, for an error message."""
    a, b = ours.get_vocab(), theirs.get_vocab()
    changed = sorted(token for token in a.keys() & b.keys() if a[token] != b[token])
    only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
    parts = [f"{len(a)} vs {len(b)} tokens"]
    if only_a or only_b:
        parts.append(f"{len(only_a)} only in the first (e.g. {only_a[:shown]}), {len(only_b)} only in the second (e.g. {only_b[:shown]})")
    if changed:
        parts.append(f"{len(changed)} with other ids (e.g. {changed[:shown]})")
    if len(parts) == 1:
        parts.append("other lower-casing")
    return "; ".join(parts)


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
