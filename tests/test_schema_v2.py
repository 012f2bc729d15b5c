"""Schema version 2: per-box scores and attributes, file-level class / attribute names; version 1
files (written the old way, with plain h5py) still read."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from vlbert.featstore import SCHEMA_VERSION, FeatureStore, FeatureStoreError, FeatureWriter, RegionRecord, read_header

DIM, CLASSES = 8, 4
CLASS_NAMES = ["__background__", "dog", "cat", "frisbee"]
ATTRIBUTE_NAMES = ["red", "furry", "flying"]


def full_record(image_id: str, n: int, seed: int) -> RegionRecord:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 50, (n, 2)).astype(np.float32)
    return RegionRecord(
        image_id, rng.normal(size=(n, DIM)).astype(np.float32), np.concatenate([xy, xy + 5], 1), 64, 48,
        class_probs=rng.dirichlet(np.ones(CLASSES), n).astype(np.float16),
        labels=rng.integers(0, CLASSES, n), scores=rng.uniform(0, 1, n).astype(np.float32),
        attributes=rng.integers(-1, len(ATTRIBUTE_NAMES), n), attribute_scores=rng.uniform(0, 1, n).astype(np.float32),
    )


def write(path: Path, records, class_names=CLASS_NAMES, attribute_names=ATTRIBUTE_NAMES) -> Path:
    with FeatureWriter(path, DIM, CLASSES, {"backend": "test"}, "float32",
                       class_names=class_names, attribute_names=attribute_names) as writer:
        for record in records:
            writer.add(record)
    return path


def assert_same(read: RegionRecord, written: RegionRecord) -> None:
    for name in ("features", "boxes", "class_probs", "labels", "scores", "attributes", "attribute_scores"):
        expected, actual = getattr(written, name), getattr(read, name)
        assert actual.dtype == np.asarray(expected).dtype, name
        np.testing.assert_array_equal(actual, expected, err_msg=name)
    assert (read.image_w, read.image_h) == (written.image_w, written.image_h)


def test_new_arrays_and_names_round_trip_on_the_raw_and_the_h5py_path(tmp_path):
    records = [full_record(f"img{i}", 2 + i, i) for i in range(3)]
    path = write(tmp_path / "v2.h5", records)
    with h5py.File(path, "r+") as f:  # rewrite one image's scores chunked: that image is read through h5py
        group = f["images"]["img2"]
        scores = group["scores"][()]
        del group["scores"]
        group.create_dataset("scores", data=scores, chunks=(1,))
    store = FeatureStore(path)
    assert read_header(path)["schema_version"] == SCHEMA_VERSION == 2
    assert store.class_names == CLASS_NAMES and store.attribute_names == ATTRIBUTE_NAMES
    assert store.raw_features("img0") is not None and store.raw_features("img2") is None
    for record in records:
        assert_same(store[record.image_id], record)
    assert_same(store["img0"], records[0])  # the second read: positioned reads of the noted layout


def write_version_1(path: Path) -> dict[str, dict]:
    """A file as version 1 of the writer made it, with plain h5py: no names, no new arrays."""
    rng = np.random.default_rng(0)
    written = {}
    with h5py.File(path, "w") as f:
        f.attrs.update(schema="vlbert-regions", schema_version=1, feature_dim=DIM, num_classes=CLASSES,
                       dtype="float16", provenance=json.dumps({"backend": "old"}), num_images=2)
        images = f.create_group("images")
        for image_id, n in (("a", 3), ("b/c", 1)):
            arrays = {"features": rng.normal(size=(n, DIM)).astype(np.float16),
                      "boxes": np.tile(np.float32([[1, 2, 9, 9]]), (n, 1)),
                      "class_probs": np.full((n, CLASSES), 0.25, np.float16), "labels": np.arange(n, dtype=np.int64)}
            group = images.create_group(image_id.replace("/", "%2F"))
            for name, array in arrays.items():
                group.create_dataset(name, data=array)
            group.attrs.update(image_id=image_id, image_w=10, image_h=10, num_boxes=n)
            written[image_id] = arrays
    return written


def test_a_version_1_file_reads_as_before(tmp_path, capsys):
    from vlbert.cli import main as vlbert

    path = tmp_path / "v1.h5"
    written = write_version_1(path)
    store = FeatureStore(path)
    assert (store.class_names, store.attribute_names) == (None, None)
    assert read_header(path)["schema_version"] == 1
    for image_id, arrays in written.items():
        for _ in range(2):  # first read (probe, checked against h5py) and raw reads after it
            record = store[image_id]
            for name, array in arrays.items():
                np.testing.assert_array_equal(getattr(record, name), array)
            assert record.scores is None and record.attributes is None and record.attribute_scores is None
        assert store.raw_features(image_id) is not None
    assert vlbert(["check-features", str(path)]) == 0
    assert "no problems" in capsys.readouterr().out


def test_the_writer_refuses_records_and_names_that_do_not_fit(tmp_path):
    good = full_record("a", 3, 0)
    bad = {
        "scores": (dict(scores=np.ones(2, np.float32)), r"scores have shape \(2,\), expected \[3\]"),
        "attributes dtype": (dict(attributes=np.ones(3, np.float32)), r"attributes have dtype float32, expected integers"),
        "attribute range": (dict(attributes=np.array([0, 1, 3])), r"attribute ids span \[0, 3\], outside \[-1, 3\)"),
        "nan scores": (dict(scores=np.float32([0.5, np.nan, 1])), r"scores contain NaN or Inf"),
        "inf attribute scores": (dict(attribute_scores=np.float32([0.5, np.inf, 1])), r"attribute_scores contain NaN"),
        "scores alone": (dict(attributes=None), r"attribute_scores without attributes"),
    }
    for case, (change, message) in bad.items():
        record = RegionRecord(**{**good.__dict__, **change})
        with FeatureWriter(tmp_path / f"{len(case)}.h5", DIM, CLASSES, class_names=CLASS_NAMES,
                           attribute_names=ATTRIBUTE_NAMES, overwrite=True) as writer:
            with pytest.raises(FeatureStoreError, match=message):
                writer.add(record)
    with pytest.raises(FeatureStoreError, match=r"3 class_names for num_classes=4"):
        FeatureWriter(tmp_path / "n.h5", DIM, CLASSES, class_names=CLASS_NAMES[:3])
    with pytest.raises(FeatureStoreError, match=r"attribute_names repeat 'red'"):
        FeatureWriter(tmp_path / "r.h5", DIM, CLASSES, attribute_names=["red", "blue", "red"])
    assert not (tmp_path / "n.h5.tmp").exists() and not (tmp_path / "r.h5.tmp").exists()


@pytest.mark.parametrize("name", ["scores", "attribute_scores"])
def test_reads_refuse_nan_scores_written_by_another_tool(tmp_path, name):
    path = write(tmp_path / "f.h5", [full_record("a", 3, 0), full_record("b", 3, 1)])
    with h5py.File(path, "r+") as f:
        f["images"]["b"][name][1] = np.nan
    store = FeatureStore(path)
    store["a"]
    assert store.raw_features("b") is not None
    with pytest.raises(FeatureStoreError, match=rf"image 'b' in .*f\.h5 has NaN or Inf {name}"):
        store["b"]


def test_shards_with_different_names_are_refused_like_a_different_num_classes(tmp_path):
    a = write(tmp_path / "a.h5", [full_record("a", 2, 0)])
    b = write(tmp_path / "b.h5", [full_record("b", 2, 1)])
    assert len(FeatureStore([a, b])) == 2
    renamed = write(tmp_path / "c.h5", [full_record("c", 2, 2)], class_names=["__background__", "dog", "cat", "disc"])
    with pytest.raises(FeatureStoreError, match=r"c\.h5 and .*a\.h5 have different class_names \(id 3 is "
                                                r"'frisbee' and 'disc'\)"):
        FeatureStore([a, renamed])
    unnamed = write(tmp_path / "d.h5", [full_record("d", 2, 3)], attribute_names=None)
    with pytest.raises(FeatureStoreError, match=r"different attribute_names \(one has none\)"):
        FeatureStore([a, unnamed])


def test_a_vocabulary_too_large_for_an_hdf5_attribute_is_stored(tmp_path):
    names = [f"n{i:08d} some imagenet-21k synset name" for i in range(21843)]  # ~800 KiB of text
    with FeatureWriter(tmp_path / "big.h5", DIM, len(names), class_names=names) as writer:
        writer.add(RegionRecord("a", np.zeros((1, DIM), np.float32), np.float32([[0, 0, 1, 1]]), 2, 2))
    assert FeatureStore(tmp_path / "big.h5").class_names == names


def test_a_names_dataset_that_is_not_strings_is_refused(tmp_path):
    path = write(tmp_path / "f.h5", [full_record("a", 2, 0)], class_names=None)
    with h5py.File(path, "r+") as f:
        f.create_dataset("class_names", data=np.arange(4))
    with pytest.raises(FeatureStoreError, match=r"f\.h5: /class_names is not a 1-D array of strings"):
        FeatureStore(path)
