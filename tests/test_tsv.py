"""Import of bottom-up-attention TSV features, round trip on generated TSV files."""
import base64
import re
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


def damage(fields: list[str], column: int, value: str) -> list[str]:
    return fields[:column] + [value] + fields[column + 1:]


MALFORMED = {
    "bad base64 boxes": (lambda f: damage(f, 8, f[8][:-3]), r"field boxes is not valid base64"),
    "bad base64 features": (lambda f: damage(f, 9, "abcde"), r"field features is not valid base64"),
    "missing column": (lambda f: f[:-1], r"9 tab-separated columns; expected 10"),
    "non-numeric num_boxes": (lambda f: damage(f, 7, "many"), r"num_boxes / img_w / img_h .* are not numbers"),
    "infinite width": (lambda f: damage(f, 2, "inf"), r"are not numbers"),
    "negative num_boxes": (lambda f: damage(f, 7, "-2"), r"num_boxes is -2, negative"),
    "odd byte count": (lambda f: damage(f, 9, b64(np.zeros(6, np.uint8))), r"field features has 6 bytes, not a whole"),
    "features not num_boxes rows": (lambda f: damage(f, 9, b64(np.zeros(int(f[7]) * DIM + 1, np.float32))),
                                    r"field features has \d+ float32 values, not a multiple of num_boxes"),
    "objects_conf size": (lambda f: damage(f, 4, b64(np.zeros(int(f[7]) * 2, np.float32))),
                          r"objects_conf has \d+ values, expected num_boxes"),
    "nan features": (lambda f: damage(f, 9, b64(np.full((int(f[7]), DIM), np.nan, np.float32))),
                     r"image 'COCO_val2014_000000000001': features contain NaN or Inf"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_line_fails_the_command_in_one_line_naming_file_and_line(tmp_path, capsys, case):
    from vlbert.cli import main as vlbert

    damage_line, message = MALFORMED[case]
    tsv = write_tsv(tmp_path / "bad.tsv", make_rows(3), FULL)
    lines = tsv.read_text().splitlines()
    lines[1] = "\t".join(damage_line(lines[1].split("\t")))
    tsv.write_text("\n".join(lines) + "\n")
    output = tmp_path / "out.h5"
    rc = vlbert(["import-tsv", str(tsv), "--output", str(output)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert re.match(rf"vlbert import-tsv: error: {re.escape(str(tsv))}:2: .*{message}", err[0]), err[0]
    assert not output.exists() and not output.with_name("out.h5.tmp").exists()


def test_a_binary_file_is_refused_as_not_utf8_text(tmp_path, capsys):
    from vlbert.cli import main as vlbert

    blob = tmp_path / "features.tsv"
    blob.write_bytes(b"\x89HDF\r\n\x1a\n\xff\xfe" * 10)
    assert vlbert(["import-tsv", str(blob), "--output", str(tmp_path / "out.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{blob}:1: not UTF-8 text" in err[0]


def write_lxmert_tsv(path: Path, rows: list[dict]) -> Path:
    """As LXMERT's / bottom-up's extraction scripts wrote them: csv.DictWriter, tab-delimited, base64 arrays."""
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, delimiter="\t", fieldnames=FULL)
        for row in rows:
            writer.writerow({name: b64(value) if isinstance(value, np.ndarray) else value for name, value in row.items()})
    return path


def test_lxmert_csv_quoting_and_all_columns_import_array_by_array(tmp_path):
    rows = make_rows(4, seed=5)
    rows[1]["img_id"] = 'odd "quoted" id'
    rows[2]["img_id"] = "tab\tinside"
    tsv = write_lxmert_tsv(tmp_path / "lxmert.tsv", rows)
    assert '"odd ""quoted"" id"' in tsv.read_text()  # the csv module did quote these ids
    assert main([str(tsv), "--output", str(tmp_path / "lxmert.h5"), "--dtype", "float32"]) == 0
    store = FeatureStore(tmp_path / "lxmert.h5")
    assert sorted(store.ids) == sorted(row["img_id"] for row in rows)
    renamed = {"features": "features", "boxes": "boxes", "labels": "objects_id", "scores": "objects_conf",
               "attributes": "attrs_id", "attribute_scores": "attrs_conf"}
    for row in rows:
        record = store[row["img_id"]]
        for name, column in renamed.items():
            stored = getattr(record, name)
            assert stored.dtype == row[column].dtype and stored.tobytes() == row[column].tobytes(), name
        assert (record.image_w, record.image_h) == (row["img_w"], row["img_h"])


def test_a_badly_quoted_line_is_refused_naming_its_line(tmp_path):
    tsv = write_lxmert_tsv(tmp_path / "q.tsv", make_rows(3))
    lines = tsv.read_text().splitlines()
    lines[2] = 'x"y' + '\t"unterminated' + lines[2][lines[2].index("\t", 20):]
    tsv.write_text("\n".join(lines) + "\n")
    with pytest.raises(TsvError, match=r"q\.tsv:3: badly quoted field"):
        import_tsv([tsv], tmp_path / "q.h5")


def test_options_of_other_formats_are_refused(tmp_path, capsys):
    tsv = write_tsv(tmp_path / "a.tsv", make_rows(1), FULL)
    assert main([str(tsv), "--output", str(tmp_path / "a.h5"), "--predictions", "p.tsv"]) == 2
    assert "--predictions and --labelmap are for --format vinvl" in capsys.readouterr().err
    assert main([str(tsv), "--output", str(tmp_path / "a.h5"), "--image-sizes", "hw.tsv"]) == 2
    assert "bottom-up TSVs store the image size" in capsys.readouterr().err


def write_vocab(path: Path, names: list[str]) -> Path:
    path.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")
    return path


VG_NAMES = [f"object {i}" for i in range(1600)]


def test_class_names_file_round_trips_into_the_store(tmp_path):
    tsv = write_tsv(tmp_path / "coco.tsv", make_rows(2), FULL)
    vocab = write_vocab(tmp_path / "objects_vocab.txt", ["Stop Sign,stopsign", *VG_NAMES[1:]])
    out = tmp_path / "coco.h5"
    assert main([str(tsv), "--output", str(out), "--class-names", str(vocab)]) == 0
    store = FeatureStore(out)
    assert store.class_names == ["stop sign", *VG_NAMES[1:]]  # index = objects_id: no background added
    assert store.provenance["classes"]["names"]["file"] == "objects_vocab.txt"


BAD_NAMES = {
    "one short": (VG_NAMES[1:], r"has 1599 names for 1600 classes; these ids have no background class, so no "
                                r"background name should be added"),
    "background first": (["__background__", *VG_NAMES], r"has 1601 names for 1600 classes; its first line is "
                                                         r"__background__.*drop that line"),
    "too few": (VG_NAMES[:10], r"has 10 names for 1600 classes; give the detector's 1600 object names"),
    "duplicate": (["man", *VG_NAMES[:-2], "man"], r"repeats 'man'; each class needs its own name"),
}


@pytest.mark.parametrize("case", list(BAD_NAMES))
def test_a_class_names_file_that_does_not_fit_is_refused_before_reading(tmp_path, capsys, case):
    names, message = BAD_NAMES[case]
    vocab = write_vocab(tmp_path / "vocab.txt", names)
    missing_input = tmp_path / "not-read.tsv"  # names are checked before any input is opened
    out = tmp_path / "out.h5"
    assert main([str(missing_input), "--output", str(out), "--class-names", str(vocab)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.match(rf"vlbert import-tsv: error: --class-names: {re.escape(str(vocab))} {message}",
                                      err[0]), err
    assert not out.exists() and not out.with_name("out.h5.tmp").exists()


def test_a_missing_class_names_file_and_vinvl_are_refused(tmp_path, capsys):
    tsv = write_tsv(tmp_path / "a.tsv", make_rows(1), FULL)
    out = tmp_path / "a.h5"
    assert main([str(tsv), "--output", str(out), "--class-names", str(tmp_path / "nope.txt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--class-names: cannot read {tmp_path / 'nope.txt'}" in err[0], err
    vocab = write_vocab(tmp_path / "vocab.txt", VG_NAMES)
    assert main([str(tsv), "--output", str(out), "--format", "vinvl", "--class-names", str(vocab)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--format vinvl takes the detector's labelmap JSON: --labelmap FILE" in err[0], err
    legacy = write_tsv(tmp_path / "legacy.tsv", make_rows(1), LEGACY)
    assert main([str(legacy), "--output", str(out), "--class-names", str(vocab)]) == 2
    assert "has no objects_id column, so there are no labels to name" in capsys.readouterr().err
    assert not out.exists() and not out.with_name("a.h5.tmp").exists()
