"""`vlbert import-tsv`: published bottom-up-attention TSV features -> the vlbert feature schema.

The widely shared COCO / Visual Genome features (LXMERT, UNITER, VisualBERT releases) are TSV
files, one image per line, arrays base64-encoded raw little-endian bytes:

    img_id  img_h  img_w  objects_id  objects_conf  attrs_id  attrs_conf  num_boxes  boxes  features

(objects_id / attrs_id int64, the others float32; boxes [N, 4] x1 y1 x2 y2 pixels; features
[N, D]). The original bottom-up-attention release has six columns:
image_id image_w image_h num_boxes boxes features. The column layout is recognised from the
number of columns, or given with --fields. Detector labels (objects_id) are kept as `labels`
so region classification can use them, objects_conf as `scores`, attrs_id / attrs_conf as
`attributes` / `attribute_scores`; the files carry no full class distribution and no class names
(`--class-names objects_vocab.txt` stores them).

The writers of these files used Python's csv module (csv.DictWriter, delimiter '\t'), which
quotes a field holding a tab, a double quote or a line break (an odd image id); lines are read
back with the csv module so such ids survive. Other formats: `--format vinvl` (features/vinvl.py)
and `--format uniter-lmdb` (features/lmdb_import.py).
"""
from __future__ import annotations

import argparse
import base64
import csv
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from vlbert.featstore import FeatureStoreError, FeatureWriter, RegionRecord
from vlbert.features.lmdb_import import import_uniter_lmdb
from vlbert.features.names import fitted, names_provenance, read_unique_names
from vlbert.features.provenance import run_info
from vlbert.features.published import NOMINAL_SIZE, TsvError, load_image_sizes
from vlbert.features.vinvl import import_vinvl

FIELDS_10 = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf",
             "num_boxes", "boxes", "features")
FIELDS_6 = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
_ALIASES = {"image_id": "img_id", "image_w": "img_w", "image_h": "img_h"}
VG_OBJECT_CLASSES = 1600
FORMATS = ("bottom-up", "vinvl", "uniter-lmdb")
# A base64 features field of 100 boxes x 2048 float32 is ~1.1 MB, beyond csv's default 128 KiB field limit.
FIELD_SIZE_LIMIT = 1 << 30


@dataclass
class TsvRecord:
    image_id: str
    image_w: int
    image_h: int
    boxes: np.ndarray  # [N, 4] float32
    features: np.ndarray  # [N, D] float32
    objects_id: np.ndarray | None = None  # [N] int64
    objects_conf: np.ndarray | None = None  # [N] float32
    attrs_id: np.ndarray | None = None  # [N] int64
    attrs_conf: np.ndarray | None = None  # [N] float32
    line_number: int = 0  # where in its file the record is, for messages


def _base64(text: str, where: str, field: str) -> bytes:
    if text.startswith("b'") and text.endswith("'"):  # str(bytes) written by some Python 3 ports
        text = text[2:-1]
    try:
        return base64.b64decode(text, validate=False)
    except ValueError as err:  # binascii.Error: bad padding, a truncated line
        raise TsvError(f"{where}: field {field} is not valid base64 ({err}); the line is damaged: "
                       "re-download the file or drop the line") from None


def _array(raw: bytes, dtype, count: int, where: str, field: str) -> np.ndarray:
    """The values of a decoded field, refused unless they split into num_boxes rows."""
    dtype = np.dtype(dtype)
    if len(raw) % dtype.itemsize:
        raise TsvError(f"{where}: field {field} has {len(raw)} bytes, not a whole number of {dtype.name} values")
    array = np.frombuffer(raw, dtype=dtype)
    if (count and array.size % count) or (not count and array.size):
        raise TsvError(f"{where}: field {field} has {array.size} {dtype.name} values, "
                       f"not a multiple of num_boxes={count}")
    return array


def _decode(text: str, dtype, count: int, where: str, field: str) -> np.ndarray:
    return _array(_base64(text, where, field), dtype, count, where, field)


