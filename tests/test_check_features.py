"""`vlbert check-features`: every problem of a store on its own line, a summary, and the exit status."""
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from vlbert.cli import main as vlbert
from vlbert.featstore import FeatureWriter, RegionRecord

DIM, CLASSES = 8, 3


def record(image_id: str, n: int = 3, boxes: np.ndarray | None = None) -> RegionRecord:
    if boxes is None:
        boxes = np.tile(np.array([[1, 2, 10, 12]], np.float32), (n, 1))
    return RegionRecord(image_id, np.ones((n, DIM), np.float32), boxes, 20, 16,
                        np.full((n, CLASSES), 1 / CLASSES, np.float32))


def write_store(path: Path, records: list[RegionRecord], dtype: str = "float16", feature_dim: int = DIM) -> Path:
    with FeatureWriter(path, feature_dim, CLASSES, {"backend": "test"}, dtype) as writer:
        for r in records:
            writer.add(r)
    return path


def check(capsys, *args: str) -> tuple[int, list[str]]:
    rc = vlbert(["check-features", *map(str, args)])
    captured = capsys.readouterr()
    return rc, captured.out.strip().splitlines() + captured.err.strip().splitlines()


def test_a_clean_store_passes_with_a_summary(tmp_path, capsys):
    write_store(tmp_path / "s0.h5", [record("a"), record("b")])
    write_store(tmp_path / "s1.h5", [record("c")], dtype="float32")
    rc, lines = check(capsys, tmp_path)
    assert rc == 0
    assert lines[-1] == "checked 2 file(s), 3 image(s): no problems; 1 note(s) (dtype 1)"
    assert lines[0].startswith("dtype: ") and "merge-features" in lines[0]


def broken_store(tmp_path: Path) -> list[Path]:
    """One problem of each kind, each on its own image."""
    inverted = np.float32([[1, 2, 10, 12], [9, 2, 3, 12]])  # row 1: x2 < x1
    outside = np.float32([[1, 2, 10, 12], [0, 0, 25, 16]])  # row 1: x2 beyond the 20-px width
    first = write_store(tmp_path / "s0.h5", [record("ok"), record("nan"), record("inverted", 2, inverted),
                                              record("outside", 2, outside), record("empty", 0),
                                              record("no_num_boxes"), record("bad_shape"), record("twice")])
    second = write_store(tmp_path / "s1.h5", [record("twice"), record("inf_probs")])
    with h5py.File(first, "r+") as f:
        images = f["images"]
        features = images["nan"]["features"][()]
        features[2, 5] = np.nan
        del images["nan"]["features"]
        images["nan"].create_dataset("features", data=features)
        del images["no_num_boxes"].attrs["num_boxes"]
        del images["bad_shape"]["class_probs"]
        images["bad_shape"].create_dataset("class_probs", data=np.zeros((3, CLASSES + 1), np.float16))
    with h5py.File(second, "r+") as f:
        probs = f["images"]["inf_probs"]["class_probs"]
        probs[0, 0] = np.inf
    return [first, second]


def test_every_problem_is_reported_on_its_own_line(tmp_path, capsys):
    first, second = broken_store(tmp_path)
    ids = tmp_path / "captions.jsonl"
    ids.write_text("".join(json.dumps({"image_id": i, "caption": "x"}) + "\n" for i in ("ok", "nan", "gone")))
    rc, lines = check(capsys, first, second, "--ids", ids)
    assert rc == 1
    text = "\n".join(lines)
    expected = [
        rf"non-finite: .*s0\.h5: image 'nan': features hold NaN or Inf in 1 of 3 rows \(row 2\)",
        rf"non-finite: .*s1\.h5: image 'inf_probs': class_probs hold NaN or Inf in 1 of 3 rows \(row 0\)",
        r"boxes: .*image 'inverted': x2 < x1 or y2 < y1 in 1 of 2 rows \(row 1\)",
        r"boxes: .*image 'outside': boxes outside the 20x16 image in 1 of 2 rows \(row 1\)",
        r"empty: .*image 'empty': no regions",
        r"schema: .*image 'no_num_boxes': attribute num_boxes=None is missing",
        rf"schema: .*image 'bad_shape': class_probs have shape \[3, {CLASSES + 1}\], expected \[3, {CLASSES}\]",
        r"duplicate: image id 'twice' is in both .*s0\.h5 and .*s1\.h5",
        r"missing-id: image id 'gone' of .*captions\.jsonl has no features in the store",
    ]
    for pattern in expected:
        assert any(re.match(pattern, line) for line in lines), (pattern, text)
    assert not any("'ok'" in line for line in lines)
    assert lines[-1] == ("checked 2 file(s), 10 image(s): 9 problem(s) "
                         "(schema 2, non-finite 2, boxes 2, empty 1, duplicate 1, missing-id 1)")
    fixes = [line for line in lines if ": to fix: " in line]
    assert [line.split(":")[0] for line in fixes] == ["schema", "non-finite", "boxes", "empty", "duplicate", "missing-id"]
    assert len(lines) == 9 + len(fixes) + 1  # one line per problem, how to fix each kind, the summary


