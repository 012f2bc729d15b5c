"""`vlbert import-tsv --format vinvl`: VinVL / Oscar+ region features -> the vlbert feature schema.

VinVL's released features (X152-C4 detector, github.com/microsoft/scene_graph_benchmark) come as
a features TSV, one image per line, in one of three layouts:

    image_key  base64(float32 [N, 2054])
    image_key  {"num_boxes": N, "features": "<base64 float32 [N, W]>"}     (Oscar's task data)
    image_key  N  base64(float32 [N, W])                                 (the COCO image_features)

Each row is the region feature (W - 6 = 2048 values) followed by 6 box values: x1/w, y1/h, x2/w,
y2/h of the box (clipped to [0, 1]), then its width and height over the image's (some converters
wrote height first: both orders are recognised from the values). The predictions TSV
(`predictions.tsv` of scene_graph_benchmark or Oscar's `label.tsv`) has per image
``{"image_h", "image_w", "objects": [{"class", "conf", "rect", "attributes", "attr_scores"}]}``
(or the list of objects alone), boxes `rect` in pixels. A `<name>.lineidx` file beside a TSV (one
byte offset per line, as VinVL's TSVFile writes it) is used to find an image's line without
reading the file through.

What is stored: features [N, W - 6]; boxes from `rect` (checked against the 6 box values) or,
without predictions, the box values times the image size; labels / scores from `class` / `conf`;
attributes / attribute_scores: the highest-scoring attribute of each box (-1 and 0 when it has
none). class_names / attribute_names are VinVL's labelmap (`--labelmap`, e.g.
VG-SGG-dicts-vgoi6-clipped.json: ids as the detector numbers them, 0 = background /
no attribute) or, without it, the names seen in the predictions, sorted: sorted rather than in
first-seen order so that two splits holding the same classes get the same ids. Image sizes come
from the predictions, else `--image-sizes`, else (features only) a nominal 1024 x 1024, on which
the stored boxes give back the normalised box values exactly (1024 is a power of two).
"""
from __future__ import annotations

import ast
import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from vlbert.featstore import FeatureStoreError, FeatureWriter, RegionRecord
from vlbert.features.provenance import run_info
from vlbert.features.published import NOMINAL_SIZE, TsvError, image_size

BOX_COLUMNS = 6
DEFAULT_WIDTH = 2048 + BOX_COLUMNS
BOX_TOLERANCE = 1e-4  # normalised units: the box values are float32 divisions of the rect
RECT_TOLERANCE = 1.0  # pixels between a prediction's rect and the features' box values


@dataclass
class Prediction:
    """One predictions line: per object its class name, confidence, rect [x1 y1 x2 y2] pixels and
    attribute names with their scores."""

    image_w: int | None
    image_h: int | None
    classes: list[str]
    scores: np.ndarray  # [N] float32
    rects: np.ndarray  # [N, 4] float32
    attributes: list[list[str]]
    attribute_scores: list[list[float]]


# ----------------------------------------------------------------------------------- TSV access


def read_lineidx(tsv: Path) -> list[int] | None:
    """Byte offsets of each line of `tsv` from its `.lineidx` file (VinVL's naming: the TSV's stem
    + .lineidx), or None when there is none."""
    index = tsv.with_suffix(".lineidx")
    if not index.is_file():
        return None
    try:
        return [int(line) for line in index.read_text().split()]
    except ValueError:
        raise TsvError(f"{index}: not one byte offset per line; regenerate it or delete it") from None


class KeyedTsv:
    """Random access by key (the first column) to the lines of a TSV: offsets from its .lineidx or
    from one pass over the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = open(path, "rb")
        offsets = read_lineidx(path)
        self.offsets = self._from_lineidx(offsets) if offsets is not None else self._scan()

    def _scan(self) -> dict[str, int]:
        offsets, position = {}, 0
        for line in self._handle:
            key = line.split(b"\t", 1)[0].decode("utf-8", "replace").strip()
            if key:
                offsets.setdefault(key, position)
            position += len(line)
        return offsets

    def _from_lineidx(self, offsets: list[int]) -> dict[str, int]:
        """Each offset must start a line (the byte before it a newline): a .lineidx left from an
        earlier version of the TSV would otherwise give keys cut from the middle of lines."""
        keys = {}
        for offset in offsets:
            self._handle.seek(max(offset - 1, 0))
            if offset and self._handle.read(1) != b"\n":
                raise TsvError(f"{self.path.with_suffix('.lineidx')}: offset {offset} is not the start of a line of "
                               f"{self.path}; the .lineidx is stale: regenerate it or delete it")
            keys.setdefault(self._handle.readline().split(b"\t", 1)[0].decode("utf-8", "replace").strip(), offset)
        return keys

    def get(self, key: str) -> tuple[int, list[str]] | None:
        """(line number, columns) of the line of `key`; None when the file has no such line."""
        offset = self.offsets.get(key)
        if offset is None:
            return None
        self._handle.seek(offset)
        line = self._handle.readline().decode("utf-8").rstrip("\r\n")
        columns = line.split("\t")
        if columns[0].strip() != key:
            raise TsvError(f"{self.path.with_suffix('.lineidx')}: offset {offset} is not the start of the line of "
                           f"{key!r}; the .lineidx is stale: regenerate it or delete it")
        return offset, columns

    def close(self) -> None:
        self._handle.close()


def feature_lines(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(where, columns) of each non-empty line of a features TSV, in file order."""
    with open(path, "r", encoding="utf-8", newline="") as handle:
        try:
            for number, line in enumerate(handle, 1):
                line = line.rstrip("\r\n")
                if line:
                    yield f"{path}:{number}", line.split("\t")
        except UnicodeDecodeError as err:
            raise TsvError(f"{path}: not UTF-8 text ({err.reason}); is this a VinVL features TSV?") from None


