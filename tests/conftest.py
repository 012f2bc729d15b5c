"""Shared fixtures: a small synthetic world and tiny model sizes. Nothing is downloaded."""
from __future__ import annotations

import pytest
import torch

# Tiny models run fastest on one thread, and several test processes (DDP ranks, workers)
# on a small machine must not oversubscribe its cores with spinning OpenMP threads.
torch.set_num_threads(1)

@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A 40-image synthetic world (images, captions, VQA, retrieval, features, tokenizer)."""
    from vlbert.synth import generate_world

    return generate_world(tmp_path_factory.mktemp("world") / "world", seed=0, num_images=40)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_world):
    from vlbert.data.tokenizer import load_tokenizer

    return load_tokenizer(tiny_world.tokenizer_dir)