def _decode_float(text: str, count: int, width: int | None, where: str, field: str) -> np.ndarray:
    """float32 normally; float64 when the byte count says so (some releases store boxes as float64)."""
    raw = _base64(text, where, field)
    dtype = np.float32
    if width is not None and count and len(raw) == count * width * 8:
        dtype = np.float64
    array = _array(raw, dtype, count, where, field).astype(np.float32)
    return array.reshape(count, -1) if count else array.reshape(0, width or 0)


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number where the row starts, fields) of each non-empty row of a TSV written with
    csv.DictWriter(delimiter='\t'); a file that is not UTF-8 text, or badly quoted, is refused
    naming the line."""
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_SIZE_LIMIT))
    with open(path, "r", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quotechar='"', strict=True)
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as err:  # decoded in blocks: the bad byte is at or after this line
                raise TsvError(f"{path}:{start}: not UTF-8 text ({err.reason}); is this a TSV feature file?") from None
            except csv.Error as err:
                raise TsvError(f"{path}:{start}: badly quoted field ({err}); the line is damaged: "
                               "re-download the file or drop the line") from None
            if fields:
                yield start, fields


def _sizes(row: dict, where: str) -> tuple[int, int, int]:
    """num_boxes, img_w, img_h of a row."""
    try:
        count = int(row["num_boxes"])
        width, height = int(float(row["img_w"])), int(float(row["img_h"]))
    except (ValueError, OverflowError):
        raise TsvError(f"{where}: num_boxes / img_w / img_h ({row['num_boxes']!r}, {row['img_w']!r}, "
                       f"{row['img_h']!r}) are not numbers") from None
    if count < 0:
        raise TsvError(f"{where}: num_boxes is {count}, negative")
    return count, width, height


def _optional(row: dict, field: str, dtype, count: int, where: str) -> np.ndarray | None:
    """An optional per-box column (objects_id, objects_conf): [num_boxes] values, or None."""
    if not row.get(field):
        return None
    values = _decode(row[field], dtype, count, where, field).copy()
    if values.shape != (count,):
        raise TsvError(f"{where}: {field} has {values.size} values, expected num_boxes = {count}")
    return values


def parse_line(values: Sequence[str], fields: Sequence[str] | None, where: str) -> TsvRecord:
    """One TSV line's record; every malformed field is a TsvError naming `where` (file:line)."""
    names = fields or (FIELDS_10 if len(values) == 10 else FIELDS_6 if len(values) == 6 else None)
    if names is None or len(names) != len(values):
        raise TsvError(f"{where}: {len(values)} tab-separated columns; expected 10 ({' '.join(FIELDS_10)}) "
                       f"or 6 ({' '.join(FIELDS_6)}), or name them with --fields")
    row = {_ALIASES.get(n, n): v for n, v in zip(names, values)}
    for required in ("img_id", "img_w", "img_h", "num_boxes", "boxes", "features"):
        if required not in row:
            raise TsvError(f"{where}: no {required} column in --fields {','.join(names)}")
    count, width, height = _sizes(row, where)
    boxes = _decode_float(row["boxes"], count, 4, where, "boxes")
    if boxes.shape != (count, 4):
        raise TsvError(f"{where}: boxes have {boxes.size} values, expected num_boxes * 4 = {count * 4}")
    features = _decode_float(row["features"], count, None, where, "features")
    return TsvRecord(row["img_id"], width, height, boxes, features,
                     objects_id=_optional(row, "objects_id", np.int64, count, where),
                     objects_conf=_optional(row, "objects_conf", np.float32, count, where),
                     attrs_id=_optional(row, "attrs_id", np.int64, count, where),
                     attrs_conf=_optional(row, "attrs_conf", np.float32, count, where))


def read_tsv(path: str | os.PathLike, fields: Sequence[str] | None = None) -> Iterator[TsvRecord]:
    """Stream the records of one TSV file (one line at a time: memory stays flat)."""
    path = Path(path)
    for line_number, values in _rows(path):
        record = parse_line(values, fields, f"{path}:{line_number}")
        record.line_number = line_number
        yield record


def import_tsv(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    num_classes: int | None = None,
    dtype: str = "float16",
    model: str = "bottom-up-attention Faster R-CNN (published TSV features)",
    fields: Sequence[str] | None = None,
    overwrite: bool = False,
    class_names: str | os.PathLike | None = None,
) -> int:
    """Convert TSV files into one feature file; returns the number of images written. `class_names`:
    the detector's vocabulary file, checked before any input is read."""
    inputs = [Path(p) for p in inputs]
    if class_names is not None and num_classes is None:
        num_classes = VG_OBJECT_CLASSES
    names = _class_names(class_names, num_classes) if class_names is not None else None
    first = next(read_tsv(inputs[0], fields), None)
    if first is None:
        raise TsvError(f"{inputs[0]} has no records")
    feature_dim = int(first.features.shape[1])
    has_labels = first.objects_id is not None
    if names is not None and not has_labels:
        raise TsvError(f"--class-names {class_names}: {inputs[0]} has no objects_id column, so there are no "
                       "labels to name; drop --class-names")
    if num_classes is None:
        num_classes = VG_OBJECT_CLASSES if has_labels else 0
    provenance = {
        "backend": "import-tsv",
        "model": model,
        "weights": {"source": "published features"},
        "classes": {"num_classes": num_classes, "background_index": None,
                    "labels": "objects_id of the TSV" if has_labels else None,
                    "scores": "objects_conf of the TSV" if first.objects_conf is not None else None,
                    "attributes": "attrs_id / attrs_conf of the TSV" if first.attrs_id is not None else None},
        "settings": {"fields": list(fields) if fields else "auto", "dtype": dtype},
        "run": run_info(source_files=[p.name for p in inputs]),
    }
    if names is not None:
        provenance["classes"]["names"] = names_provenance(class_names)
    writer = FeatureWriter(output, feature_dim, num_classes, provenance, dtype=dtype, overwrite=overwrite,
                           class_names=names)
    try:
        for path in inputs:
            for record in read_tsv(path, fields):
                line = f"{path}:{record.line_number}"
                where = f"{line}: image {record.image_id!r}"
                if record.features.shape[1:] != (feature_dim,) and record.features.shape[0]:
                    raise TsvError(f"{where}: {record.features.shape[1]}-d features, the first image has {feature_dim}")
                labels = record.objects_id if has_labels else None
                if labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
                    raise TsvError(f"{where}: objects_id {int(labels.max())} outside [0, {num_classes}); "
                                   "set --num-classes")
                features = record.features.reshape(-1, feature_dim)
                try:
                    writer.add(RegionRecord(record.image_id, features, record.boxes, record.image_w, record.image_h,
                                            labels=labels, scores=record.objects_conf, attributes=record.attrs_id,
                                            attribute_scores=record.attrs_conf))
                except FeatureStoreError as err:  # NaN values, a repeated id, a size <= 0: same kind, with the line
                    raise type(err)(f"{line}: {err}") from None
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return writer.count