def test_lines_are_capped_per_kind_with_a_count_of_the_rest(tmp_path, capsys):
    path = write_store(tmp_path / "f.h5", [record(str(i), 0) for i in range(12)])
    rc, lines = check(capsys, path, "--max-per-kind", "5")
    assert rc == 1
    assert sum(line.startswith("empty: ") for line in lines) == 7  # 5 shown, the rest counted, the fix
    assert "empty: ... and 7 more empty problems (--max-per-kind 0 lists all)" in lines
    assert lines[-1].endswith("12 problem(s) (empty 12)")


def test_ids_from_a_text_file_with_an_id_format(tmp_path, capsys):
    path = write_store(tmp_path / "f.h5", [record("COCO_000001"), record("COCO_000002")])
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n2\n3\n\n")
    rc, lines = check(capsys, path, "--ids", ids, "--image-id-format", "COCO_{image_id:0>6}")
    assert rc == 1 and lines[0].startswith("missing-id: image id 'COCO_000003'")


def test_links_and_external_storage_are_notes_not_problems(tmp_path, capsys):
    main = write_store(tmp_path / "main.h5", [record("a")])
    write_store(tmp_path / "other.h5", [record("b")])
    raw = tmp_path / "features.bin"
    np.ones((3, DIM), np.float16).tofile(raw)
    with h5py.File(main, "r+") as f:
        f["images"]["b"] = h5py.ExternalLink("other.h5", "/images/b")
        group = f["images"].create_group("c")
        group.create_dataset("features", shape=(3, DIM), dtype=np.float16, external=[(str(raw), 0, raw.stat().st_size)])
        group.create_dataset("boxes", data=np.tile(np.float32([[0, 0, 4, 4]]), (3, 1)))
        group.attrs.update({"image_id": "c", "image_w": 8, "image_h": 8, "num_boxes": 3})
    rc, lines = check(capsys, main)
    assert rc == 0, lines
    assert any(line.startswith("link: ") and "'b' is an external link to other.h5:/images/b" in line for line in lines)
    assert any(line.startswith("external: ") and "image 'c': features" in line for line in lines)
    assert lines[-1] == "checked 1 file(s), 3 image(s): no problems; 2 note(s) (link 1, external 1)"


def test_shards_of_other_dimensions_and_schema_problems(tmp_path, capsys):
    write_store(tmp_path / "s0.h5", [record("a")])
    other = write_store(tmp_path / "s1.h5", [RegionRecord("b", np.ones((2, DIM * 2), np.float32),
                                                          np.float32([[0, 0, 1, 1]] * 2), 4, 4)],
                        feature_dim=DIM * 2)
    with h5py.File(other, "r+") as f:
        f.attrs["schema_version"] = 9
    rc, lines = check(capsys, tmp_path)
    assert rc == 1
    assert any(line.startswith("shards: ") and f"feature_dim={DIM * 2}" in line for line in lines)
    assert any(line.startswith("schema: ") and "schema version 9" in line for line in lines)


def test_links_to_files_that_are_gone_are_problems(tmp_path, capsys):
    main = write_store(tmp_path / "main.h5", [record("a")])
    write_store(tmp_path / "other.h5", [record("b")])
    with h5py.File(main, "r+") as f:
        f["images"]["b"] = h5py.ExternalLink("other.h5", "/images/b")
        group = f["images"].create_group("c")
        group["features"] = h5py.ExternalLink("gone.h5", "/features")
        group.create_dataset("boxes", data=np.float32([[0, 0, 4, 4]]))
        group.attrs.update({"image_id": "c", "image_w": 8, "image_h": 8, "num_boxes": 1})
    (tmp_path / "other.h5").unlink()
    rc, lines = check(capsys, main)
    assert rc == 1
    assert any(re.match(r"broken: .*main\.h5: image group 'b' cannot be opened", line) for line in lines), lines
    assert any(re.match(r"broken: .*main\.h5: image 'c': its arrays cannot be read", line) for line in lines), lines
    assert lines[-1].startswith("checked 1 file(s), 3 image(s): 2 problem(s) (broken 2)")


