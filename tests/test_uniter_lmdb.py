"""`vlbert import-tsv --format uniter-lmdb`: an LMDB written as UNITER's convert_imgdir.py writes it,
imported array by array."""
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

lmdb = pytest.importorskip("lmdb")
msgpack = pytest.importorskip("msgpack")
msgpack_numpy = pytest.importorskip("msgpack_numpy")

from vlbert.cli import main as vlbert  # noqa: E402
from vlbert.data.regions import box_locations  # noqa: E402
from vlbert.featstore import FeatureStore  # noqa: E402
from vlbert.features.lmdb_import import import_uniter_lmdb  # noqa: E402
from vlbert.features.tsv import TsvError  # noqa: E402

DIM, CLASSES = 32, 1601


def dumps(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """One image's arrays as UNITER's bottom-up extractor saved them (float32; the converter makes fp16)."""
    xy = rng.uniform(0, 0.5, (n, 2))
    x2y2 = xy + rng.uniform(0.05, 0.5, (n, 2))
    return {"features": rng.normal(size=(n, DIM)).astype(np.float32),
            "norm_bb": np.hstack([xy, x2y2, x2y2 - xy]).astype(np.float32),
            "conf": rng.uniform(0.2, 1, n).astype(np.float32),
            "soft_labels": rng.dirichlet(np.ones(CLASSES), n).astype(np.float32)}


def write_img_db(folder: Path, images: dict[str, dict], compress: bool) -> Path:
    """What convert_imgdir.py does: fp32 -> fp16, msgpack (use_bin_type, msgpack-numpy) or savez_compressed,
    the file name as key, and __keys__."""
    name = "feat_th0.2_max100_min10" + ("_compressed" if compress else "")
    folder.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(folder / name), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for fname, arrays in images.items():
            dump = {k: a.astype(np.float16) if a.dtype == np.float32 else a for k, a in arrays.items()}
            if compress:
                with io.BytesIO() as writer:
                    np.savez_compressed(writer, **dump)
                    value = writer.getvalue()
            else:
                value = msgpack.dumps(dump, default=msgpack_numpy.encode, use_bin_type=True)
            txn.put(fname.encode("utf-8"), value)
        txn.put(b"__keys__", json.dumps(list(images)).encode("utf-8"))
    env.close()
    return folder


@pytest.fixture
def images() -> dict[str, dict]:
    rng = np.random.default_rng(0)
    return {f"coco_val2014_{i:012d}.npz": dumps(rng, int(rng.integers(10, 20))) for i in range(4)}


@pytest.mark.parametrize("compress", [False, True])
def test_both_record_encodings_import_array_by_array(tmp_path, images, compress):
    folder = write_img_db(tmp_path / "coco_val2014", images, compress)
    assert import_uniter_lmdb(folder, tmp_path / "out.h5") == 4  # the split folder: its one LMDB is found
    store = FeatureStore(tmp_path / "out.h5")
    assert (store.feature_dim, store.num_classes) == (DIM, CLASSES)
    assert list(store.ids) == [name[:-4] for name in images]  # the order of __keys__, ids without .npz
    for name, arrays in images.items():
        record = store[name[:-4]]
        half = {k: a.astype(np.float16) for k, a in arrays.items()}  # what the LMDB holds
        assert record.features.dtype == np.float16 and record.features.tobytes() == half["features"].tobytes()
        assert record.class_probs.tobytes() == half["soft_labels"].tobytes()
        assert record.scores.tobytes() == half["conf"].astype(np.float32).tobytes()
        # on the nominal 1024 x 1024 image the model's normalised locations are UNITER's norm_bb exactly
        locations = box_locations(record.boxes, record.image_w, record.image_h)
        assert locations[:, :4].tobytes() == half["norm_bb"][:, :4].astype(np.float32).tobytes()


def test_image_sizes_give_pixel_boxes(tmp_path, images):
    folder = write_img_db(tmp_path, images, compress=False)
    sizes = tmp_path / "sizes.json"
    sizes.write_text(json.dumps({name[:-4]: [640, 480] for name in images}))
    out = tmp_path / "out.h5"
    assert vlbert(["import-tsv", "--format", "uniter-lmdb", str(folder / "feat_th0.2_max100_min10"),
                   "--image-sizes", str(sizes), "--output", str(out)]) == 0
    store = FeatureStore(out)
    for name, arrays in images.items():
        record = store[name[:-4]]
        assert (record.image_w, record.image_h) == (640, 480)
        expected = arrays["norm_bb"][:, :4].astype(np.float16).astype(np.float32) * np.float32([640, 480, 640, 480])
        np.testing.assert_array_equal(record.boxes, expected)


def test_pickled_and_foreign_records_are_refused(tmp_path, images, capsys):
    folder = write_img_db(tmp_path / "a", images, compress=True)
    env = lmdb.open(str(folder / "feat_th0.2_max100_min10_compressed"), map_size=1 << 26)
    with env.begin(write=True) as txn, io.BytesIO() as writer:
        np.savez(writer, features=np.array([{"x": 1}], dtype=object), norm_bb=np.zeros((1, 6)))
        txn.put(b"coco_val2014_000000000001.npz", writer.getvalue())  # needs pickle to load: refused
    env.close()
    with pytest.raises(TsvError, match=r"record 'coco_val2014_000000000001\.npz': a damaged or non-numeric npz"):
        import_uniter_lmdb(folder, tmp_path / "a.h5")
    assert not (tmp_path / "a.h5").exists() and not (tmp_path / "a.h5.tmp").exists()
    images["x.npz"] = {**images.popitem()[1]}
    images["x.npz"]["norm_bb"] = images["x.npz"]["norm_bb"][:, [0, 1, 2, 3, 0, 1]]  # not UNITER's box layout
    write_img_db(tmp_path / "b", images, compress=False)
    assert vlbert(["import-tsv", "--format", "uniter-lmdb", str(tmp_path / "b"), "--output", str(tmp_path / "b.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "record 'x.npz': norm_bb columns 4-5 are not x2 - x1, y2 - y1" in err[0], err
    assert vlbert(["import-tsv", "--format", "uniter-lmdb", str(tmp_path), "--output", str(tmp_path / "c.h5")]) == 2
    assert "holds no LMDB" in capsys.readouterr().err


def write_vocab(path: Path, names: list[str]) -> Path:
    path.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    return path


def test_class_names_get_the_background_first_as_soft_labels_have_it(tmp_path, images):
    folder = write_img_db(tmp_path / "db", images, compress=False)
    vocab = write_vocab(tmp_path / "objects_vocab.txt", [f"object {i}" for i in range(CLASSES - 1)])
    out = tmp_path / "out.h5"
    assert vlbert(["import-tsv", "--format", "uniter-lmdb", str(folder), "--class-names", str(vocab),
                   "--output", str(out)]) == 0
    store = FeatureStore(out)
    assert store.class_names == ["__background__"] + [f"object {i}" for i in range(CLASSES - 1)]
    assert store.provenance["classes"]["names"] == {
        "file": "objects_vocab.txt", "sha256": store.provenance["classes"]["names"]["sha256"],
        "background": "__background__ added at index 0"}
    full = write_vocab(tmp_path / "full.txt", ["__background__"] + [f"o{i}" for i in range(CLASSES - 1)])
    assert import_uniter_lmdb(folder, out, overwrite=True, class_names=full) == len(images)
    assert FeatureStore(out).class_names[:2] == ["__background__", "o0"]


@pytest.mark.parametrize("names, message", [
    ([f"o{i}" for i in range(10)], r"has 10 names for 1601 classes \(id 0 is the background\): give the 1600 "
                                   r"foreground names \(__background__ is added at id 0\) or all 1601"),
    (["cat", "dog", "cat"], r"repeats 'cat'; each class needs its own name"),
    (None, r"cannot read"),
])
def test_class_names_that_do_not_fit_are_refused(tmp_path, images, capsys, names, message):
    folder = write_img_db(tmp_path / "db", images, compress=False)
    vocab = write_vocab(tmp_path / "vocab.txt", names) if names else tmp_path / "missing.txt"
    out = tmp_path / "out.h5"
    assert vlbert(["import-tsv", "--format", "uniter-lmdb", str(folder), "--class-names", str(vocab),
                   "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vlbert import-tsv: error: --class-names: "), err
    assert str(vocab) in err[0] and re.search(message, err[0]), err[0]
    assert not out.exists() and not out.with_name("out.h5.tmp").exists()
