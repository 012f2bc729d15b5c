"""Checks `vlbert pretrain / vqa / retrieval` run before the trainer starts, so that bad input is
one line and exit status 2 before any work: where the run writes, the checkpoint it resumes from,
the data against the model. Nothing here writes."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from vlbert.errors import InputError, InputNotFound, OutputExists
from vlbert.training.checkpoints import read_checkpoint

# Lightning's names for a checkpoint it finds itself
LIGHTNING_CHECKPOINT_NAMES = ("last", "best", "hpc", "registry")


def nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(key: str, path: str | os.PathLike) -> None:
    """`path` (a file or directory, existing or not) can be created or written by this user."""
    target = Path(path)
    base = nearest_existing(target)
    if base.exists() and not base.is_dir() and base != Path(os.path.abspath(target)):
        raise InputError(f"{key}: {target} cannot be created because {base} is a file; choose another path")
    directory = base if base.is_dir() else base.parent
    try:  # a file made and removed again: permissions alone do not tell (root, read-only mounts, /proc)
        handle, probe = tempfile.mkstemp(dir=directory, prefix=".vlbert-write-check-")
    except OSError as error:
        raise InputError(f"{key}: cannot write {target}: {directory} is not writable ({error.strerror}); "
                         "choose a writable path") from None
    os.close(handle)
    os.unlink(probe)


def check_new_output(key: str, path: str | os.PathLike, directory: bool, resuming: bool) -> None:
    """An output that would replace what is there is refused: a file that exists, or a directory that
    holds files (except when a resumed run continues into its own output)."""
    path = Path(path)
    check_writable(key, path)
    if directory:
        if path.exists() and not path.is_dir():
            raise OutputExists(f"{key}: {path} is a file, not a directory; choose another path")
        if path.is_dir() and any(path.iterdir()) and not resuming:
            raise OutputExists(f"{key}: {path} already holds files (an earlier run's?); choose another {key} "
                               "or remove that directory (vlbert never overwrites it)")
    elif path.exists():
        raise OutputExists(f"{key}: {path} already exists; choose another {key} (it is never overwritten)")


def check_checkpoint(path: str | os.PathLike, job: str) -> dict | None:
    """The checkpoint a run resumes from or evaluates (`--ckpt_path`): it must be a vlbert checkpoint
    of this job. Lightning's own names (last, best, ...) are left to Lightning."""
    if str(path) in LIGHTNING_CHECKPOINT_NAMES:
        return None
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"--ckpt_path: checkpoint {path} does not exist")
    try:
        checkpoint = read_checkpoint(path)
    except InputError as error:
        raise InputError(f"--ckpt_path: {error}") from None
    if checkpoint["vlbert_job"] != job:
        raise InputError(f"--ckpt_path: {path} is a `vlbert {checkpoint['vlbert_job']}` checkpoint, not a "
                         f"`vlbert {job}` one; use it with `vlbert {checkpoint['vlbert_job']}`, or export it "
                         f"(vlbert export) and pass the directory as model.init_from")
    return checkpoint