@pytest.mark.parametrize("content", [b"not hdf5", None])
def test_unusable_input_exits_2(tmp_path, capsys, content):
    good = write_store(tmp_path / "good.h5", [record("a")])
    bad = tmp_path / "bad.h5"
    if content is not None:
        bad.write_bytes(content)
    rc, lines = check(capsys, good, bad)
    assert rc == 2
    if content is None:  # a missing file: the command's one-line error
        assert lines == [f"vlbert check-features: error: feature file {bad} does not exist; "
                         "run `vlbert extract` or `vlbert synth` first"]
    else:  # reported with the rest, the good file still checked
        assert lines[0].startswith(f"unreadable: {bad} is not a readable HDF5 file")
        assert lines[-1] == "checked 1 file(s), 1 image(s): 1 problem(s) (unreadable 1)"


def scored(image_id: str, n: int = 3) -> RegionRecord:
    base = record(image_id, n)
    return RegionRecord(image_id, base.features, base.boxes, 20, 16, base.class_probs, labels=np.arange(n) % CLASSES,
                        scores=np.full(n, 0.5, np.float32), attributes=np.arange(n) - 1,
                        attribute_scores=np.full(n, 0.25, np.float32))


def write_named(path: Path, records: list[RegionRecord], class_names=("bg", "a", "b")) -> Path:
    with FeatureWriter(path, DIM, CLASSES, {"backend": "test"}, class_names=class_names,
                       attribute_names=["x", "y"]) as writer:
        for r in records:
            writer.add(r)
    return path


def test_scores_attributes_and_names_are_checked(tmp_path, capsys):
    first = write_named(tmp_path / "s0.h5", [scored("ok"), scored("nan_scores"), scored("bad_attribute"),
                                             scored("short_scores"), scored("bad_label")])
    second = write_named(tmp_path / "s1.h5", [scored("other")], class_names=("bg", "a", "c"))
    rc, lines = check(capsys, first)
    assert rc == 0 and lines[-1] == "checked 1 file(s), 5 image(s): no problems", lines
    with h5py.File(first, "r+") as f:
        images = f["images"]
        images["nan_scores"]["attribute_scores"][2] = np.nan
        images["bad_attribute"]["attributes"][0] = 2  # attribute_names has 2 entries
        del images["short_scores"]["scores"]
        images["short_scores"].create_dataset("scores", data=np.zeros(2, np.float32))
        images["bad_label"]["labels"][1] = CLASSES
    rc, lines = check(capsys, first, second)
    assert rc == 1
    expected = [
        r"non-finite: .*s0\.h5: image 'nan_scores': attribute_scores hold NaN or Inf in 1 of 3 rows \(row 2\)",
        r"schema: .*image 'bad_attribute': attributes outside \[-1, 2\) of the attribute_names in 1 of 3 rows \(row 0\)",
        r"schema: .*image 'short_scores': scores have shape \[2\], expected \[3\]",
        rf"schema: .*image 'bad_label': labels outside \[0, {CLASSES}\) of num_classes in 1 of 3 rows \(row 1\)",
        r"shards: .*s1\.h5 and .*s0\.h5 have different class_names \(id 2 is 'b' and 'c'\)",
    ]
    for pattern in expected:
        assert any(re.match(pattern, line) for line in lines), (pattern, lines)
    assert lines[-1] == "checked 2 file(s), 6 image(s): 5 problem(s) (schema 3, shards 1, non-finite 1)"


def test_names_that_do_not_fit_the_file_are_schema_problems(tmp_path, capsys):
    path = write_named(tmp_path / "f.h5", [scored("a")])
    with h5py.File(path, "r+") as f:
        del f["class_names"], f["attribute_names"]
        f.create_dataset("class_names", data=["bg", "a"], dtype=h5py.string_dtype())
        f.create_dataset("attribute_names", data=["x", "x"], dtype=h5py.string_dtype())
    rc, lines = check(capsys, path)
    assert rc == 1
    assert any(re.match(rf"schema: .*f\.h5: 2 class_names for num_classes={CLASSES}", line) for line in lines), lines
    assert any(re.match(r"schema: .*f\.h5: /attribute_names repeats 'x'", line) for line in lines), lines


def test_an_id_list_that_no_longer_matches_its_groups_is_a_problem(tmp_path, capsys):
    """The store opens by /image_ids; an id changed in place after writing makes it wrong."""
    path = write_store(tmp_path / "f.h5", [record("a"), record("b")])
    rc, lines = check(capsys, path)
    assert rc == 0, lines
    with h5py.File(path, "r+") as f:
        f["images"]["b"].attrs["image_id"] = "z"
    rc, lines = check(capsys, path)
    assert rc == 1 and any(line.startswith("schema: ") and "/image_ids does not list the ids" in line for line in lines), lines