def _class_names(path: str | os.PathLike, num_classes: int) -> list[str]:
    """The names of objects_id 0..num_classes-1: bottom-up TSVs number the object classes without the
    background (generate_tsv.py takes the argmax over the classes after it), so none is added."""
    names = read_unique_names(path, "--class-names", TsvError)
    fix = (f"give the detector's {num_classes} object names in objects_id order (bottom-up-attention's "
           "objects_vocab.txt for its VG model), or set --num-classes to the number of names")
    return fitted(names, num_classes, None, path, "--class-names", TsvError, fix)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vlbert import-tsv",
        description="Convert published region features into a vlbert feature file: bottom-up-attention / LXMERT "
                    "TSV (default), VinVL TSV (--format vinvl) or a UNITER LMDB (--format uniter-lmdb).",
    )
    parser.add_argument("inputs", nargs="+", help="TSV files; VinVL: its features TSV; uniter-lmdb: the LMDB folder")
    parser.add_argument("--output", required=True, help="output .h5 file")
    parser.add_argument("--format", choices=FORMATS, default="bottom-up",
                        help="bottom-up: 10- or 6-column TSV (LXMERT, VisualBERT, the bottom-up release)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help=f"detector object classes (default {VG_OBJECT_CLASSES} when objects_id is present)")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--model", default=None, help="what produced the features, recorded in provenance")
    parser.add_argument("--fields", help="comma-separated column names when the layout is not the usual one")
    parser.add_argument("--predictions", help="vinvl: the predictions.tsv / label.tsv of the features")
    parser.add_argument("--labelmap", help="vinvl: the detector's labelmap JSON (label_to_idx, attribute_to_idx)")
    parser.add_argument("--class-names", metavar="FILE", help="bottom-up, uniter-lmdb: the detector's class names, a UTF-8 text "
                                              "file, one per line in class-id order (bottom-up-attention's "
                                              "objects_vocab.txt), stored as the file's class_names")
    parser.add_argument("--image-sizes", help="vinvl, uniter-lmdb: image sizes, a JSON {id: [w, h]} or VinVL's "
                                              f"hw.tsv (default: from the predictions, else {NOMINAL_SIZE}x{NOMINAL_SIZE})")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        count = _run(args)
    except (TsvError, FeatureStoreError, FileExistsError, OSError) as err:
        print(f"vlbert import-tsv: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.output}: {count} images", file=sys.stderr)
    return 0


def _run(args: argparse.Namespace) -> int:
    """Dispatch to the importer of args.format, refusing options that do not apply to it."""
    if args.format != "vinvl" and (args.predictions or args.labelmap):
        raise TsvError("--predictions and --labelmap are for --format vinvl")
    if args.format == "vinvl" and args.class_names:
        raise TsvError(f"--class-names {args.class_names} is for --format bottom-up and uniter-lmdb; "
                       "--format vinvl takes the detector's labelmap JSON: --labelmap FILE")
    if args.format != "bottom-up" and (args.fields or args.num_classes is not None):
        raise TsvError(f"--fields and --num-classes are for --format bottom-up; {args.format} files say their own")
    if args.format == "bottom-up" and args.image_sizes:
        raise TsvError("--image-sizes is for --format vinvl and uniter-lmdb: bottom-up TSVs store the image size")
    if args.format != "bottom-up" and len(args.inputs) != 1:
        raise TsvError(f"--format {args.format} reads one input, got {len(args.inputs)}")
    sizes = load_image_sizes(args.image_sizes) if args.image_sizes else None
    model = {"model": args.model} if args.model else {}
    if args.format == "vinvl":
        return import_vinvl(args.inputs[0], args.output, args.predictions, args.labelmap, sizes, args.dtype,
                            overwrite=args.overwrite, **model)
    if args.format == "uniter-lmdb":
        return import_uniter_lmdb(args.inputs[0], args.output, sizes, args.dtype, overwrite=args.overwrite,
                                  class_names=args.class_names, **model)
    fields = args.fields.split(",") if args.fields else None
    return import_tsv(args.inputs, args.output, args.num_classes, args.dtype,
                      args.model or "bottom-up-attention Faster R-CNN (published TSV features)", fields, args.overwrite,
                      class_names=args.class_names)


if __name__ == "__main__":
    sys.exit(main())
