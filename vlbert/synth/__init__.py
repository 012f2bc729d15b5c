"""The synthetic world: coloured shapes with captions, VQA, retrieval data and region features."""
from .world import SPLITS, World, generate_world, open_world

__all__ = ["SPLITS", "World", "generate_world", "open_world"]
