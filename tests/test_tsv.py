"""Import of bottom-up-attention TSV features, round trip on generated TSV files."""
import base64
from pathlib import Path

import numpy as np
import pytest

from vlbert.featstore import FeatureStore, FeatureStoreError
from vlbert.features.tsv import TsvError, import_tsv, main, read_tsv

DIM = 16


def b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def make_rows(count: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        n = int(rng.integers(1, 8))
        xy = rng.uniform(0, 200, (n, 2))
        rows.append({
            "img_id": f"COCO_val2014_{i:012d}", "img_h": 240 + i, "img_w": 320,
            "objects_id": rng.integers(0, 1600, n).astype(np.int64),
            "objects_conf": rng.uniform(0, 1, n).astype(np.float32),
            "attrs_id": rng.integers(0, 400, n).astype(np.int64),
            "attrs_conf": rng.uniform(0, 1, n).astype(np.float32),
            "num_boxes": n,
            "boxes": np.concatenate([xy, xy + rng.uniform(1, 40, (n, 2))], 1).astype(np.float32),
            "features": rng.normal(size=(n, DIM)).astype(np.float32),
        })
    return rows


def write_tsv(path: Path, rows: list[dict], fields: tuple[str, ...], box_dtype=np.float32) -> Path:
    lines = []
    for row in rows:
        values = []
        for name in fields:
            value = row[{"image_id": "img_id", "image_w": "img_w", "image_h": "img_h"}.get(name, name)]
            if isinstance(value, np.ndarray):
                value = b64(value.astype(box_dtype) if name == "boxes" else value)
            values.append(str(value))
        lines.append("\t".join(values))
    path.write_text("\n".join(lines) + "\n")
    return path


FULL = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "num_boxes",
        "boxes", "features")
LEGACY = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")


def test_ten_column_tsv_round_trip(tmp_path):
    rows = make_rows(5)
    tsv = write_tsv(tmp_path / "coco.tsv", rows, FULL)
    assert main([str(tsv), "--output", str(tmp_path / "coco.h5"), "--dtype", "float32"]) == 0
    store = FeatureStore(tmp_path / "coco.h5")
    assert (store.feature_dim, store.num_classes) == (DIM, 1600)
    assert store.provenance["backend"] == "import-tsv"
    assert sorted(store.ids) == sorted(r["img_id"] for r in rows)
    for row in rows:
        record = store[row["img_id"]]
        np.testing.assert_array_equal(record.features, row["features"])
        np.testing.assert_array_equal(record.boxes, row["boxes"])
        np.testing.assert_array_equal(record.labels, row["objects_id"])  # kept for region classification
        assert (record.image_w, record.image_h, record.num_boxes) == (row["img_w"], row["img_h"], row["num_boxes"])
        assert record.class_probs is None


def test_six_column_tsv_with_float64_boxes_and_fp16(tmp_path):
    rows = make_rows(3, seed=1)
    tsv = write_tsv(tmp_path / "legacy.tsv", rows, LEGACY, box_dtype=np.float64)
    assert import_tsv([tsv], tmp_path / "legacy.h5") == 3
    store = FeatureStore(tmp_path / "legacy.h5")
    assert store.num_classes == 0
    for row in rows:
        record = store[row["img_id"]]
        np.testing.assert_allclose(record.boxes, row["boxes"], rtol=1e-6)
        np.testing.assert_allclose(record.features, row["features"], rtol=1e-3, atol=1e-3)  # fp16 storage
        assert record.labels is None


def test_several_files_and_streaming_reader(tmp_path):
    a = write_tsv(tmp_path / "a.tsv", make_rows(2, seed=2), FULL)
    rows_b = make_rows(4, seed=3)
    for row in rows_b:
        row["img_id"] = "b" + row["img_id"]
    b = write_tsv(tmp_path / "b.tsv", rows_b, FULL)
    assert len(list(read_tsv(b))) == 4
    assert import_tsv([a, b], tmp_path / "ab.h5") == 6


def test_bad_tsv_lines_name_file_and_line(tmp_path):
    rows = make_rows(2)
    tsv = write_tsv(tmp_path / "bad.tsv", rows, FULL)
    lines = tsv.read_text().splitlines()
    fields = lines[1].split("\t")
    fields[7] = str(int(fields[7]) + 1)  # num_boxes disagrees with the arrays
    tsv.write_text(lines[0] + "\n" + "\t".join(fields) + "\n")
    with pytest.raises(TsvError, match=r"bad\.tsv:2"):
        import_tsv([tsv], tmp_path / "bad.h5")
    assert not (tmp_path / "bad.h5").exists() and not (tmp_path / "bad.h5.tmp").exists()
    (tmp_path / "cols.tsv").write_text("a\tb\tc\n")
    assert main([str(tmp_path / "cols.tsv"), "--output", str(tmp_path / "cols.h5")]) == 2
    dup = write_tsv(tmp_path / "dup.tsv", rows[:1] + rows[:1], FULL)
    with pytest.raises(FeatureStoreError, match="already written"):
        import_tsv([dup], tmp_path / "dup.h5")
    with pytest.raises(TsvError, match="num-classes"):
        import_tsv([write_tsv(tmp_path / "ok.tsv", rows, FULL)], tmp_path / "few.h5", num_classes=10)