# ----------------------------------------------------------------------------------- parsing


def _json_or_literal(text: str, where: str, what: str):
    """JSON, or a Python literal (some converters wrote str(dict)); never evaluates code."""
    try:
        return json.loads(text)
    except ValueError:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise TsvError(f"{where}: the {what} column is neither JSON nor a literal; the line is damaged") from None


def parse_features(columns: Sequence[str], where: str) -> np.ndarray:
    """[N, W] float32 rows of one features line, in any of the three layouts."""
    count: int | None = None
    if len(columns) == 3:
        try:
            count = int(columns[1])
        except ValueError:
            raise TsvError(f"{where}: num_boxes {columns[1]!r} is not a number") from None
        encoded = columns[2]
    elif len(columns) == 2 and columns[1].lstrip().startswith("{"):
        info = _json_or_literal(columns[1], where, "features")
        if not isinstance(info, dict) or "features" not in info or "num_boxes" not in info:
            raise TsvError(f"{where}: the features JSON needs num_boxes and features")
        count, encoded = int(info["num_boxes"]), str(info["features"])
    elif len(columns) == 2:
        encoded = columns[1]
    else:
        raise TsvError(f"{where}: {len(columns)} tab-separated columns; a VinVL features line has 2 "
                       "(key, base64 or JSON) or 3 (key, num_boxes, base64)")
    try:
        raw = base64.b64decode(encoded)
    except (binascii.Error, ValueError) as err:
        raise TsvError(f"{where}: the features are not valid base64 ({err}); the line is damaged") from None
    if len(raw) % 4:
        raise TsvError(f"{where}: the features have {len(raw)} bytes, not a whole number of float32 values")
    values = np.frombuffer(raw, np.float32)
    if count is not None and count < 0:
        raise TsvError(f"{where}: num_boxes is {count}, negative")
    if count:  # rows of any width: other backbones than X152-C4 give other feature sizes
        width, fits = values.size // count, values.size % count == 0
    else:  # no count: VinVL's 2048 + 6; a count of 0: no values
        width, fits = DEFAULT_WIDTH, values.size % DEFAULT_WIDTH == 0 if count is None else values.size == 0
    if not fits:
        rows = f"{count} rows" if count is not None else f"rows of {width} (2048-d features + 6 box values)"
        raise TsvError(f"{where}: {values.size} float32 values do not split into {rows}")
    if width <= BOX_COLUMNS and values.size:
        raise TsvError(f"{where}: rows of {width} values cannot hold a feature and {BOX_COLUMNS} box values")
    return values.reshape(-1, width)


def normalised_boxes(rows: np.ndarray, where: str) -> np.ndarray:
    """[N, 4] x1 y1 x2 y2 over the image size from the last 6 values of each row, which must be a
    box in [0, 1] followed by its width and height (in either order)."""
    box = rows[:, -BOX_COLUMNS:].astype(np.float64)
    xyxy = box[:, :4]
    width, height = xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]

    def close(a, b):
        return bool(np.all(np.abs(a - b) <= BOX_TOLERANCE))

    in_range = bool(np.all((xyxy >= -BOX_TOLERANCE) & (xyxy <= 1 + BOX_TOLERANCE)))
    sizes = (close(box[:, 4], width) and close(box[:, 5], height)) or (close(box[:, 4], height) and close(box[:, 5], width))
    if not (in_range and sizes):
        raise TsvError(f"{where}: the last {BOX_COLUMNS} values of the rows are not normalised boxes "
                       "(x1 y1 x2 y2 in [0, 1], then width and height): is this a VinVL features TSV?")
    return rows[:, -BOX_COLUMNS:-2].astype(np.float32)


