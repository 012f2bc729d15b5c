"""The feature store reads nothing silently wrong: NaN / Inf records, links to other files,
external storage, unreadable files and duplicate ids are read correctly or refused in one line."""
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from vlbert.cli import main as vlbert
from vlbert.featstore import FeatureStore, FeatureStoreError, FeatureWriter, RegionRecord, all_finite, read_header

DIM, CLASSES = 8, 3


def record(image_id: str, n: int = 3, value: float = 1.0, class_probs: bool = True) -> RegionRecord:
    boxes = np.tile(np.array([[1, 2, 10, 12]], np.float32), (n, 1))
    features = np.full((n, DIM), value, np.float32) + np.arange(n, dtype=np.float32)[:, None]
    probs = np.full((n, CLASSES), 1 / CLASSES, np.float32) if class_probs else None
    return RegionRecord(image_id, features, boxes, 20, 16, probs)


def write_store(path: Path, ids=("a", "b", "c"), dtype: str = "float16", value: float = 1.0) -> Path:
    with FeatureWriter(path, DIM, CLASSES, {"backend": "test"}, dtype) as writer:
        for i, image_id in enumerate(ids):
            writer.add(record(image_id, 2 + i, value + i))
    return path


def h5py_arrays(path: Path, image_id: str) -> dict:
    with h5py.File(path, "r") as f:
        group = f["images"][image_id]
        return {name: group[name][()] for name in ("features", "boxes", "class_probs") if name in group}


def poison(path: Path, image_id: str, name: str, value: float, row: int = 1, chunked: bool = False) -> None:
    """Write a NaN / Inf with plain h5py, bypassing the writer's check (as a foreign tool would)."""
    with h5py.File(path, "r+") as f:
        group = f["images"][image_id]
        data = group[name][()]
        data[row, 0] = value
        del group[name]
        group.create_dataset(name, data=data, chunks=True if chunked else None)


# ------------------------------------------------------------------------------------ non-finite


def test_all_finite_sees_every_nan_and_inf_of_half_and_single_floats():
    half = np.array([[0, -0.0, 65504, -65504, 6e-8, -6e-8]], np.float16)
    assert all_finite(half) and all_finite(half.astype(np.float32)) and all_finite(np.zeros((0, 4), np.float16))
    for bad in (np.nan, np.inf, -np.inf, -np.nan):
        for dtype in (np.float16, np.float32, np.float64):
            array = half.astype(dtype)
            array[0, 3] = bad
            assert not all_finite(array), (bad, dtype)
            assert not all_finite(np.repeat(array, 2, 1)[:, ::2]), (bad, dtype)  # not contiguous
    assert all_finite(np.arange(5))  # integers are always finite


@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("name", ["features", "boxes", "class_probs"])
def test_raw_reads_refuse_nan_and_inf_naming_image_file_and_check_command(tmp_path, dtype, name):
    path = write_store(tmp_path / "f.h5", dtype=dtype)
    poison(path, "b", name, np.nan)
    poison(path, "c", name, -np.inf)
    store = FeatureStore(path)
    assert np.array_equal(store["a"].features, h5py_arrays(path, "a")["features"])
    assert store.raw_features("b") is not None  # the positioned-read path, not h5py
    for image_id in ("b", "c"):
        with pytest.raises(FeatureStoreError, match=rf"image '{image_id}' in .*f\.h5 has NaN or Inf {name}; "
                                                    rf"run `vlbert check-features .*f\.h5`"):
            store[image_id]
    rows, features_dtype = store.raw_features("b")
    with pytest.raises(FeatureStoreError, match="NaN or Inf"):
        store.read_into("b", np.empty((rows, DIM), features_dtype))


def test_h5py_reads_refuse_nan_too(tmp_path):
    path = write_store(tmp_path / "f.h5")
    poison(path, "b", "features", np.inf, chunked=True)  # chunked: only h5py reads it
    store = FeatureStore(path)
    assert store.raw_features("b") is None
    with pytest.raises(FeatureStoreError, match=r"image 'b' in .*f\.h5 has NaN or Inf features"):
        store["b"]
    assert store["c"].num_boxes == 4


def test_a_first_read_with_misplaced_raw_bytes_still_falls_back_to_h5py(tmp_path, monkeypatch):
    """Bytes read from the wrong place may look like NaN: the once-per-file raw check must fall
    back to h5py, not refuse the record."""
    path = write_store(tmp_path / "f.h5")
    preadv = os.preadv
    monkeypatch.setattr(os, "preadv", lambda fd, buffers, offset: preadv(fd, buffers, offset + 1))
    store = FeatureStore(path)
    assert np.array_equal(store["a"].features, h5py_arrays(path, "a")["features"])
    assert store.raw_features("a") is None


