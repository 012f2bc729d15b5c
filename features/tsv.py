"""`vlbert import-tsv`: published bottom-up-attention TSV features -> the vlbert feature schema.

The widely shared COCO / Visual Genome features (LXMERT, UNITER, VisualBERT releases) are TSV
files, one image per line, arrays base64-encoded raw little-endian bytes:

    img_id  img_h  img_w  objects_id  objects_conf  attrs_id  attrs_conf  num_boxes  boxes  features

(objects_id / attrs_id int64, the others float32; boxes [N, 4] x1 y1 x2 y2 pixels; features
[N, D]). The original bottom-up-attention release has six columns:
image_id image_w image_h num_boxes boxes features. The column layout is recognised from the
number of columns, or given with --fields. Detector labels (objects_id) are kept as `labels`
so region classification can use them; the files carry no full class distribution.
"""
from __future__ import annotations

import argparse
import base64
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from vlbert.featstore import FeatureStoreError, FeatureWriter, RegionRecord
from vlbert.features.provenance import run_info

FIELDS_10 = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
             "num_boxes", "boxes", "features")
FIELDS_6 = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
_ALIASES = {"image_id": "img_id", "image_w": "img_w", "image_h": "img_h"}
VG_OBJECT_CLASSES = 1600


class TsvError(ValueError):
    """A TSV line that cannot be read; the message names file and line."""


@dataclass
class TsvRecord:
    image_id: str
    image_w: int
    image_h: int
    boxes: np.ndarray  # [N, 4] float32
    features: np.ndarray  # [N, D] float32
    objects_id: np.ndarray | None = None  # [N] int64
    objects_conf: np.ndarray | None = None  # [N] float32


def _decode(text: str, dtype, count: int, where: str, field: str) -> np.ndarray:
    if text.startswith("b'") and text.endswith("'"):  # str(bytes) written by some Python 3 ports
        text = text[2:-1]
    try:
        raw = base64.b64decode(text, validate=False)
    except ValueError as err:
        raise TsvError(f"{where}: field {field} is not base64 ({err})") from None
    array = np.frombuffer(raw, dtype=dtype)
    if count and array.size % count:
        raise TsvError(f"{where}: field {field} has {array.size} {np.dtype(dtype).name} values, "
                       f"not a multiple of num_boxes={count}")
    return array


def _decode_float(text: str, count: int, width: int | None, where: str, field: str) -> np.ndarray:
    """float32 normally; float64 when the byte count says so (some releases store boxes as float64)."""
    raw_len = len(base64.b64decode(text[2:-1] if text.startswith("b'") else text))
    dtype = np.float32
    if width is not None and count and raw_len == count * width * 8:
        dtype = np.float64
    array = _decode(text, dtype, count, where, field).astype(np.float32)
    return array.reshape(count, -1) if count else array.reshape(0, width or 0)


def read_tsv(path: str | os.PathLike, fields: Sequence[str] | None = None) -> Iterator[TsvRecord]:
    """Stream the records of one TSV file (one line at a time: memory stays flat)."""
    path = Path(path)
    with open(path, "r", encoding="utf-8", newline="") as handle:
        for line_number, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            values = line.split("\t")
            names = fields or (FIELDS_10 if len(values) == 10 else FIELDS_6 if len(values) == 6 else None)
            where = f"{path}:{line_number}"
            if names is None or len(names) != len(values):
                raise TsvError(f"{where}: {len(values)} tab-separated columns; expected 10 ({' '.join(FIELDS_10)}) "
                               f"or 6 ({' '.join(FIELDS_6)}), or name them with --fields")
            row = {_ALIASES.get(n, n): v for n, v in zip(names, values)}
            for required in ("img_id", "img_w", "img_h", "num_boxes", "boxes", "features"):
                if required not in row:
                    raise TsvError(f"{where}: no {required} column in --fields {','.join(names)}")
            try:
                count = int(row["num_boxes"])
                width, height = int(float(row["img_w"])), int(float(row["img_h"]))
            except ValueError:
                raise TsvError(f"{where}: num_boxes / img_w / img_h are not numbers") from None
            boxes = _decode_float(row["boxes"], count, 4, where, "boxes")
            if boxes.shape != (count, 4):
                raise TsvError(f"{where}: boxes have {boxes.size} values, expected num_boxes * 4 = {count * 4}")
            features = _decode_float(row["features"], count, None, where, "features")
            record = TsvRecord(row["img_id"], width, height, boxes, features)
            if row.get("objects_id"):
                record.objects_id = _decode(row["objects_id"], np.int64, count, where, "objects_id").copy()
                if record.objects_id.shape != (count,):
                    raise TsvError(f"{where}: objects_id has {record.objects_id.size} values, expected {count}")
            if row.get("objects_conf"):
                record.objects_conf = _decode(row["objects_conf"], np.float32, count, where, "objects_conf").copy()
            yield record


