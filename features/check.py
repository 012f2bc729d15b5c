"""`vlbert check-features`: scan a feature store and report every problem, one line each.

Training refuses a bad record only when it reads it, possibly hours in; this command reads every
image once (through h5py, so it also sees what the store would refuse) and lists everything at
once: the file schema (with the class / attribute names of version 2), each image's attributes and
arrays (shapes and dtypes against the file's feature_dim / num_classes, label and attribute ids
against the names), NaN or Inf values, boxes outside the image or inverted, images without
regions, image ids stored twice, and ids of an annotation file the store lacks. Links to other
files and external storage are read correctly and reported as notes.

Exit status: 0 no problems (notes allowed), 1 problems found, 2 unusable input (a file that is
missing, not HDF5 or not a vlbert feature file).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from vlbert.errors import InputError
from vlbert.featindex import IDS_DATASET
from vlbert.featstore import (FLOAT_ARRAYS, SCHEMA, SCHEMA_VERSION, FeatureStoreError, all_finite, expand_paths,
                              names_difference, open_hdf5, read_names)

# Problem kinds, in the order the report lists them; NOTES are reported but are not problems.
KINDS = ("unreadable", "schema", "shards", "broken", "non-finite", "boxes", "empty", "duplicate", "missing-id")
NOTES = ("link", "external", "dtype")
FIXES = {
    "unreadable": "re-extract the file or point to the right one",
    "schema": "the file was not written by vlbert or was edited since: re-extract (vlbert extract) or re-import "
              "(vlbert import-tsv) it",
    "shards": "use the shards of one extraction (same detector and settings) together",
    "broken": "restore the linked or external files, or re-extract these images",
    "non-finite": "training refuses these images: re-extract them or drop them from the annotations",
    "boxes": "region locations feed the model: re-extract these images (extraction clips boxes to the image)",
    "empty": "the model would see no region of these images: re-extract them (min_boxes >= 1) or drop them",
    "duplicate": "a store holds each image once: delete one copy (the shards overlap)",
    "missing-id": "extract features for these images (vlbert extract) or drop them from the annotations",
}
BOX_TOLERANCE = 1.0  # pixels: extraction clips boxes to the image; imports may round outwards a little


@dataclass
class Report:
    """Findings by kind: the first `cap` lines of each kind are kept, all are counted."""

    cap: int = 20
    files: int = 0
    images: int = 0
    lines: dict[str, list[str]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, line: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        kept = self.lines.setdefault(kind, [])
        if not self.cap or len(kept) < self.cap:
            kept.append(line)

    def problems(self) -> dict[str, int]:
        return {kind: self.counts[kind] for kind in KINDS if kind in self.counts}

    def notes(self) -> dict[str, int]:
        return {kind: self.counts[kind] for kind in NOTES if kind in self.counts}

    def exit_status(self) -> int:
        return 2 if "unreadable" in self.counts else 1 if self.problems() else 0

    def render(self) -> list[str]:
        """One line per finding (capped per kind, with a count of the rest) and how to fix that
        kind, then the summary."""
        out = []
        for kind in KINDS + NOTES:
            if kind not in self.counts:
                continue
            label = "note" if kind in NOTES else "problem"
            out += [f"{kind}: {line}" for line in self.lines[kind]]
            hidden = self.counts[kind] - len(self.lines[kind])
            if hidden:
                out.append(f"{kind}: ... and {hidden} more {kind} {label}s (--max-per-kind 0 lists all)")
            if kind in FIXES:
                out.append(f"{kind}: to fix: {FIXES[kind]}")
        out.append(self.summary())
        return out

    def summary(self) -> str:
        def listed(counts: dict[str, int]) -> str:
            return ", ".join(f"{kind} {count}" for kind, count in counts.items())

        problems, notes = self.problems(), self.notes()
        text = f"checked {self.files} file(s), {self.images} image(s): "
        text += f"{sum(problems.values())} problem(s) ({listed(problems)})" if problems else "no problems"
        if notes:
            text += f"; {sum(notes.values())} note(s) ({listed(notes)})"
        return text


@dataclass
class Dims:
    """What every image of a file must agree with."""

    feature_dim: int
    num_classes: int
    dtype: str
    class_names: list[str] | None = None
    attribute_names: list[str] | None = None


# ----------------------------------------------------------------------------------------- files


def _integer_attribute(attrs, name: str, path: Path, report: Report) -> int | None:
    if name not in attrs:
        report.add("schema", f"{path}: no {name} attribute")
        return None
    try:
        return int(attrs[name])
    except (TypeError, ValueError):
        report.add("schema", f"{path}: {name}={attrs[name]!r} is not an integer")
        return None


def check_header(f: h5py.File, path: Path, report: Report) -> Dims | None:
    """The file's dimensions, reporting every schema problem of its root; None when its images
    cannot be checked (no dimensions, no /images group)."""
    attrs = f.attrs
    if attrs.get("schema") != SCHEMA:
        report.add("unreadable", f"{path}: not a vlbert region-feature file (no schema={SCHEMA!r} attribute)")
        return None
    version = _integer_attribute(attrs, "schema_version", path, report)
    if version is not None and not 1 <= version <= SCHEMA_VERSION:
        report.add("schema", f"{path}: schema version {version}; this vlbert reads 1 to {SCHEMA_VERSION}")
    feature_dim = _integer_attribute(attrs, "feature_dim", path, report)
    num_classes = _integer_attribute(attrs, "num_classes", path, report)
    if feature_dim is not None and feature_dim <= 0:
        report.add("schema", f"{path}: feature_dim={feature_dim} is not positive")
        feature_dim = None
    if num_classes is not None and num_classes < 0:
        report.add("schema", f"{path}: num_classes={num_classes} is negative")
        num_classes = None
    dtype = str(attrs.get("dtype", "float32"))
    if dtype not in ("float16", "float32"):
        report.add("schema", f"{path}: dtype attribute {dtype!r} is neither float16 nor float32")
    try:
        json.loads(attrs.get("provenance", "{}"))
    except (TypeError, ValueError) as err:
        report.add("schema", f"{path}: the provenance attribute is not JSON ({err})")
    if f.id.links.exists(b"images") and f.id.links.get_info(b"images").type != h5py.h5l.TYPE_HARD:
        report.add("link", f"{path}: /images is {_link_text(f, 'images')}")
    if not isinstance(f.get("images"), h5py.Group):
        report.add("schema", f"{path}: no readable /images group")
        return None
    if feature_dim is None or num_classes is None:
        return None
    class_names, attribute_names = (_checked_names(f, name, path, report) for name in ("class_names", "attribute_names"))
    if class_names is not None and len(class_names) != num_classes:
        report.add("schema", f"{path}: {len(class_names)} class_names for num_classes={num_classes}")
    return Dims(feature_dim, num_classes, dtype, class_names, attribute_names)


def _checked_names(f: h5py.File, name: str, path: Path, report: Report) -> list[str] | None:
    """The file's /class_names or /attribute_names, reporting one that is unreadable or repeats a name."""
    try:
        names = read_names(f, name, path)
    except FeatureStoreError as err:
        report.add("schema", str(err))
        return None
    if names is not None and len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        report.add("schema", f"{path}: /{name} repeats {', '.join(map(repr, repeated[:5]))}")
    return names


