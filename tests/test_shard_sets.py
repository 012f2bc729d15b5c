"""A store of several shards read as one (folder, glob, manifest), and the id index that lets a
store of millions of ids open fast and stay small in every DataLoader worker."""
import json

import h5py
import numpy as np
import pytest

from vlbert.featindex import IDS_DATASET, ImageIndex, encode_ids
from vlbert.featstore import FeatureStore, FeatureStoreError, FeatureWriter, RegionRecord


def record(image_id: str, value: float = 1.0) -> RegionRecord:
    return RegionRecord(image_id, np.full((2, 4), value, np.float16), np.float32([[0, 0, 4, 4], [1, 1, 3, 3]]), 8, 8)


def write(path, ids, value=1.0):
    with FeatureWriter(path, 4) as writer:
        for image_id in ids:
            writer.add(record(image_id, value))
    return path


@pytest.fixture
def shards(tmp_path):
    folder = tmp_path / "feats"
    folder.mkdir()
    write(folder / "feats.shard00000-of-00002.h5", ["a", "b/1", "café"], 1.0)
    write(folder / "feats.shard00001-of-00002.h5", ["c", "d"], 2.0)
    return folder


def test_a_folder_a_glob_and_a_manifest_read_as_one_store(shards):
    (shards / "shards.json").write_text(json.dumps({"shards": ["feats.shard00000-of-00002.h5", "feats.shard00001-of-00002.h5"]}))
    for source in (shards, str(shards / "feats.shard*.h5"), shards / "shards.json"):
        store = FeatureStore(source)
        assert store.ids == ["a", "b/1", "café", "c", "d"]
        assert float(store["café"].features[0, 0]) == 1.0 and float(store["d"].features[0, 0]) == 2.0
        assert "b/1" in store and "e" not in store and len(store) == 5


def test_shard_sets_that_cannot_be_read_are_named(shards, tmp_path):
    with pytest.raises(FeatureStoreError, match=r"no feature file matches .*nope\*\.h5"):
        FeatureStore(str(shards / "nope*.h5"))
    (tmp_path / "bad.json").write_text('{"shards": []}')
    with pytest.raises(FeatureStoreError, match=r"bad.json needs a non-empty \"shards\" list"):
        FeatureStore(tmp_path / "bad.json")
    (tmp_path / "gone.json").write_text('{"shards": ["feats/missing.h5"]}')
    with pytest.raises(FeatureStoreError, match=r"shard .*missing.h5 listed in .*gone.json does not exist"):
        FeatureStore(tmp_path / "gone.json")
    (tmp_path / "text.json").write_text("shards: a.h5")
    with pytest.raises(FeatureStoreError, match=r"shard manifest .*text.json is not JSON"):
        FeatureStore(tmp_path / "text.json")


def test_a_written_file_opens_by_its_id_list_and_an_old_one_by_its_groups(tmp_path):
    path = write(tmp_path / "new.h5", ["x", "y/2", "z"])
    with h5py.File(path, "r") as f:
        assert [i.decode() for i in f[IDS_DATASET][()]] == ["x", "y/2", "z"]
    old = tmp_path / "old.h5"
    write(old, ["x", "y/2", "z"])
    with h5py.File(old, "r+") as f:
        del f[IDS_DATASET]  # as files written before the list existed
    new_store, old_store = FeatureStore(path), FeatureStore(old)
    assert sorted(new_store.ids) == sorted(old_store.ids) == ["x", "y/2", "z"]
    for image_id in ("x", "y/2", "z"):
        assert np.array_equal(new_store[image_id].features, old_store[image_id].features)
    new_store.close()
    # a group added after writing: the list no longer covers the file, so the groups are read
    with h5py.File(path, "r+") as f:
        f["images"].copy("x", "w")
        f["images"]["w"].attrs["image_id"] = "w"
    assert sorted(FeatureStore(path).ids) == ["w", "x", "y/2", "z"]


def test_the_index_finds_every_id_and_only_those(tmp_path):
    ids = [f"COCO_train2014_{i:012d}" for i in range(0, 3000, 3)] + ["ünïcode", "a"]
    index = ImageIndex.build([encode_ids(ids[:500]), encode_ids(ids[500:])])
    assert index.row("a") == len(ids) - 1 and index.id_of(index.row("ünïcode")) == "ünïcode"
    assert all(index.row(i) == n for n, i in enumerate(ids))
    assert index.row("COCO_train2014_000000000001") is None and index.row("x" * 100) is None
    assert index.missing(["a", "b", "x" * 100, "COCO_train2014_000000000003"]) == ["b", "x" * 100]
    assert int(index.files[0]) == 0 and int(index.files[-1]) == 1 and index.duplicate() is None
    assert ImageIndex.build([encode_ids(["p", "q"]), encode_ids(["r", "q"])]).duplicate() == (1, 3)
    assert isinstance(index.ids, np.ndarray) and index.ids.dtype.kind == "S"  # no Python object per id


def test_check_ids_names_what_is_missing(shards):
    store = FeatureStore(shards)
    store.check_ids(["a", "d"])
    with pytest.raises(FeatureStoreError, match=r"2 image id\(s\) used by the annotations have no features .*: e, f"):
        store.check_ids(["a", "e", "f"])