def import_tsv(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    num_classes: int | None = None,
    dtype: str = "float16",
    model: str = "bottom-up-attention Faster R-CNN (published TSV features)",
    fields: Sequence[str] | None = None,
    overwrite: bool = False,
) -> int:
    """Convert TSV files into one feature file; returns the number of images written."""
    inputs = [Path(p) for p in inputs]
    first = next(read_tsv(inputs[0], fields), None)
    if first is None:
        raise TsvError(f"{inputs[0]} has no records")
    feature_dim = int(first.features.shape[1])
    has_labels = first.objects_id is not None
    if num_classes is None:
        num_classes = VG_OBJECT_CLASSES if has_labels else 0
    provenance = {
        "backend": "import-tsv",
        "model": model,
        "weights": {"source": "published features"},
        "classes": {"num_classes": num_classes, "background_index": None,
                    "labels": "objects_id of the TSV" if has_labels else None},
        "settings": {"fields": list(fields) if fields else "auto", "dtype": dtype},
        "run": run_info(source_files=[p.name for p in inputs]),
    }
    writer = FeatureWriter(output, feature_dim, num_classes, provenance, dtype=dtype, overwrite=overwrite)
    try:
        for path in inputs:
            for record in read_tsv(path, fields):
                where = f"{path}: image {record.image_id!r}"
                if record.features.shape[1:] != (feature_dim,) and record.features.shape[0]:
                    raise TsvError(f"{where}: {record.features.shape[1]}-d features, the first image has {feature_dim}")
                labels = record.objects_id if has_labels else None
                if labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
                    raise TsvError(f"{where}: objects_id {int(labels.max())} outside [0, {num_classes}); "
                                   "set --num-classes")
                features = record.features.reshape(-1, feature_dim)
                writer.add(RegionRecord(record.image_id, features, record.boxes, record.image_w, record.image_h,
                                        labels=labels))
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return writer.count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vlbert import-tsv",
        description="Convert bottom-up-attention TSV features (COCO / VG releases) into a vlbert feature file.",
    )
    parser.add_argument("inputs", nargs="+", help="TSV files")
    parser.add_argument("--output", required=True, help="output .h5 file")
    parser.add_argument("--num-classes", type=int, default=None,
                        help=f"detector object classes (default {VG_OBJECT_CLASSES} when objects_id is present)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--model", default="bottom-up-attention Faster R-CNN (published TSV features)",
                        help="what produced the features, recorded in provenance")
    parser.add_argument("--fields", help="comma-separated column names when the layout is not the usual one")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    fields = args.fields.split(",") if args.fields else None
    try:
        count = import_tsv(args.inputs, args.output, args.num_classes, args.dtype, args.model, fields, args.overwrite)
    except (TsvError, FeatureStoreError, FileExistsError, OSError) as err:
        print(f"vlbert import-tsv: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.output}: {count} images", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