def _link_text(group: h5py.Group, name: str) -> str:
    link = group.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        return f"an external link to {link.filename}:{link.path}"
    if isinstance(link, h5py.SoftLink):
        return f"a soft link to {link.path}"
    return "a link"


def check_shards(path: Path, dims: Dims, first: tuple[Path, Dims], report: Report) -> None:
    """Shards of one store must agree on the dimensions; float16 and float32 shards may be mixed."""
    first_path, first_dims = first
    for name in ("feature_dim", "num_classes"):
        if getattr(dims, name) != getattr(first_dims, name):
            report.add("shards", f"{path} has {name}={getattr(dims, name)} but {first_path} has "
                                 f"{getattr(first_dims, name)}: they cannot be read as one store")
    for name in ("class_names", "attribute_names"):
        if getattr(dims, name) != getattr(first_dims, name):
            report.add("shards", f"{path} and {first_path} have different {name} "
                                 f"({names_difference(getattr(first_dims, name), getattr(dims, name))}): "
                                 "they come from different detectors")
    if dims.dtype != first_dims.dtype:
        report.add("dtype", f"{path} stores {dims.dtype} features, {first_path} {first_dims.dtype}: readable "
                            "together, but `vlbert merge-features` needs one dtype")


# ----------------------------------------------------------------------------------------- images


