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


def named_shard(path: Path, ids: list[str], class_names: list[str]) -> Path:
    """A shard with every optional array and names, written as a detector backend would."""
    from vlbert.featstore import FeatureWriter, RegionRecord

    rng = np.random.default_rng(len(path.name))
    with FeatureWriter(path, 4, 3, {"backend": "test"}, "float32", class_names=class_names,
                       attribute_names=["red", "round"]) as writer:
        for image_id in ids:
            n = 3
            writer.add(RegionRecord(image_id, rng.normal(size=(n, 4)).astype(np.float32),
                                    np.tile(np.float32([[0, 0, 5, 5]]), (n, 1)), 8, 8,
                                    class_probs=np.full((n, 3), 1 / 3, np.float16), labels=np.arange(n),
                                    scores=rng.uniform(size=n).astype(np.float32), attributes=np.array([0, 1, -1]),
                                    attribute_scores=rng.uniform(size=n).astype(np.float32)))
    return path


def test_merge_carries_scores_attributes_and_names_and_refuses_other_names(tmp_path):
    names = ["bg", "dog", "cat"]
    a = named_shard(tmp_path / "a.h5", ["x", "y"], names)
    b = named_shard(tmp_path / "bb.h5", ["z"], names)
    merge_features([a, b], tmp_path / "merged.h5")
    merged = FeatureStore(tmp_path / "merged.h5")
    assert merged.class_names == names and merged.attribute_names == ["red", "round"]
    for path in (a, b):
        shard = FeatureStore(path)
        for image_id in shard.ids:
            for name in ("features", "labels", "scores", "attributes", "attribute_scores"):
                np.testing.assert_array_equal(getattr(merged[image_id], name), getattr(shard[image_id], name))
    other = named_shard(tmp_path / "c.h5", ["w"], ["bg", "dog", "horse"])
    with pytest.raises(ProvenanceMismatch, match=r"different class_names \(id 2 is 'cat' and 'horse'\)"):
        merge_features([a, other], tmp_path / "merged2.h5")
