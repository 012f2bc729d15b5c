"""The one exception type for bad input: what a user gave (a file, a config key, an id) cannot
serve the command. `vlbert <command>` prints its message as one line on stderr and exits 2, with no
traceback; any other exception is an internal error and keeps its traceback (exit 1).

Each module's own error (FeatureStoreError, CheckpointError, ...) derives from InputError, so code
can catch the specific kind and the command line catches them all.
"""
from __future__ import annotations


class InputError(ValueError):
    """Bad user input. The message names the file, key or id and says how to fix it."""


class InputNotFound(InputError, FileNotFoundError):
    """A file or directory the user named does not exist (still a FileNotFoundError for callers)."""


class OutputExists(InputError, FileExistsError):
    """An output path that holds something already: vlbert never overwrites what a user made."""


def one_line(error: BaseException) -> str:
    """The message of an input error as one line. An error raised in a DataLoader worker reaches the
    main process with the worker's traceback in its message: its last line is the error itself."""
    text = str(error).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        name = type(error).__name__
        text = last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last
    return " ".join(part.strip() for part in text.splitlines() if part.strip())