def parse_prediction(text: str, where: str) -> Prediction:
    """One predictions line's JSON: {"image_h", "image_w", "objects": [...]} or the list of objects."""
    data = _json_or_literal(text, where, "predictions")
    objects = data.get("objects") if isinstance(data, dict) else data
    if not isinstance(objects, list) or not all(isinstance(o, dict) for o in objects):
        raise TsvError(f"{where}: expected {{\"objects\": [...]}} or a list of objects")
    try:
        rects = np.array([o["rect"] for o in objects], np.float32).reshape(len(objects), 4)
        scores = np.array([o.get("conf", np.nan) for o in objects], np.float32)
        classes = [str(o["class"]) for o in objects]
    except (KeyError, ValueError, TypeError) as err:
        raise TsvError(f"{where}: an object lacks class or a 4-number rect ({err})") from None
    attributes = [[str(a) for a in o.get("attributes", [])] for o in objects]
    attribute_scores = [[float(s) for s in o.get("attr_scores", [])] for o in objects]
    if any(len(a) != len(s) for a, s in zip(attributes, attribute_scores) if s):
        raise TsvError(f"{where}: an object has a different number of attributes and attr_scores")
    size = (data.get("image_w"), data.get("image_h")) if isinstance(data, dict) else (None, None)
    image_w, image_h = (int(v) if v is not None else None for v in size)
    return Prediction(image_w, image_h, classes, scores, rects, attributes, attribute_scores)


# ----------------------------------------------------------------------------------- names


def labelmap_names(path: Path) -> tuple[list[str], list[str] | None]:
    """Class and attribute names of a VinVL labelmap JSON (label_to_idx, attribute_to_idx; ids from 1,
    0 being the background / no attribute, as scene_graph_benchmark numbers them)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise TsvError(f"--labelmap {path}: not a readable JSON file ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("label_to_idx"), dict):
        raise TsvError(f"--labelmap {path}: no label_to_idx mapping; give VinVL's labelmap JSON")

    def dense(mapping: dict, zero: str, what: str) -> list[str]:
        names = [zero] + [None] * len(mapping)
        for name, index in mapping.items():
            if not isinstance(index, int) or not 1 <= index <= len(mapping) or names[index] is not None:
                raise TsvError(f"--labelmap {path}: {what} ids must be 1..{len(mapping)}, each once; "
                               f"{name!r} has {index!r}")
            names[index] = name
        return names

    classes = dense(data["label_to_idx"], "__background__", "label_to_idx")
    attributes = data.get("attribute_to_idx")
    return classes, dense(attributes, "__no_attribute__", "attribute_to_idx") if isinstance(attributes, dict) else None


def seen_names(predictions: KeyedTsv) -> tuple[list[str], list[str]]:
    """Sorted class and attribute names of every object of a predictions TSV (one pass)."""
    classes, attributes = set(), set()
    for key in predictions.offsets:
        offset, columns = predictions.get(key)
        prediction = parse_prediction(columns[-1], f"{predictions.path} (byte {offset})")
        classes.update(prediction.classes)
        attributes.update(a for names in prediction.attributes for a in names)
    return sorted(classes), sorted(attributes)


def _index(name: str, where: str, what: str, lookup: dict[str, int]) -> int:
    try:
        return lookup[name]
    except KeyError:
        raise TsvError(f"{where}: {what} {name!r} is not in the labelmap; give the labelmap of the detector "
                       "that made these predictions") from None


# ----------------------------------------------------------------------------------- records


def prediction_arrays(prediction: Prediction, class_index: dict[str, int], attribute_index: dict[str, int],
                      where: str) -> dict[str, np.ndarray]:
    """labels, scores, attributes (top one, -1: none) and attribute_scores of one image's objects."""
    labels = np.array([_index(c, where, "class", class_index) for c in prediction.classes], np.int64)
    attributes = np.full(len(labels), -1, np.int64)
    attribute_scores = np.zeros(len(labels), np.float32)
    for row, (names, scores) in enumerate(zip(prediction.attributes, prediction.attribute_scores)):
        if names:
            best = int(np.argmax(scores)) if scores else 0
            attributes[row] = _index(names[best], where, "attribute", attribute_index)
            attribute_scores[row] = scores[best] if scores else 0.0
    return {"labels": labels, "scores": prediction.scores, "attributes": attributes,
            "attribute_scores": attribute_scores}