def test_a_command_reading_a_poisoned_store_fails_in_one_line(tmp_path, capsys):
    path = write_store(tmp_path / "f.h5")
    poison(path, "b", "features", np.nan)
    rc = vlbert(["merge-features", str(path), "--output", str(tmp_path / "merged.h5")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "image 'b'" in err and "check-features" in err and "Traceback" not in err
    assert not (tmp_path / "merged.h5").exists()


def test_the_writer_refuses_nan_boxes_and_class_probs(tmp_path):
    for name in ("boxes", "class_probs"):
        bad = record("x")
        getattr(bad, name)[0, 0] = np.nan
        with FeatureWriter(tmp_path / f"{name}.h5", DIM, CLASSES, overwrite=True) as writer:
            with pytest.raises(FeatureStoreError, match=f"{name} contain NaN or Inf"):
                writer.add(bad)


# ------------------------------------------------------------------------ links, external storage


def linked_store(tmp_path: Path) -> Path:
    """Image 'a' stored normally; 'b' an external link to a whole image group of another file, 'c'
    a group whose features are an external link to a dataset, 'd' features in external raw storage.
    The other file's values differ, so reading its bytes at the main file's offsets shows."""
    main = write_store(tmp_path / "main.h5", ids=("a",))
    other = write_store(tmp_path / "other.h5", ids=("b", "spare"), value=7.0)
    with h5py.File(other, "r+") as f:
        f.create_dataset("c_features", data=np.full((2, DIM), 5.5, np.float16))
    raw = tmp_path / "d_features.bin"
    np.full((3, DIM), 3.25, np.float16).tofile(raw)
    with h5py.File(main, "r+") as f:
        images = f["images"]
        images["b"] = h5py.ExternalLink(other.name, "/images/b")  # relative: next to the main file
        c = images.create_group("c")
        c["features"] = h5py.ExternalLink(other.name, "/c_features")
        c.create_dataset("boxes", data=np.tile(np.float32([[0, 0, 4, 4]]), (2, 1)))
        d = images.create_group("d")
        d.create_dataset("features", shape=(3, DIM), dtype=np.float16, external=[(str(raw), 0, raw.stat().st_size)])
        d.create_dataset("boxes", data=np.tile(np.float32([[0, 0, 4, 4]]), (3, 1)))
        for group, n in ((c, 2), (d, 3)):
            group.attrs.update({"image_id": group.name.rsplit("/", 1)[1], "image_w": 8, "image_h": 8, "num_boxes": n})
    return main


def test_links_and_external_storage_are_read_through_h5py_with_its_values(tmp_path):
    path = linked_store(tmp_path)
    store = FeatureStore(path)
    assert sorted(store.ids) == ["a", "b", "c", "d"]
    for _ in range(2):  # first read (the layout probed) and later ones
        for image_id in store.ids:
            got, expected = store[image_id], h5py_arrays(path, image_id)
            for name, array in expected.items():
                assert np.array_equal(getattr(got, name), array), (image_id, name)
    assert store["b"].features[0, 0] == 7.0 and store["c"].features[0, 0] == 5.5 and store["d"].features[0, 0] == 3.25
    assert store.raw_features("a") is not None
    assert [store.raw_features(i) for i in "bcd"] == [None, None, None]


def test_an_images_group_in_another_file_is_read_through_h5py(tmp_path):
    other = write_store(tmp_path / "other.h5", value=9.0)
    path = tmp_path / "main.h5"
    with h5py.File(other, "r") as src, h5py.File(path, "w") as dst:
        dst.attrs.update(dict(src.attrs))
        dst.create_dataset("padding", data=np.zeros(4096, np.uint8))  # shifts every address of this file
        dst["images"] = h5py.ExternalLink(other.name, "/images")
    store = FeatureStore(path)
    for image_id in ("a", "b", "c"):
        assert np.array_equal(store[image_id].features, h5py_arrays(other, image_id)["features"])
        assert store.raw_features(image_id) is None


def test_a_link_to_a_missing_file_is_refused_when_the_store_opens(tmp_path):
    path = linked_store(tmp_path)
    (tmp_path / "other.h5").unlink()
    with pytest.raises(FeatureStoreError, match=r"main\.h5: image group 'b' cannot be opened .*check-features"):
        FeatureStore(path)


def test_missing_external_storage_is_refused_on_read(tmp_path):
    path = linked_store(tmp_path)
    (tmp_path / "d_features.bin").unlink()
    store = FeatureStore(path)
    with pytest.raises(FeatureStoreError, match=r"image 'd' in .*main\.h5 cannot be read"):
        store["d"]


# ---------------------------------------------------------------------------------- unreadable files


def test_truncated_and_foreign_files_are_refused_with_their_path(tmp_path):
    good = write_store(tmp_path / "good.h5")
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5 at all\n")
    for path in (truncated, text):
        pattern = rf"{path.name} is not a readable HDF5 file \(truncated or not HDF5: .*\); re-extract it or point"
        with pytest.raises(FeatureStoreError, match=pattern):
            read_header(path)
        with pytest.raises(FeatureStoreError, match=pattern):
            FeatureStore([good, path])


def test_missing_schema_pieces_are_refused_naming_what_is_missing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FeatureStoreError, match="directory without"):
        FeatureStore(empty)
    no_dim = write_store(tmp_path / "no_dim.h5")
    with h5py.File(no_dim, "r+") as f:
        del f.attrs["feature_dim"]
    with pytest.raises(FeatureStoreError, match=r"no_dim\.h5 lacks the attribute\(s\) feature_dim"):
        FeatureStore(no_dim)
    no_images = write_store(tmp_path / "no_images.h5")
    with h5py.File(no_images, "r+") as f:
        del f["images"]
    with pytest.raises(FeatureStoreError, match=r"no_images\.h5 has no readable /images group"):
        read_header(no_images)
    with pytest.raises(FeatureStoreError, match="does not exist"):
        read_header(tmp_path / "absent.h5")


def test_an_unreadable_file_fails_a_command_in_one_line(tmp_path, capsys):
    text = tmp_path / "feats.h5"
    text.write_text("hello")
    rc = vlbert(["show-features", str(text), "--image-id", "x", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "feats.h5 is not a readable HDF5 file" in err


# ------------------------------------------------------------------------------------------- shards


def test_duplicate_ids_across_shards_are_refused_naming_the_id_and_both_files(tmp_path):
    first = write_store(tmp_path / "s0.h5", ids=("a", "b"))
    second = write_store(tmp_path / "s1.h5", ids=("c", "b"))
    with pytest.raises(FeatureStoreError, match=r"image id 'b' is in both .*s0\.h5 and .*s1\.h5"):
        FeatureStore([first, second])
    with pytest.raises(FeatureStoreError, match="in both"):
        FeatureStore(tmp_path)
    with pytest.raises(FeatureStoreError, match="given twice"):
        FeatureStore([first, tmp_path / "." / "s0.h5"])


def test_duplicate_ids_within_one_file_are_refused(tmp_path):
    """A file of another program (no /image_ids list) with one id under two groups."""
    path = write_store(tmp_path / "f.h5", ids=("a", "b"))
    with h5py.File(path, "r+") as f:
        f["images"]["b"].attrs["image_id"] = "a"
        del f["image_ids"]
    with pytest.raises(FeatureStoreError, match=r"image id 'a' is twice in .*f\.h5 \(groups 'a' and 'b'\)"):
        FeatureStore(path)


def test_float16_and_float32_shards_are_read_together_as_stored(tmp_path):
    """Each record says its dtype; batches convert to one dtype (the model casts its inputs)."""
    half = write_store(tmp_path / "s0.h5", ids=("a",), dtype="float16")
    single = write_store(tmp_path / "s1.h5", ids=("b",), dtype="float32")
    store = FeatureStore([half, single])
    assert store["a"].features.dtype == np.float16 and store["b"].features.dtype == np.float32
    np.testing.assert_array_equal(store["b"].features, h5py_arrays(single, "b")["features"])


# ------------------------------------------------------------------------------- offline weights


def test_published_weights_that_cannot_be_downloaded_fail_in_one_line(tmp_path, monkeypatch, capsys):
    """The default config on a machine without internet: one line with the URL, where torchvision
    looks for the file and the setting that avoids the download (no 90-line URLError traceback)."""
    import urllib.error

    import torch
    from PIL import Image

    def offline(url, destination, *args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))  # an empty cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(images / "0.png")
    tiny = Path(__file__).resolve().parents[1] / "configs" / "extract" / "tiny.yaml"
    rc = vlbert(["extract", "--config", str(tiny), "--weights", "default", "--images", str(images),
                 "--output", str(tmp_path / "f.h5"), "--progress", "false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "Traceback" not in "\n".join(err)
    cached = tmp_path / "hub" / "checkpoints" / "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"
    assert err[-1].startswith("vlbert extract: error: could not download the weights "
                              "https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth "
                              "(URLError: [Errno -3] Temporary failure in name resolution)")
    assert f"put it at {cached}" in err[-1] and "`weights: /path/to/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth`" in err[-1]


def test_detectron2_weights_that_cannot_be_downloaded_name_the_url():
    import urllib.error

    from vlbert.errors import InputError
    from vlbert.features.backends.detectron2 import _load_weights

    class Offline:
        def load(self, path):
            raise urllib.error.HTTPError(path, 403, "Forbidden", {}, None)

    url = "https://dl.fbaipublicfiles.com/detectron2/model_final_vg.pkl"
    with pytest.raises(InputError, match=rf"could not download the weights {url} \(HTTPError: Forbidden\).*"
                                         r"`weights: /path/to/model_final_vg\.pkl`"):
        _load_weights(Offline(), url)