def _rows(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask)
    shown = ", ".join(map(str, rows[:5].tolist())) + (", ..." if len(rows) > 5 else "")
    return f"{len(rows)} of {len(mask)} rows ({'row' if len(rows) == 1 else 'rows'} {shown})"


def check_values(where: str, name: str, array: np.ndarray, report: Report) -> bool:
    """Report NaN / Inf in an array; True when all values are finite."""
    if all_finite(array):
        return True
    bad = ~np.isfinite(array.reshape(len(array), -1).astype(np.float32)).all(axis=1)
    report.add("non-finite", f"{where}: {name} hold NaN or Inf in {_rows(bad)}")
    return False


def check_boxes(where: str, boxes: np.ndarray, width: int, height: int, report: Report) -> None:
    """Report inverted boxes (x2 < x1 or y2 < y1) and boxes reaching outside the image."""
    x1, y1, x2, y2 = boxes.astype(np.float64).T
    inverted = (x2 < x1) | (y2 < y1)
    if inverted.any():
        report.add("boxes", f"{where}: x2 < x1 or y2 < y1 in {_rows(inverted)}")
    t = BOX_TOLERANCE
    outside = (x1 < -t) | (y1 < -t) | (x2 > width + t) | (y2 > height + t)
    if outside.any():
        report.add("boxes", f"{where}: boxes outside the {width}x{height} image in {_rows(outside)}")


def _expected_shapes(n: int, dims: Dims) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, numpy dtype kinds allowed)."""
    return {"features": ((n, dims.feature_dim), "f"), "boxes": ((n, 4), "f"),
            "class_probs": ((n, dims.num_classes), "f"), "labels": ((n,), "iu"),
            "scores": ((n,), "f"), "attributes": ((n,), "iu"), "attribute_scores": ((n,), "f")}


def _size_attribute(group: h5py.Group, name: str, where: str, report: Report) -> int | None:
    value = group.attrs.get(name)
    try:
        number = int(np.asarray(value).reshape(-1)[0]) if value is not None else None
    except (TypeError, ValueError, IndexError):
        number = None
    if number is None or number < (0 if name == "num_boxes" else 1):
        report.add("schema", f"{where}: attribute {name}={value!r} is missing or not a valid size")
        return None
    return number


def check_arrays(group: h5py.Group, where: str, dims: Dims, report: Report) -> dict[str, h5py.Dataset] | None:
    """The image's datasets when their shapes and dtypes fit the file and each other; else None."""
    datasets, ok = {}, True
    for name in _expected_shapes(0, dims):
        if name not in group:
            if name in ("features", "boxes"):
                report.add("schema", f"{where}: no {name} array")
                ok = False
            continue
        dataset = group[name]
        if not isinstance(dataset, h5py.Dataset):
            report.add("schema", f"{where}: {name} is not an array")
            ok = False
            continue
        if group.id.links.get_info(name.encode()).type != h5py.h5l.TYPE_HARD:
            report.add("link", f"{where}: {name} is {_link_text(group, name)}")
        if dataset.id.get_create_plist().get_external_count():
            report.add("external", f"{where}: {name} is stored in external file(s)")
        datasets[name] = dataset
    if "features" not in datasets:
        return None
    if "attribute_scores" in datasets and "attributes" not in datasets:
        report.add("schema", f"{where}: attribute_scores without attributes")
    n = datasets["features"].shape[0] if datasets["features"].ndim else -1
    for name, dataset in datasets.items():
        shape, kinds = _expected_shapes(n, dims)[name]
        if name == "class_probs" and dims.num_classes == 0:
            report.add("schema", f"{where}: class_probs present but the file has num_classes=0")
            ok = False
        elif dataset.shape != shape:
            report.add("schema", f"{where}: {name} have shape {list(dataset.shape)}, expected {list(shape)}")
            ok = False
        if dataset.dtype.kind not in kinds or (name == "features" and dataset.dtype not in (np.float16, np.float32)):
            report.add("schema", f"{where}: {name} have dtype {dataset.dtype}")
            ok = False
    return datasets if ok else None


