"""Class-name vocabularies: one name per line in class-id order, read the same way by the detectron2
backend (`class_names_file`) and the importers of published features (`--class-names`), so one
vocabulary file (bottom-up-attention's objects_vocab.txt) names the same ids in both."""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

BACKGROUND = "__background__"


def read_names(path: str | os.PathLike, what: str, error: type[Exception] = ValueError) -> list[str]:
    """One name per line, in id order; of comma-separated synonyms ("sign,signs") the first, as
    py-bottom-up-attention's demos read its VG vocabularies. An unreadable file raises `error`."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise error(f"{what}: cannot read {path} ({err}); give the class names file, one name per line") from None
    except UnicodeDecodeError as err:
        raise error(f"{what}: {path} is not UTF-8 text ({err.reason}); give the class names file, "
                    "one name per line") from None
    return [line.split(",")[0].strip().lower() for line in lines if line.strip()]


def repeated(names: list[str]) -> list[str]:
    """The names given more than once (a name must map back to one id), sorted."""
    return sorted(name for name, count in Counter(names).items() if count > 1)


def read_unique_names(path: str | os.PathLike, what: str, error: type[Exception] = ValueError) -> list[str]:
    """read_names, refusing an empty file or one that repeats a name."""
    names = read_names(path, what, error)
    if not names:
        raise error(f"{what}: {path} holds no names; give the class names file, one name per line")
    if twice := repeated(names):
        shown = ", ".join(map(repr, twice[:5]))
        raise error(f"{what}: {path} repeats {shown}; each class needs its own name, one line per class id")
    return names


def sha256_of(path: str | os.PathLike) -> str:
    """The file's hash, for provenance: two imports named with different vocabularies differ."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def names_provenance(path: str | os.PathLike, added_background: int | None = None) -> dict:
    """Where the class names came from, for the provenance's `classes.names`."""
    record = {"file": Path(path).name, "sha256": sha256_of(path)}
    if added_background is not None:
        record["background"] = f"{BACKGROUND} added at index {added_background}"
    return record


def fitted(names: list[str], num_classes: int, background_index: int | None, path: str | os.PathLike, what: str,
           error: type[Exception] = ValueError, fix: str = "") -> tuple[list[str], int | None]:
    """(one name per class id, the index where a background name was added or None). Where the ids
    have a background class, a file of the foreground names only gets BACKGROUND there, as the
    detectron2 backend does with class_names_file; any other count is the wrong vocabulary."""
    count = len(names)
    if count == num_classes:
        return names, None
    if background_index is not None and count == num_classes - 1:
        return [*names[:background_index], BACKGROUND, *names[background_index:]], background_index
    where = f"{what}: {path} has {count} names for {num_classes} classes"
    if background_index is not None:
        raise error(f"{where} (id {background_index} is the background): give the {num_classes - 1} foreground "
                    f"names ({BACKGROUND} is added at id {background_index}) or all {num_classes}")
    if count == num_classes - 1:
        raise error(f"{where}; these ids have no background class, so no background name should be added: "
                    f"the file lacks a class name{'; ' + fix if fix else ''}")
    if count == num_classes + 1 and names[0] == BACKGROUND:
        raise error(f"{where}; its first line is {BACKGROUND}, a class these ids do not have: drop that line")
    raise error(f"{where}; {fix or 'give the vocabulary of the detector that made the features'}")
