"""Shared fixtures: a small synthetic world and tiny model sizes. Nothing is downloaded."""
from __future__ import annotations

import pytest

@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A 40-image synthetic world (images, captions, VQA, retrieval, features, tokenizer)."""
    from vlbert.synth import generate_world

    return generate_world(tmp_path_factory.mktemp("world") / "world", seed=0, num_images=40)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_world):
    from vlbert.data.tokenizer import load_tokenizer

    return load_tokenizer(tiny_world.tokenizer_dir)
