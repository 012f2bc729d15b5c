"""`vlbert import-tsv --format uniter-lmdb DIR`: UNITER's image LMDB -> the vlbert feature schema.

UNITER (github.com/ChenRocks/UNITER, scripts/convert_imgdir.py) ships its bottom-up features
(the caffe R101 Visual Genome detector, 10-100 boxes at confidence 0.2) as an LMDB per split,
e.g. ``img_db/coco_val2014/feat_th0.2_max100_min10``. Each key is an image's file name
(``coco_val2014_000000000042.npz``), each value one image's arrays, as msgpack with
msgpack-numpy's array encoding or, in the ``*_compressed`` databases, as an ``.npz`` archive:

    features     [N, 2048] float16
    norm_bb      [N, 6]    float16, x1 y1 x2 y2 over the image width / height, then width, height
    conf         [N]       float16, the detector's confidence per box
    soft_labels  [N, 1601] float16, the class distribution (column 0: background)

``__keys__`` holds the JSON list of keys. Records are decoded here without pickle: msgpack
records by their encoding's dtype / shape / bytes, npz records with np.load(allow_pickle=False).

Stored: features; boxes = norm_bb x1 y1 x2 y2 times the image size (`--image-sizes`, else a
nominal 1024 x 1024 on which boxes / image size give back norm_bb exactly); scores = conf;
class_probs = soft_labels (num_classes = its width); class_names from ``--class-names`` (the 1600 VG
names of objects_vocab.txt get ``__background__`` first). Image ids are the keys without ``.npz``. All
rows of a record are kept (UNITER's `all` databases hold every box and pick 10-100 by confidence
when reading; here max_regions does that cut in training).

Needs ``pip install lmdb msgpack`` (the `uniter` extra).
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np

from vlbert.featstore import FeatureStoreError, FeatureWriter, RegionRecord
from vlbert.features.names import fitted, names_provenance, read_unique_names
from vlbert.features.provenance import run_info
from vlbert.features.published import NOMINAL_SIZE, TsvError, image_size

NPZ_MAGIC = b"PK\x03\x04"
LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"
NORM_BB_TOLERANCE = 2e-3  # float16 rounding of width / height against x2 - x1, y2 - y1
NUMERIC_KINDS = "biuf"


def _require(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise TsvError(f"--format uniter-lmdb needs the {module} package: pip install 'vlbert[uniter]' "
                       "(lmdb, msgpack)") from None


def find_database(path: Path) -> Path:
    """The LMDB folder (holding data.mdb): `path` itself, or its one subfolder that is one (UNITER's
    img_db/<split>/ holds the database next to the nbb_*.json files)."""
    if not path.is_dir():
        raise TsvError(f"{path} is not a folder; give UNITER's LMDB folder (with data.mdb) or the split folder")
    if (path / "data.mdb").is_file():
        return path
    found = sorted(p for p in path.iterdir() if (p / "data.mdb").is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise TsvError(f"{path} holds no LMDB (no data.mdb in it or its subfolders)")
    raise TsvError(f"{path} holds {len(found)} LMDBs ({', '.join(p.name for p in found)}); give one of them")


def _field(value: dict, name: str):
    """A field of a msgpack-numpy map, whose keys are bytes (use_bin_type) or str (older writers)."""
    return value[name.encode()] if name.encode() in value else value[name]


def decode_array(value, where: str, name: str) -> np.ndarray:
    """An array from msgpack-numpy's encoding {nd: True, type: dtype str, shape, data: bytes}; numeric
    dtypes only (an object dtype would need pickle)."""
    try:
        if not isinstance(value, dict) or not _field(value, "nd"):
            raise KeyError("nd")
        dtype = np.dtype(_field(value, "type"))
        shape = tuple(int(n) for n in _field(value, "shape"))
        data = _field(value, "data")
    except (KeyError, TypeError, ValueError) as err:
        raise TsvError(f"{where}: {name} is not a msgpack-numpy array ({err})") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.hasobject:
        raise TsvError(f"{where}: {name} has dtype {dtype}; only numeric arrays are read")
    if len(data) != dtype.itemsize * int(np.prod(shape)):
        raise TsvError(f"{where}: {name} has {len(data)} bytes for shape {list(shape)} {dtype}")
    return np.frombuffer(data, dtype).reshape(shape)


def decode_record(raw: bytes, where: str) -> dict[str, np.ndarray]:
    """One image's arrays from its LMDB value: an npz archive or a msgpack map."""
    if raw[:4] == NPZ_MAGIC:
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (ValueError, OSError, zipfile.BadZipFile) as err:
            raise TsvError(f"{where}: a damaged or non-numeric npz record ({err})") from None
    if raw[:4] == LZ4_FRAME_MAGIC:
        raise TsvError(f"{where}: an lz4-compressed record: this is a UNITER text database (txt_db), "
                       "not an image database (img_db)")
    msgpack = _require("msgpack")
    try:
        value = msgpack.unpackb(raw, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as err:
        raise TsvError(f"{where}: not a msgpack record ({err})") from None
    if not isinstance(value, dict):
        raise TsvError(f"{where}: the record is not a map of arrays")
    return {(k.decode() if isinstance(k, bytes) else str(k)): decode_array(v, where, str(k)) for k, v in value.items()}


def database_records(database: Path) -> Iterator[tuple[str, bytes]]:
    """(key, value) of each image of the LMDB, in the order of its __keys__ list when it has one."""
    lmdb = _require("lmdb")
    try:
        env = lmdb.open(str(database), readonly=True, lock=False, readahead=False, subdir=True)
    except lmdb.Error as err:
        raise TsvError(f"{database}: not a readable LMDB ({err})") from None
    try:
        with env.begin() as txn:
            listed = txn.get(b"__keys__")
            if listed is not None:
                for key in json.loads(listed.decode("utf-8")):
                    value = txn.get(key.encode("utf-8"))
                    if value is None:
                        raise TsvError(f"{database}: __keys__ lists {key!r}, which has no record")
                    yield key, bytes(value)
            else:
                for key, value in txn.cursor():
                    if not key.startswith(b"__"):
                        yield key.decode("utf-8"), bytes(value)
    finally:
        env.close()


def region_record(image_id: str, arrays: dict[str, np.ndarray], sizes: dict | None, where: str) -> RegionRecord:
    """The vlbert record of one UNITER dump: boxes from norm_bb times the image size."""
    for name in ("features", "norm_bb"):
        if name not in arrays:
            raise TsvError(f"{where}: no {name} array (it has {', '.join(sorted(arrays))})")
    norm_bb = arrays["norm_bb"].astype(np.float32)
    if norm_bb.ndim != 2 or norm_bb.shape[1] not in (4, 6) or len(norm_bb) != len(arrays["features"]):
        raise TsvError(f"{where}: norm_bb has shape {list(norm_bb.shape)}, expected [{len(arrays['features'])}, 6]")
    if norm_bb.shape[1] == 6:
        gaps = np.abs(norm_bb[:, 4:] - (norm_bb[:, 2:4] - norm_bb[:, :2]))
        if gaps.size and gaps.max() > NORM_BB_TOLERANCE:
            raise TsvError(f"{where}: norm_bb columns 4-5 are not x2 - x1, y2 - y1; not UNITER's box layout")
    width, height = image_size(sizes, image_id, where)
    boxes = norm_bb[:, :4] * np.array([width, height, width, height], np.float32)
    conf = arrays.get("conf")
    return RegionRecord(image_id, arrays["features"], boxes, width, height, class_probs=arrays.get("soft_labels"),
                        scores=conf.astype(np.float32) if conf is not None else None)


def import_uniter_lmdb(
    path: str | os.PathLike,
    output: str | os.PathLike,
    image_sizes: dict[str, tuple[int, int]] | None = None,
    dtype: str = "float16",
    model: str = "UNITER bottom-up Faster R-CNN R101 VG (published LMDB)",
    overwrite: bool = False,
    class_names: str | os.PathLike | None = None,
) -> int:
    """Convert one UNITER image LMDB into a feature file; returns the number of images written.
    `class_names`: the detector's vocabulary file, read before the database is opened."""
    names = read_unique_names(class_names, "--class-names", TsvError) if class_names is not None else None
    database = find_database(Path(path))
    records = database_records(database)
    first = next(records, None)
    if first is None:
        raise TsvError(f"{database} holds no image records")
    first_arrays = decode_record(first[1], f"{database}: {first[0]!r}")
    feature_dim = int(first_arrays["features"].shape[-1]) if "features" in first_arrays else 0
    soft_labels = first_arrays.get("soft_labels")
    num_classes = int(soft_labels.shape[-1]) if soft_labels is not None else 0
    added = None
    if names is not None:
        names, added = _fitted_names(names, num_classes, class_names, database)
    provenance = {
        "backend": "import-uniter-lmdb",
        "model": model,
        "weights": {"source": "published features"},
        "classes": {"num_classes": num_classes, "background_index": 0 if num_classes else None,
                    "class_probs": "soft_labels" if num_classes else None},
        "settings": {"dtype": dtype, "database": database.name,
                     "image_size": "--image-sizes" if image_sizes else f"nominal {NOMINAL_SIZE}x{NOMINAL_SIZE}"},
        "run": run_info(source_files=[database.name]),
    }
    if names is not None:
        provenance["classes"]["names"] = names_provenance(class_names, added)
    writer = FeatureWriter(output, max(feature_dim, 1), num_classes, provenance, dtype=dtype, overwrite=overwrite,
                           class_names=names)
    try:
        for index, (key, raw) in enumerate(_chain(first, records)):
            where = f"{database}: record {key!r}"
            arrays = first_arrays if index == 0 else decode_record(raw, where)
            image_id = key[:-4] if key.endswith(".npz") else key
            try:
                writer.add(region_record(image_id, arrays, image_sizes, where))
            except FeatureStoreError as err:
                raise type(err)(f"{where}: {err}") from None
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return writer.count


def _fitted_names(names: list[str], num_classes: int, path: str | os.PathLike,
                  database: Path) -> tuple[list[str], int | None]:
    """Names of the soft_labels columns, background first: objects_vocab.txt's 1600 VG names get
    __background__ at column 0, as UNITER's 1601 columns have it."""
    if not num_classes:
        raise TsvError(f"--class-names {path}: the records of {database} have no soft_labels, so there are no "
                       "classes to name; drop --class-names")
    return fitted(names, num_classes, 0, path, "--class-names", TsvError)


def _chain(first: tuple[str, bytes], rest: Iterator[tuple[str, bytes]]) -> Iterator[tuple[str, bytes]]:
    yield first
    yield from rest
