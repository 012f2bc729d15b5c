"""Checkpoint interoperability: transformers VisualBERT and original UNITER checkpoints to vlbert
model directories, and vlbert models back to VisualBERT. `main` is `vlbert convert`."""
from vlbert.convert.cli import main

__all__ = ["main"]
