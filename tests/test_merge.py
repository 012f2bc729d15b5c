"""Shards extracted separately and merged equal one run; differently made shards are refused."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlbert.featstore import FeatureStore, FeatureStoreError
from vlbert.features.config import load_config
from vlbert.features.extract import extract
from vlbert.features.merge import main, merge_features
from vlbert.features.provenance import ProvenanceMismatch

TINY = Path(__file__).resolve().parents[1] / "configs" / "extract" / "tiny.yaml"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for i in range(9):
        size = (60 + 4 * i, 50)  # varied sizes: batch padding would differ between shardings
        Image.fromarray(rng.integers(0, 255, size[::-1] + (3,), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_merged_shards_equal_a_single_run(images, tmp_path):
    # batch_size 1: each image's features then do not depend on which images share its batch
    config = load_config(TINY, {"batch_size": 1})
    single = FeatureStore(extract(images, tmp_path / "single.h5", config, progress=False).output)
    shard_paths = []
    for index in range(3):
        result = extract(images, tmp_path / "feats.h5", config, num_shards=3, shard_index=index, progress=False)
        assert result.output.name == f"feats.shard{index:05d}-of-00003.h5"
        shard_paths.append(result.output)
    sizes = [len(FeatureStore(p)) for p in shard_paths]
    assert sum(sizes) == 9 and all(sizes)

    assert main([*map(str, shard_paths), "--output", str(tmp_path / "merged.h5")]) == 0
    merged = FeatureStore(tmp_path / "merged.h5")
    assert sorted(merged.ids) == sorted(single.ids)
    for image_id in single.ids:
        a, b = single[image_id], merged[image_id]
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.class_probs, b.class_probs)
        assert (a.image_w, a.image_h) == (b.image_w, b.image_h)
    assert [r["shard_index"] for r in merged.provenance["run"]["shard_runs"]] == [0, 1, 2]
    assert merged.provenance["settings"] == single.provenance["settings"]
    # the merged file never overwrites an existing one unless asked
    assert main([*map(str, shard_paths), "--output", str(tmp_path / "merged.h5")]) == 2


def test_shards_with_different_provenance_are_refused(images, tmp_path):
    a = extract(images, tmp_path / "a.h5", load_config(TINY), num_shards=2, shard_index=0, progress=False).output
    b = extract(images, tmp_path / "b.h5", load_config(TINY, {"max_boxes": 20}), num_shards=2, shard_index=1,
                progress=False).output
    with pytest.raises(ProvenanceMismatch, match="max_boxes"):
        merge_features([a, b], tmp_path / "merged.h5")
    assert not (tmp_path / "merged.h5").exists() and not (tmp_path / "merged.h5.tmp").exists()
    assert main([str(a), str(b), "--output", str(tmp_path / "merged.h5")]) == 2


def test_overlapping_shards_are_refused(images, tmp_path):
    a = extract(images, tmp_path / "a.h5", load_config(TINY), num_shards=2, shard_index=0, progress=False).output
    copy = tmp_path / "copy.h5"
    copy.write_bytes(a.read_bytes())
    with pytest.raises(FeatureStoreError, match="in both"):
        merge_features([a, copy], tmp_path / "merged.h5")