def checked_rects(prediction: Prediction, normalised: np.ndarray, width: int, height: int, where: str) -> np.ndarray:
    """The prediction's rects [N, 4] pixels, refused unless they are the features' boxes."""
    if len(prediction.rects) != len(normalised):
        raise TsvError(f"{where}: the predictions have {len(prediction.rects)} objects but the features "
                       f"{len(normalised)} rows; these files are not from one extraction run")
    scale = np.array([width, height, width, height], np.float64)
    clipped = np.clip(prediction.rects.astype(np.float64), 0, scale)
    gap = np.abs(clipped - normalised.astype(np.float64) * scale).max(initial=0.0)
    if gap > RECT_TOLERANCE:
        row = int(np.abs(clipped - normalised * scale).max(axis=1).argmax())
        raise TsvError(f"{where}: the rect of object {row} ({prediction.rects[row].tolist()}) is {gap:.1f} px from the "
                       f"features' box {(normalised[row] * scale).round(1).tolist()} on the {width}x{height} image; "
                       "these files are not from one extraction run, or the image size is wrong")
    return prediction.rects.astype(np.float32)


def import_vinvl(
    features: str | os.PathLike,
    output: str | os.PathLike,
    predictions: str | os.PathLike | None = None,
    labelmap: str | os.PathLike | None = None,
    image_sizes: dict[str, tuple[int, int]] | None = None,
    dtype: str = "float16",
    model: str = "VinVL X152-C4 (published features)",
    overwrite: bool = False,
) -> int:
    """Convert a VinVL features TSV (and its predictions TSV) into one feature file; returns the
    number of images written."""
    features = Path(features)
    first = next(feature_lines(features), None)
    if first is None:
        raise TsvError(f"{features} has no records")
    feature_dim = parse_features(first[1], first[0]).shape[1] - BOX_COLUMNS
    keyed = KeyedTsv(Path(predictions)) if predictions is not None else None
    try:
        class_names, attribute_names = (None, None)
        if keyed is not None:
            class_names, attribute_names = labelmap_names(Path(labelmap)) if labelmap else seen_names(keyed)
        class_index = {name: i for i, name in enumerate(class_names or [])}
        attribute_index = {name: i for i, name in enumerate(attribute_names or [])}
        provenance = {
            "backend": "import-vinvl",
            "model": model,
            "weights": {"source": "published features"},
            "classes": {"num_classes": len(class_names or []), "names": "labelmap" if labelmap else
                        ("sorted names of the predictions" if keyed else None)},
            "settings": {"dtype": dtype, "box_columns": "last 6 of each feature row, removed",
                         "image_size": "predictions" if keyed else ("--image-sizes" if image_sizes else
                                                                    f"nominal {NOMINAL_SIZE}x{NOMINAL_SIZE}")},
            "run": run_info(source_files=[p.name for p in (features, keyed and keyed.path) if p]),
        }
        writer = FeatureWriter(output, feature_dim, len(class_names or []), provenance, dtype=dtype,
                               overwrite=overwrite, class_names=class_names, attribute_names=attribute_names)
        try:
            for where, columns in feature_lines(features):
                writer.add(_record(where, columns, feature_dim, keyed, class_index, attribute_index, image_sizes))
        except FeatureStoreError as err:
            writer.abort()
            raise type(err)(f"{where}: {err}") from None
        except BaseException:
            writer.abort()
            raise
        writer.close()
        return writer.count
    finally:
        if keyed is not None:
            keyed.close()


def _record(where: str, columns: list[str], feature_dim: int, keyed: KeyedTsv | None, class_index: dict,
            attribute_index: dict, image_sizes: dict | None) -> RegionRecord:
    """One image's record from its features line and, when given, its predictions line."""
    key = columns[0].strip()
    rows = parse_features(columns, where)
    where = f"{where}: image {key!r}"
    if rows.shape[1] - BOX_COLUMNS != feature_dim and len(rows):
        raise TsvError(f"{where}: {rows.shape[1] - BOX_COLUMNS}-d features, the first image has {feature_dim}")
    normalised = normalised_boxes(rows, where)
    arrays: dict[str, np.ndarray] = {}
    if keyed is None:
        width, height = image_size(image_sizes, key, where)
        boxes = normalised * np.array([width, height, width, height], np.float32)
    else:
        found = keyed.get(key)
        if found is None:
            raise TsvError(f"{where}: no line for this image in {keyed.path}")
        prediction_where = f"{keyed.path} (byte {found[0]}): image {key!r}"
        prediction = parse_prediction(found[1][-1], prediction_where)
        if prediction.image_w and prediction.image_h:
            width, height = prediction.image_w, prediction.image_h
        elif image_sizes is not None:
            width, height = image_size(image_sizes, key, where)
        else:
            raise TsvError(f"{prediction_where}: no image_w / image_h; give the image sizes with --image-sizes "
                           "(VinVL's hw.tsv or a JSON of {id: [w, h]})")
        boxes = checked_rects(prediction, normalised, width, height, where)
        arrays = prediction_arrays(prediction, class_index, attribute_index, prediction_where)
    return RegionRecord(key, np.ascontiguousarray(rows[:, :feature_dim]), boxes, width, height, **arrays)