def check_image(images: h5py.Group, key: str, path: Path, dims: Dims, report: Report) -> str | None:
    """Check one image group, reporting what is wrong; returns its image id (None: unopenable)."""
    if images.id.links.get_info(key.encode()).type != h5py.h5l.TYPE_HARD:
        report.add("link", f"{path}: image group {key!r} is {_link_text(images, key)}")
    try:
        group = images[key]
        image_id = str(group.attrs.get("image_id", key))
    except (KeyError, OSError) as err:
        report.add("broken", f"{path}: image group {key!r} cannot be opened ({err})")
        return None
    where = f"{path}: image {image_id!r}"
    if "image_id" not in group.attrs:
        report.add("schema", f"{where}: no image_id attribute (the group name is used)")
    try:
        check_record(group, where, dims, report)
    except (KeyError, OSError) as err:  # a linked dataset or external storage whose file is gone
        report.add("broken", f"{where}: its arrays cannot be read ({err})")
    return image_id


def check_record(group: h5py.Group, where: str, dims: Dims, report: Report) -> None:
    """Check one image's attributes, arrays and values."""
    width, height = (_size_attribute(group, name, where, report) for name in ("image_w", "image_h"))
    num_boxes = _size_attribute(group, "num_boxes", where, report)
    datasets = check_arrays(group, where, dims, report)
    if datasets is None:
        return
    n = datasets["features"].shape[0]
    if num_boxes is not None and num_boxes != n:
        report.add("schema", f"{where}: attribute num_boxes={num_boxes} but features have {n} rows")
    if n == 0:
        report.add("empty", f"{where}: no regions (num_boxes 0)")
        return
    arrays = {name: datasets[name][()] for name in FLOAT_ARRAYS if name in datasets}
    finite = {name: check_values(where, name, array, report) for name, array in arrays.items()}
    if finite["boxes"] and width and height:
        check_boxes(where, arrays["boxes"], width, height, report)
    check_ids(where, "labels", datasets.get("labels"), dims.num_classes, 0, "num_classes", report)
    check_ids(where, "attributes", datasets.get("attributes"), len(dims.attribute_names or ()), -1,
              "the attribute_names", report)


def check_ids(where: str, name: str, dataset: h5py.Dataset | None, count: int, lowest: int, what: str,
              report: Report) -> None:
    """Report label / attribute ids outside [lowest, count) of the file (count 0: unknown, unchecked):
    a classification head indexed by them would fail or learn the wrong class."""
    if dataset is None or not count:
        return
    ids = dataset[()]
    outside = (ids < lowest) | (ids >= count)
    if outside.any():
        report.add("schema", f"{where}: {name} outside [{lowest}, {count}) of {what} in {_rows(outside)}")


# ----------------------------------------------------------------------------------------- store


def check_file(path: Path, report: Report, owners: dict[str, tuple[Path, str]],
               first: list[tuple[Path, Dims]], progress: bool) -> None:
    """Check one file; image ids seen go into `owners` (id -> file, group) to find duplicates."""
    try:
        f = open_hdf5(path)
    except FeatureStoreError as err:
        report.add("unreadable", str(err))
        return
    with f:
        report.files += 1
        dims = check_header(f, path, report)
        if dims is None:
            return
        if first:
            check_shards(path, dims, first[0], report)
        else:
            first.append((path, dims))
        images = f["images"]
        seen: list[str] = []
        for key in images:
            image_id = check_image(images, key, path, dims, report)
            if image_id is not None:
                seen.append(image_id)
            report.images += 1
            if progress and report.images % 1000 == 0:
                print(f"\r{path.name}: {report.images} images checked", end="", file=sys.stderr, flush=True)
            if image_id is None:
                continue
            if image_id in owners:
                other, other_key = owners[image_id]
                if other == path:
                    report.add("duplicate", f"image id {image_id!r} is twice in {path} (groups {other_key!r} and {key!r})")
                else:
                    report.add("duplicate", f"image id {image_id!r} is in both {other} and {path}")
            else:
                owners[image_id] = (path, key)
        check_id_list(f, path, seen, report)


