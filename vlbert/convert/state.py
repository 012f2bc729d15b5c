"""Bookkeeping for a checkpoint being converted: which source keys were used, skipped on
purpose, left over or missing, so that nothing is dropped without being listed."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from vlbert.errors import InputError

if TYPE_CHECKING:
    from vlbert.modeling.config import VLBertConfig


class ConversionError(InputError):
    """A checkpoint that cannot be converted faithfully; the message says what and how to fix it."""


@dataclass
class ConversionReport:
    """What a conversion did, written to conversion.json in the output and printed by the CLI."""

    source: str
    source_format: str
    target_format: str
    converted: dict[str, str] = field(default_factory=dict)  # target key -> source key(s)
    skipped: dict[str, str] = field(default_factory=dict)  # source key -> why it needs no tensor of its own
    unconverted: dict[str, str] = field(default_factory=dict)  # source key -> why it has no place in the target
    notes: list[str] = field(default_factory=list)
    vqa_head: dict | None = None  # {"style": ..., "num_answers": ...} when a VQA head was converted

    def to_dict(self) -> dict:
        return {
            "format": "vlbert-conversion",
            "source": self.source,
            "from": self.source_format,
            "to": self.target_format,
            "num_converted": len(self.converted),
            "converted": self.converted,
            "skipped": self.skipped,
            "unconverted": self.unconverted,
            "notes": self.notes,
            "vqa_head": self.vqa_head,
        }

    def summary(self) -> str:
        lines = [f"converted {len(self.converted)} tensors ({self.source_format} -> {self.target_format}) from {self.source}"]
        lines += [f"  skipped {key}: {why}" for key, why in sorted(self.skipped.items())]
        lines += [f"  NOT converted {key}: {why}" for key, why in sorted(self.unconverted.items())]
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass
class Converted:
    """A checkpoint in vlbert terms, ready to be written as a model directory."""

    config: "VLBertConfig"
    state: dict[str, torch.Tensor]  # vlbert keys: "vlbert.*", "<name>_head.*"
    origin: dict[str, str]  # vlbert key -> the source key(s) it came from
    report: ConversionReport


class SourceState:
    """A source state dict read key by key. `take` marks a key as used; `leftover` lists the rest."""

    def __init__(self, tensors: dict[str, torch.Tensor], name: str) -> None:
        self.tensors = tensors
        self.name = name
        self.used: set[str] = set()
        self.skipped: dict[str, str] = {}

    def has(self, key: str) -> bool:
        return key in self.tensors

    def has_prefix(self, prefix: str) -> bool:
        return any(key.startswith(prefix) for key in self.tensors)

    def take(self, key: str) -> torch.Tensor:
        if key not in self.tensors:
            raise ConversionError(f"{self.name} has no tensor {key!r}; is it a checkpoint of the kind given to --from?")
        self.used.add(key)
        return self.tensors[key]

    def skip(self, key: str, reason: str) -> None:
        """Mark a present key as deliberately carrying nothing new (a tied copy, a buffer)."""
        if key in self.tensors:
            self.used.add(key)
            self.skipped[key] = reason

    def leftover(self) -> list[str]:
        return sorted(set(self.tensors) - self.used)


def require_tied(state: SourceState, key: str, owner_key: str) -> None:
    """A saved copy of a tied weight must equal its owner; then it is skipped, otherwise refused."""
    if not state.has(key):
        return
    copy, owner = state.tensors[key], state.tensors.get(owner_key)
    if owner is None or copy.shape != owner.shape or not torch.equal(copy, owner):
        raise ConversionError(
            f"{state.name}: {key} differs from {owner_key}, but vlbert ties them (one shared weight); "
            "an untied checkpoint cannot be converted exactly"
        )
    state.skip(key, f"tied to {owner_key}")
