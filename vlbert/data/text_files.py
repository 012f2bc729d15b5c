"""Reading the text files users give (annotations, captions, questions): UTF-8, and an error
that names the file and line when a file is not UTF-8 or not JSON."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from vlbert.errors import InputError, InputNotFound


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """The file's text, decoded as UTF-8 (a BOM is dropped)."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"{what} {path} does not exist")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise InputError(f"{what} {path}, line {line}: byte 0x{data[error.start]:02x} is not UTF-8; "
                         "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """The file's JSON document."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{what} {path} is not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})") from None