def check_id_list(f, path: Path, seen: list[str], report: "Report") -> None:
    """The file's /image_ids, when a store opens by it (one entry per image group), must name
    exactly the ids of its groups."""
    stored = f.get(IDS_DATASET)
    if not isinstance(stored, h5py.Dataset) or stored.dtype.kind != "S" or stored.ndim != 1 or len(stored) != len(f["images"]):
        return  # a store opens such a file group by group, as one without the list
    if sorted(i.decode("utf-8", "replace") for i in stored[()]) != sorted(seen):
        report.add("schema", f"{path}: /{IDS_DATASET} does not list the ids of its image groups (was the file changed "
                             "after it was written?); a store would read by the list: rewrite it with `vlbert merge-features`")


def load_ids(path: str | os.PathLike, image_id_format: str = "{image_id}") -> list[str]:
    """Image ids an annotation file needs: a .jsonl of objects with image_id (vlbert's annotations),
    a .json list of such objects or COCO-style {"annotations": [...]}, else one id per line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--ids file {path} does not exist")
    raw: list = []
    if path.suffix in (".jsonl", ".json"):
        rows = _json_rows(path)
        for where, row in rows:
            if not isinstance(row, dict) or "image_id" not in row:
                raise InputError(f"{where}: expected a JSON object with an image_id field")
            raw.append(row["image_id"])
    else:
        raw = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    try:
        return [image_id_format.format(image_id=image_id) for image_id in raw]
    except (ValueError, KeyError, IndexError) as err:
        raise InputError(f"--image-id-format {image_id_format!r} cannot format the ids of {path}: {err}") from None


def _json_rows(path: Path) -> list[tuple[str, object]]:
    try:
        if path.suffix == ".jsonl":
            return [(f"{path}:{number}", json.loads(line))
                    for number, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON ({err}); give a .jsonl, a .json or a text file of ids") from None
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        data = data["annotations"]
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a list of objects with image_id, or {{\"annotations\": [...]}}")
    return [(f"{path}: entry {index}", row) for index, row in enumerate(data)]


def check_store(paths: Sequence[str | os.PathLike], ids: Sequence[str] = (), ids_source: str = "--ids",
                cap: int = 20, progress: bool = False) -> Report:
    """Check files (or folders of *.h5 shards) as one store; `ids` are ids that must be in it."""
    report = Report(cap=cap)
    owners: dict[str, tuple[Path, str]] = {}
    first: list[tuple[Path, Dims]] = []
    for path in expand_paths(paths):
        check_file(path, report, owners, first, progress)
    if progress and report.images >= 1000:
        print(file=sys.stderr)
    for image_id in dict.fromkeys(map(str, ids)):
        if image_id not in owners:
            report.add("missing-id", f"image id {image_id!r} of {ids_source} has no features in the store")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vlbert check-features",
        description="Scan a feature store (files, shards or folders of *.h5) and report every problem, one "
                    "line each, then a summary. Exit 0: no problems; 1: problems; 2: unusable input.",
    )
    parser.add_argument("paths", nargs="+", metavar="FILE", help="feature .h5 files or folders of them")
    parser.add_argument("--ids", help="ids the store must hold: annotations .jsonl / .json (image_id fields) "
                                      "or a text file, one id per line")
    parser.add_argument("--image-id-format", default="{image_id}",
                        help="maps the --ids file's ids to store ids, e.g. 'COCO_train2014_{image_id:012d}'")
    parser.add_argument("--max-per-kind", type=int, default=20, help="lines shown per kind of problem (0: all)")
    args = parser.parse_args(argv)
    ids = load_ids(args.ids, args.image_id_format) if args.ids else []
    report = check_store(args.paths, ids, str(args.ids), args.max_per_kind, progress=sys.stderr.isatty())
    for line in report.render():
        print(line)
    return report.exit_status()


if __name__ == "__main__":
    sys.exit(main())
