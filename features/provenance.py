"""Provenance of a feature file: what made it (compared) and how this run went (not compared).

A provenance dict holds identity keys (backend, model, weights, settings, regions, ...) and one
``run`` entry (versions, shard, host, time). Files may be resumed into or merged only when their
identities are equal; runs may differ.
"""
from __future__ import annotations

import json
import platform
import time
from typing import Any

from vlbert.errors import InputError

RUN_KEY = "run"


class ProvenanceMismatch(InputError):
    """Two feature files (or a file and a requested run) were made differently."""


def identity(provenance: dict) -> dict:
    """The part of a provenance that must match for files to be combined."""
    return {k: v for k, v in provenance.items() if k != RUN_KEY}


def differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two (nested) dicts, sorted."""
    out = []
    for key in sorted(set(a) | set(b)):
        name = f"{prefix}{key}"
        if key not in a or key not in b:
            out.append(name)
        elif isinstance(a[key], dict) and isinstance(b[key], dict):
            out.extend(differences(a[key], b[key], name + "."))
        elif _normal(a[key]) != _normal(b[key]):
            out.append(name)
    return out


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))  # tuples vs lists, ints vs floats as stored


def check_same(expected: dict, found: dict, expected_name: str, found_name: str, advice: str) -> None:
    """Raise ProvenanceMismatch naming the differing keys when identities differ."""
    diff = differences(identity(expected), identity(found))
    if diff:
        shown = "; ".join(
            f"{key}: {_lookup(expected, key)!r} vs {_lookup(found, key)!r}" for key in diff[:8]
        )
        raise ProvenanceMismatch(
            f"{found_name} was made differently from {expected_name} ({shown}). {advice}"
        )


def _lookup(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return "<absent>"
        d = d[part]
    return d


def run_info(**extra: Any) -> dict:
    """Facts about this process (never compared): versions, host, time, plus `extra`."""
    import h5py
    import numpy
    import torch
    import torchvision

    from vlbert import __version__ as vlbert_version

    return {
        "vlbert": vlbert_version,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "h5py": h5py.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
