"""The region-feature store: the one HDF5 layout that extraction writes and training reads.

Layout (schema version 2)::

    /                       attrs: schema="vlbert-regions", schema_version=2,
                                   feature_dim=D, num_classes=C (0: no class data),
                                   provenance=<JSON string: backend, model, weights, settings, ...>
    /class_names            [C]     UTF-8 strings, optional: the name of each class id
    /attribute_names        [A]     UTF-8 strings, optional: the name of each attribute id
    /images/<key>           one group per image, key = escaped image id (see `image_key`)
        features            [N, D]  float16 or float32, the detector's box-head representation
        boxes               [N, 4]  float32, absolute pixels, x1 y1 x2 y2
        class_probs         [N, C]  float16, optional: the detector's class distribution
        labels              [N]     int64, optional: the detector's top class per box
        scores              [N]     float32, optional: the detector's confidence per box
        attributes          [N]     int64, optional: the top attribute id per box (-1: none)
        attribute_scores    [N]     float32, optional: that attribute's score (needs attributes)
        attrs: image_id (original id), image_w, image_h, num_boxes

Version 2 added the names and the three per-box arrays, all optional: a version 1 file is a
valid version 2 file without them, and reads as one. The names are small datasets rather than
attributes because an HDF5 attribute lives in its object header, which is limited to 64 KiB:
a list of 21k ImageNet class names would not fit. `class_names` has exactly `num_classes`
entries (the background class included where the detector has one); `attribute_names` gives
the range of `attributes`.

Each image's arrays are stored contiguously, so a random read by image id is one seek
per array. A file is always written to ``<path>.tmp`` and renamed into place on close,
so a half-written file never carries the final name.

Reading: the first read of an image notes, with h5py's low-level calls, where each of its
(contiguous, unfiltered) arrays lies in the file; that and every later read of the image are
plain positioned reads of those bytes (`os.preadv`), without h5py's per-object lookups, which
cost several times the read itself for records of this size. What is noted is shared with the
DataLoader workers forked from the process. Raw reads are checked once per file against h5py's
read of the same record. Images whose arrays h5py does not store contiguously (chunked,
compressed, compact, external storage) or that are reached through a link other than a hard link
(an external link's offsets lie in another file; a soft link may too) are always read through
h5py. The file format is unchanged.

Every read refuses a record holding NaN or Inf (features, boxes, class distributions, scores),
naming the image and the file: such values would otherwise train to a NaN loss. `vlbert check-features`
lists every problem of a store.
"""
from __future__ import annotations

import glob
import json
import mmap
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import h5py
import numpy as np

from vlbert.errors import InputError
from vlbert.featindex import IDS_DATASET, ImageIndex, encode_ids

SCHEMA = "vlbert-regions"
SCHEMA_VERSION = 2


class FeatureStoreError(InputError):
    """A feature file that cannot serve the request (missing ids, wrong dimension, bad schema)."""


def image_key(image_id: str | int) -> str:
    """HDF5 group name for an image id: '/' separates HDF5 paths, so it is escaped."""
    return str(image_id).replace("%", "%25").replace("/", "%2F")


@dataclass
class RegionRecord:
    """One image's regions. Shapes: features [N, D], boxes [N, 4] (x1 y1 x2 y2 pixels)."""

    image_id: str
    features: np.ndarray
    boxes: np.ndarray
    image_w: int
    image_h: int
    class_probs: np.ndarray | None = None  # [N, C]
    labels: np.ndarray | None = None  # [N] int64, top class
    scores: np.ndarray | None = None  # [N] float32, detector confidence
    attributes: np.ndarray | None = None  # [N] int64, top attribute id, -1: none
    attribute_scores: np.ndarray | None = None  # [N] float32

    @property
    def num_boxes(self) -> int:
        return int(self.features.shape[0])

    def top_labels(self) -> np.ndarray | None:
        """Detector top class per box: stored labels, else argmax of the class distribution."""
        if self.labels is not None:
            return self.labels
        if self.class_probs is not None:
            return self.class_probs.argmax(-1).astype(np.int64)
        return None


# NaN and Inf are the IEEE floats whose exponent bits are all ones. Read as signed integers, the
# positive ones are those >= the exponent mask; read as unsigned, the negative ones are those >=
# sign bit | mask. So two max reductions over integer views find them, without the temporary array
# of np.isfinite (which also converts each float16 value first: ~25x slower for half floats).
_NON_FINITE_BITS = {
    np.dtype("<f2"): (np.int16, np.uint16, 0x7C00),
    np.dtype("<f4"): (np.int32, np.uint32, 0x7F800000),
    np.dtype("<f8"): (np.int64, np.uint64, 0x7FF0000000000000),
}


def all_finite(array: np.ndarray) -> bool:
    """True when no value of `array` is NaN or Inf; cheap enough to check every record read."""
    if array.dtype.kind not in "fc" or array.size == 0:
        return True
    bits = _NON_FINITE_BITS.get(array.dtype)
    if bits is None or not array.flags.c_contiguous:
        return bool(np.isfinite(array).all())
    signed, unsigned, exponent = bits
    sign = 1 << (8 * array.dtype.itemsize - 1)
    return bool(array.view(signed).max() < exponent and array.view(unsigned).max() < (sign | exponent))


# Float arrays of a record whose values must be finite, checked on every write and read.
FLOAT_ARRAYS = ("features", "boxes", "class_probs", "scores", "attribute_scores")
# Optional per-box arrays [N] and the numpy kinds each may have.
PER_BOX = {"labels": "iu", "scores": "f", "attributes": "iu", "attribute_scores": "f"}


def validate_record(record: RegionRecord, feature_dim: int, num_classes: int, num_attributes: int = 0) -> None:
    """Raise FeatureStoreError when a record's arrays disagree with each other or with the file
    (`num_attributes`: the length of the file's attribute_names, 0 when it has none)."""
    n = record.features.shape[0]
    where = f"image {record.image_id!r}"
    if record.features.ndim != 2 or record.features.shape[1] != feature_dim:
        raise FeatureStoreError(f"{where}: features have shape {record.features.shape}, expected [N, {feature_dim}]")
    if record.boxes.shape != (n, 4):
        raise FeatureStoreError(f"{where}: boxes have shape {record.boxes.shape}, expected [{n}, 4]")
    if record.image_w <= 0 or record.image_h <= 0:
        raise FeatureStoreError(f"{where}: image size {record.image_w}x{record.image_h} is not positive")
    if record.class_probs is not None and record.class_probs.shape != (n, num_classes):
        raise FeatureStoreError(
            f"{where}: class_probs have shape {record.class_probs.shape}, expected [{n}, {num_classes}]"
        )
    for name, kinds in PER_BOX.items():
        array = getattr(record, name)
        if array is None:
            continue
        if np.shape(array) != (n,):
            raise FeatureStoreError(f"{where}: {name} have shape {np.shape(array)}, expected [{n}]")
        if np.asarray(array).dtype.kind not in kinds:
            raise FeatureStoreError(f"{where}: {name} have dtype {np.asarray(array).dtype}, expected "
                                    f"{'integers' if kinds == 'iu' else 'floats'}")
    if record.attribute_scores is not None and record.attributes is None:
        raise FeatureStoreError(f"{where}: attribute_scores without attributes; give both or neither")
    if record.attributes is not None and n and num_attributes:
        low, high = int(np.min(record.attributes)), int(np.max(record.attributes))
        if low < -1 or high >= num_attributes:
            raise FeatureStoreError(f"{where}: attribute ids span [{low}, {high}], outside [-1, {num_attributes}) "
                                    "of the file's attribute_names")
    for name in FLOAT_ARRAYS:
        array = getattr(record, name)
        if array is not None and not all_finite(np.asarray(array)):
            raise FeatureStoreError(f"{where}: {name} contain NaN or Inf")


def _names(names: Sequence[str] | None, what: str, expected: int | None) -> list[str] | None:
    """A file's class or attribute names as a list of str, checked: strings, none repeated
    (a name must map back to one id), and `expected` of them when that is given."""
    if names is None:
        return None
    names = list(names)
    if not all(isinstance(name, str) for name in names):
        raise FeatureStoreError(f"{what} must be strings")
    if expected is not None and len(names) != expected:
        raise FeatureStoreError(f"{len(names)} {what} for num_classes={expected}; give one name per class id "
                                "(the background class included)")
    repeated = sorted({name for name in names if names.count(name) > 1}) if len(set(names)) != len(names) else []
    if repeated:
        raise FeatureStoreError(f"{what} repeat {', '.join(map(repr, repeated[:5]))}; each name must be given once")
    return names


_PER_BOX_DTYPES = {"labels": np.int64, "scores": np.float32, "attributes": np.int64, "attribute_scores": np.float32}


class FeatureWriter:
    """Write a feature file atomically: records go to ``<path>.tmp``, renamed to ``path`` on close.

    An existing ``path`` is never overwritten unless ``overwrite=True``. ``class_names`` (one per
    class id, ``num_classes`` of them) and ``attribute_names`` name the ids of ``labels`` /
    ``class_probs`` columns and of ``attributes``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        feature_dim: int,
        num_classes: int = 0,
        provenance: dict | None = None,
        dtype: str = "float16",
        overwrite: bool = False,
        class_names: Sequence[str] | None = None,
        attribute_names: Sequence[str] | None = None,
    ) -> None:
        if dtype not in ("float16", "float32"):
            raise FeatureStoreError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
        self.class_names = _names(class_names, "class_names", int(num_classes))
        self.attribute_names = _names(attribute_names, "attribute_names", None)
        self.num_attributes = len(self.attribute_names or ())
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; choose another output or pass overwrite=True")
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)
        self.dtype = dtype
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # HDF5 1.10's file format: its groups index links in a B-tree, so a million images in one
        # group stay fast to add (1.8's symbol tables slowed to a crawl past ~700k) and take half
        # the space; any HDF5 >= 1.10 (2017) reads it
        self._file = h5py.File(self.tmp_path, "w", libver=("v110", "v110"))
        self._file.attrs["schema"] = SCHEMA
        self._file.attrs["schema_version"] = SCHEMA_VERSION
        self._file.attrs["feature_dim"] = self.feature_dim
        self._file.attrs["num_classes"] = self.num_classes
        self._file.attrs["dtype"] = dtype
        self._file.attrs["provenance"] = json.dumps(provenance or {}, sort_keys=True)
        for name, names in (("class_names", self.class_names), ("attribute_names", self.attribute_names)):
            if names is not None:
                self._file.create_dataset(name, data=names, dtype=h5py.string_dtype("utf-8"))
        self._images = self._file.create_group("images")
        self._ids: list[str] = []
        self.count = 0

    def add(self, record: RegionRecord) -> None:
        validate_record(record, self.feature_dim, self.num_classes, self.num_attributes)
        key = image_key(record.image_id)
        if key in self._images:
            raise FeatureStoreError(f"image {record.image_id!r} was already written to {self.path}")
        group = self._images.create_group(key)
        group.create_dataset("features", data=np.asarray(record.features, dtype=self.dtype))
        group.create_dataset("boxes", data=np.asarray(record.boxes, dtype=np.float32))
        if record.class_probs is not None:
            group.create_dataset("class_probs", data=np.asarray(record.class_probs, dtype=np.float16))
        for name, dtype in _PER_BOX_DTYPES.items():
            if getattr(record, name) is not None:
                group.create_dataset(name, data=np.asarray(getattr(record, name), dtype=dtype))
        group.attrs["image_id"] = str(record.image_id)
        group.attrs["image_w"] = int(record.image_w)
        group.attrs["image_h"] = int(record.image_h)
        group.attrs["num_boxes"] = record.num_boxes
        self._ids.append(str(record.image_id))
        self.count += 1

    def close(self) -> Path:
        """Flush, close and move the finished file into place; returns its path."""
        if self._file is None:
            return self.path
        self._file.attrs["num_images"] = self.count
        # every id in one dataset: a store opens by reading it, not by opening each image group
        self._file.create_dataset(IDS_DATASET, data=encode_ids(self._ids))
        self._file.close()
        self._file = None
        os.replace(self.tmp_path, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the unfinished temporary file; the final path is left untouched."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


MANIFEST_SUFFIX = ".json"


def read_manifest(path: Path) -> list[Path]:
    """The shards a manifest lists: {"shards": ["a.h5", ...]}, paths relative to the manifest."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FeatureStoreError(f"shard manifest {path} is not JSON ({error}); expected {{\"shards\": [\"a.h5\", ...]}}") from None
    shards = data.get("shards") if isinstance(data, dict) else None
    if not isinstance(shards, list) or not shards or not all(isinstance(s, str) for s in shards):
        raise FeatureStoreError(f"shard manifest {path} needs a non-empty \"shards\" list of file names")
    return [path.parent / shard for shard in shards]


def expand_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The files of a store: each path a file, a folder of *.h5 shards, a glob ('feats.shard*.h5')
    or a JSON manifest of shards. Refuses a missing path, an empty folder or glob and a file named
    twice (its images would all be duplicates)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists() and glob.has_magic(str(p)):
            matches = sorted(Path(m) for m in glob.glob(str(p)))
            if not matches:
                raise FeatureStoreError(f"no feature file matches {p}; check the pattern (quote it so the shell leaves it alone)")
            out.extend(matches)
        elif p.is_file() and p.suffix == MANIFEST_SUFFIX:
            for shard in read_manifest(p):
                if not shard.is_file():
                    raise FeatureStoreError(f"shard {shard} listed in {p} does not exist")
                out.append(shard)
        elif p.is_dir():
            shards = sorted(p.glob("*.h5"))
            if not shards:
                raise FeatureStoreError(f"{p} is a directory without *.h5 feature files")
            out.extend(shards)
        elif p.is_file():
            out.append(p)
        else:
            raise FeatureStoreError(f"feature file {p} does not exist; run `vlbert extract` or `vlbert synth` first")
    seen: set[Path] = set()
    for p in out:
        if p.resolve() in seen:
            raise FeatureStoreError(f"feature file {p} is given twice; name each file (or its folder) once")
        seen.add(p.resolve())
    return out


def open_hdf5(path: str | os.PathLike) -> h5py.File:
    """h5py.File(path, "r"), or a FeatureStoreError naming the path: HDF5's own OSError ("Unable to
    synchronously open file") does not say which file it could not open."""
    if not Path(path).is_file():
        raise FeatureStoreError(f"feature file {path} does not exist; run `vlbert extract` or `vlbert synth` first")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        if not os.access(path, os.R_OK):
            raise FeatureStoreError(f"{path} cannot be read (permission denied); fix its permissions") from None
        raise FeatureStoreError(
            f"{path} is not a readable HDF5 file (truncated or not HDF5: {err}); "
            "re-extract it or point to the right file"
        ) from None


_HEADER_INTEGERS = ("schema_version", "feature_dim", "num_classes")


def read_header(path: str | os.PathLike) -> dict:
    """File-level attributes of one feature file, with provenance decoded. Refuses, naming the file,
    one that is not HDF5, not of this schema, or lacks what every reader needs."""
    with open_hdf5(path) as f:
        return _header(f, path)


def _header(f: h5py.File, path: str | os.PathLike) -> dict:
    attrs = f.attrs
    if attrs.get("schema") != SCHEMA:
        raise FeatureStoreError(f"{path} is not a vlbert region-feature file (no schema={SCHEMA!r} attribute)")
    missing = [name for name in _HEADER_INTEGERS if name not in attrs]
    if missing:
        raise FeatureStoreError(
            f"{path} lacks the attribute(s) {', '.join(missing)} of a vlbert region-feature file; "
            "re-extract it (`vlbert extract`) or re-import it (`vlbert import-tsv`)"
        )
    try:
        version, feature_dim, num_classes = (int(attrs[name]) for name in _HEADER_INTEGERS)
    except (TypeError, ValueError):
        shown = ", ".join(f"{name}={attrs[name]!r}" for name in _HEADER_INTEGERS)
        raise FeatureStoreError(f"{path}: {shown}: these attributes must be integers; re-extract the file") from None
    if version > SCHEMA_VERSION:
        raise FeatureStoreError(
            f"{path} has schema version {version}; this vlbert reads up to {SCHEMA_VERSION}: upgrade vlbert"
        )
    if feature_dim <= 0 or num_classes < 0:
        raise FeatureStoreError(
            f"{path} has feature_dim={feature_dim}, num_classes={num_classes}: feature_dim must be positive "
            "and num_classes not negative; re-extract the file"
        )
    if not isinstance(f.get("images"), h5py.Group):
        raise FeatureStoreError(f"{path} has no readable /images group: no image was written to it; re-extract it")
    try:
        provenance = json.loads(attrs.get("provenance", "{}"))
    except (TypeError, ValueError) as err:
        raise FeatureStoreError(f"{path}: the provenance attribute is not JSON ({err}); re-extract the file") from None
    return {
        "schema_version": version,
        "feature_dim": feature_dim,
        "num_classes": num_classes,
        "dtype": str(attrs.get("dtype", "float32")),
        "provenance": provenance,
        "class_names": read_names(f, "class_names", path),
        "attribute_names": read_names(f, "attribute_names", path),
    }


def read_names(f: h5py.File, name: str, path: str | os.PathLike) -> list[str] | None:
    """A file's /class_names or /attribute_names as a list of str; None when absent (version 1
    files, stores without names). One that is not a 1-D array of strings is refused."""
    if name not in f:
        return None
    dataset = f[name]
    if not isinstance(dataset, h5py.Dataset) or dataset.ndim != 1 or h5py.check_string_dtype(dataset.dtype) is None:
        raise FeatureStoreError(f"{path}: /{name} is not a 1-D array of strings; rewrite it or delete it")
    return [str(value) for value in dataset.asstr()[()]]


def names_difference(first: list[str] | None, other: list[str] | None) -> str:
    """Where two name lists first differ, for a message."""
    if first is None or other is None:
        return "one has none"
    if len(first) != len(other):
        return f"{len(first)} and {len(other)} names"
    index = next(i for i, (a, b) in enumerate(zip(first, other)) if a != b)
    return f"id {index} is {first[index]!r} and {other[index]!r}"


def _file_index(f: h5py.File, path: str | os.PathLike) -> tuple[np.ndarray, dict[int, str]]:
    """A file's image ids (bytes, file order) and the group keys that are not `image_key(id)`: from
    its /image_ids (FeatureWriter writes it) when that still lists every group, else by opening
    each group (files of other programs, or changed after writing)."""
    images = f["images"]
    stored = f.get(IDS_DATASET)
    if isinstance(stored, h5py.Dataset) and stored.dtype.kind == "S" and stored.ndim == 1 and len(stored) == len(images):
        return stored[()], {}
    ids, keys = [], {}
    for row, (key, image_id) in enumerate(_stored_ids(images, path)):
        ids.append(image_id)
        if key != image_key(image_id):
            keys[row] = key
    return encode_ids(ids), keys


def _stored_ids(images: h5py.Group, path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """(group key, image id) of each image of a file's /images group; an image that HDF5 cannot
    open (an external link to a file that is gone) is refused with its key and the file."""
    for key in images:
        try:
            group = images[key]
            image_id = group.attrs.get("image_id", key)
        except (KeyError, OSError) as err:
            raise FeatureStoreError(
                f"{path}: image group {key!r} cannot be opened ({err}); a link to another file may be broken: "
                f"run `vlbert check-features {path}`"
            ) from None
        yield key, str(image_id)


# A record's arrays, in the order of the per-image layout columns (that of RegionRecord's fields after
# image_w / image_h), and the dtypes read as raw bytes.
_ARRAYS = ("features", "boxes", "class_probs", "labels", "scores", "attributes", "attribute_scores")
_RAW_DTYPES = tuple(np.dtype(t) for t in ("<f2", "<f4", "<f8", "<i8", "<i4"))
_RAW_READS = hasattr(os, "preadv") and sys.byteorder == "little"


def _layout_arrays(count: int) -> tuple[np.ndarray, ...]:
    """Where each image's arrays lie, one row per image, filled on the image's first read:
    offsets [count, 7] int64, byte offset of each array of _ARRAYS;
    sizes [count, 3] int64, num_boxes, image_w, image_h;
    codes [count, 7] int8, dtype of each array (index into _RAW_DTYPES), -2 absent;
    state [count] int8, how the image is read: 0 not known yet, 1 raw reads, 2 h5py.
    Every field starts at a value it never takes once filled (-1, 0, -1, 0). The arrays live in
    one anonymous shared mapping, so DataLoader workers forked from this process share what any
    of them notes (each int64 / int8 is written whole; a reader that sees a starting value in a
    row whose state is 1 probes the image itself). Pickled (spawned workers), they are copies."""
    widths = (count * len(_ARRAYS) * 8, count * 3 * 8, count * len(_ARRAYS), count)
    memory = mmap.mmap(-1, max(sum(widths), 1))
    arrays, start = [], 0
    for width, dtype, shape, initial in zip(
        widths, (np.int64, np.int64, np.int8, np.int8), ((count, len(_ARRAYS)), (count, 3), (count, len(_ARRAYS)), (count,)), (-1, 0, -1, 0)
    ):
        array = np.frombuffer(memory, dtype, int(np.prod(shape)), start).reshape(shape)
        array[...] = initial
        arrays.append(array)
        start += width
    return tuple(arrays)


def _hard_link(group: h5py.h5g.GroupID, name: bytes) -> bool:
    """Whether `name` in `group` is a hard link, whose object lies in the group's own file: an
    external link's object (and the offsets HDF5 gives for it) lies in another file."""
    return group.links.get_info(name).type == h5py.h5l.TYPE_HARD


class FeatureStore:
    """Random access to region features by image id across one or more files (shards).

    The index of ids is built once at construction; file handles are opened lazily in each
    process (handles must not cross a DataLoader worker fork). Where each image's arrays lie in
    its file is noted on the image's first read (see the module docstring).
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike]) -> None:
        self.paths = expand_paths(paths)
        headers = [read_header(p) for p in self.paths]
        first = headers[0]
        for p, h in zip(self.paths[1:], headers[1:]):
            for field in ("feature_dim", "num_classes"):
                if h[field] != first[field]:
                    raise FeatureStoreError(
                        f"{p} has {field}={h[field]} but {self.paths[0]} has {first[field]}; "
                        "shards of one store must come from the same extraction settings"
                    )
            for field in ("class_names", "attribute_names"):
                if h[field] != first[field]:
                    raise FeatureStoreError(
                        f"{p} and {self.paths[0]} have different {field} ({names_difference(first[field], h[field])}); "
                        "shards of one store must come from the same detector: re-extract or re-import one of them"
                    )
        self.feature_dim: int = first["feature_dim"]
        self.num_classes: int = first["num_classes"]
        self.provenance: dict = first["provenance"]
        self.class_names: list[str] | None = first["class_names"]
        self.attribute_names: list[str] | None = first["attribute_names"]
        per_file, keys = [], []
        for p in self.paths:
            with open_hdf5(p) as f:
                ids, file_keys = _file_index(f, p)
            per_file.append(ids)
            keys.append(file_keys)
        self._index = ImageIndex.build(per_file, keys)  # image id -> (file index, group key, row)
        duplicate = self._index.duplicate()
        if duplicate is not None:
            self._refuse_duplicate(*duplicate)
        self._offsets, self._sizes, self._codes, self._state = _layout_arrays(len(self._index))
        # each array's shape after its first dimension (num_boxes), in the order of _ARRAYS
        self._trailing = ((self.feature_dim,), (4,), (self.num_classes,), (), (), (), ())
        self._raw_ok: dict[int, bool] = {}  # per file: did a raw read match h5py's read of the same record
        self._handles: dict[int, h5py.File] = {}
        self._groups: dict[int, h5py.Group] = {}
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def _refuse_duplicate(self, first_row: int, second_row: int) -> None:
        """Two records of one image: which one a read returns would depend on the order of the files."""
        image_id = self._index.id_of(first_row)
        (first_index, first_key, _), (file_index, key, _) = self._row_location(first_row), self._row_location(second_row)
        first, second = self.paths[first_index], self.paths[file_index]
        if first_index == file_index:
            where = f"twice in {first} (groups {first_key!r} and {key!r})"
        else:
            where = f"in both {first} and {second}"
        raise FeatureStoreError(
            f"image id {image_id!r} is {where}; a store must hold each image once: drop one of the files or the "
            f"image from one of them (`vlbert check-features` lists every duplicate)"
        )

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, image_id: object) -> bool:
        return self._index.row(str(image_id)) is not None

    @property
    def ids(self) -> list[str]:
        """Every image id, file by file in each file's order."""
        return self._index.all_ids()

    @property
    def has_class_probs(self) -> bool:
        record = self[self._index.id_of(0)] if len(self._index) else None
        return record is not None and record.class_probs is not None

    def _row_location(self, row: int) -> tuple[int, str, int]:
        key = self._index.keys.get(row)
        return int(self._index.files[row]), key if key is not None else image_key(self._index.id_of(row)), row

    def _same_process(self) -> None:
        if os.getpid() != self._pid:  # forked into a DataLoader worker: never reuse the parent's handles
            self._handles, self._groups, self._fds = {}, {}, {}
            self._pid = os.getpid()

    def _file(self, index: int) -> h5py.File:
        self._same_process()
        handle = self._handles.get(index)
        if handle is None:
            handle = open_hdf5(self.paths[index])
            self._handles[index] = handle
        return handle

    def _images(self, index: int) -> h5py.Group:
        """The /images group of file `index`, looked up once per process."""
        handle = self._file(index)
        group = self._groups.get(index)
        if group is None:
            group = self._groups[index] = handle["images"]
        return group

    def _fd(self, index: int) -> int:
        self._same_process()
        fd = self._fds.get(index)
        if fd is None:
            fd = self._fds[index] = os.open(self.paths[index], os.O_RDONLY)
        return fd

    def _where(self, image_id: str) -> tuple[int, str, int]:
        row = self._index.row(image_id)
        if row is None:
            raise FeatureStoreError(
                f"image id {image_id!r} is not in the feature store {[str(p) for p in self.paths]}"
            )
        return self._row_location(row)

    def __getitem__(self, image_id: str | int) -> RegionRecord:
        """One image's record, arrays as stored (features float16 or float32, boxes, scores and
        attribute scores float32, class distributions float16, labels and attributes int64). The arrays are new on every call: the caller may modify them."""
        image_id = str(image_id)
        file_index, key, row = self._where(image_id)
        layout = self._layout(image_id, file_index, key, row)
        if layout is not None:
            return self._read_raw(image_id, file_index, layout)
        return self._read_h5py(image_id, file_index, key)

    def _layout(self, image_id: str, file_index: int, key: str, row: int) -> tuple | None:
        """(offsets, codes, sizes) of a raw-readable image, probing it on first use; None: read with h5py."""
        for attempt in range(2):
            if attempt or self._state[row] == 0:
                self._probe(image_id, file_index, key, row)
            if self._state[row] != 1:
                return None
            offsets, codes, sizes = self._offsets[row].tolist(), self._codes[row].tolist(), self._sizes[row].tolist()
            if -1 not in codes and min(sizes) > 0 and all(o >= 0 for o, c in zip(offsets, codes) if c >= 0):
                return offsets, codes, sizes
            # else another process is still writing this row: probe here (it writes the same values)
        return None

    def _read_h5py(self, image_id: str, file_index: int, key: str) -> RegionRecord:
        try:
            group = self._images(file_index)[key]
            record = RegionRecord(
                image_id=image_id,
                features=group["features"][()],
                boxes=group["boxes"][()],
                image_w=int(group.attrs["image_w"]),
                image_h=int(group.attrs["image_h"]),
                **{name: group[name][()] if name in group else None for name in _ARRAYS[2:]},
            )
        except (KeyError, OSError) as err:  # an array or attribute missing, a linked file gone
            path = self.paths[file_index]
            raise FeatureStoreError(
                f"image {image_id!r} in {path} cannot be read ({err}); run `vlbert check-features {path}`"
            ) from None
        return self._finite(record, file_index)

    def _finite(self, record: RegionRecord, file_index: int) -> RegionRecord:
        """The record, or a FeatureStoreError when it holds NaN or Inf, which would train to a NaN loss."""
        for name in FLOAT_ARRAYS:
            array = getattr(record, name)
            if array is not None and not all_finite(array):
                path = self.paths[file_index]
                raise FeatureStoreError(
                    f"image {record.image_id!r} in {path} has NaN or Inf {name}; run `vlbert check-features {path}` "
                    "to list every bad image, then re-extract them or drop them from the annotations"
                )
        return record

    def _probe(self, image_id: str, file_index: int, key: str, row: int) -> None:
        """Note where image `row`'s arrays lie in its file (h5py's low-level calls: a few HDF5
        object-header reads), and whether all of them can be read as raw bytes (state 1) or not (2)."""
        layout = self._find_layout(file_index, key) if _RAW_READS and self._raw_ok.get(file_index) is not False else None
        if layout is None:
            self._state[row] = 2
            return
        offsets, codes, sizes = layout
        if file_index not in self._raw_ok:  # once per file: raw bytes must equal what h5py reads
            # unchecked: bytes read from the wrong place may well look like NaN; h5py's read is checked
            raw = self._read_raw(image_id, file_index, layout, finite=False)
            record = self._read_h5py(image_id, file_index, key)
            self._raw_ok[file_index] = (raw.image_w, raw.image_h) == (record.image_w, record.image_h) and all(
                (a is None and b is None) or (a is not None and b is not None and a.dtype == b.dtype and a.tobytes() == b.tobytes())
                for a, b in zip(
                    (getattr(raw, name) for name in _ARRAYS),
                    (getattr(record, name) for name in _ARRAYS),
                )
            )
            if not self._raw_ok[file_index]:
                self._state[row] = 2
                return
        self._offsets[row], self._codes[row], self._sizes[row] = offsets, codes, sizes
        self._state[row] = 1

    def _find_layout(self, file_index: int, key: str) -> tuple | None:
        """(offsets, codes, sizes) of an image whose arrays are all contiguous, unfiltered, stored in
        this file (hard links from the root down, no external storage) and of a raw-readable dtype and
        shape; None otherwise (or when something is missing: h5py then raises)."""
        images = self._images(file_index).id
        if not _hard_link(self._file(file_index).id, b"images") or not _hard_link(images, key.encode()):
            return None
        group = h5py.h5g.open(images, key.encode())
        offsets, codes, n = [], [], None
        for column, name in enumerate(_ARRAYS):
            if not group.links.exists(name.encode()):
                if column < 2:  # features and boxes are required
                    return None
                offsets.append(-1)
                codes.append(-2)
                continue
            if not _hard_link(group, name.encode()):
                return None
            dataset = h5py.h5d.open(group, name.encode())
            if dataset.get_create_plist().get_external_count():  # raw data in other files
                return None
            offset, dtype, shape = dataset.get_offset(), dataset.dtype, dataset.shape  # offset: None unless contiguous, unfiltered, allocated
            n = shape[0] if n is None else n
            expected = (n, *self._trailing[column])
            if offset is None or dtype not in _RAW_DTYPES or shape != expected or n <= 0:
                return None
            offsets.append(offset)
            codes.append(_RAW_DTYPES.index(dtype))
        sizes = [n]
        for name in (b"image_w", b"image_h"):
            if not h5py.h5a.exists(group, name):
                return None
            attribute = h5py.h5a.open(group, name)
            value = np.empty(attribute.shape, attribute.dtype)
            attribute.read(value)
            if value.size != 1 or value.dtype.kind not in "iuf" or int(value.reshape(-1)[0]) <= 0:
                return None
            sizes.append(int(value.reshape(-1)[0]))
        return offsets, codes, sizes

    def raw_features(self, image_id: str | int) -> tuple[int, np.dtype] | None:
        """(num_boxes, features dtype) of an image whose arrays are read as raw bytes, which
        `read_into` can then read; None for an image read through h5py."""
        image_id = str(image_id)
        layout = self._layout(image_id, *self._where(image_id))
        return None if layout is None else (layout[2][0], _RAW_DTYPES[layout[1][0]])

    def read_into(self, image_id: str | int, features: np.ndarray) -> RegionRecord:
        """The image's record, with its first len(features) feature rows read straight from the
        file into `features` (C-contiguous, the dtype `raw_features` gives), which becomes the
        record's features: a batch can be filled without an intermediate copy."""
        image_id = str(image_id)
        file_index, key, row = self._where(image_id)
        layout = self._layout(image_id, file_index, key, row)
        if layout is None or features.dtype != _RAW_DTYPES[layout[1][0]] or not features.flags.c_contiguous \
                or features.shape[1:] != (self.feature_dim,) or len(features) > layout[2][0]:
            raise FeatureStoreError(f"image {image_id!r}: cannot read its features into an array {features.dtype} {features.shape}")
        return self._read_raw(image_id, file_index, layout, features)

    def _read_raw(
        self, image_id: str, file_index: int, layout: tuple, features: np.ndarray | None = None, finite: bool = True
    ) -> RegionRecord:
        fd = self._fd(file_index)
        offsets, codes, (n, image_w, image_h) = layout
        arrays = []
        for offset, code, trailing in zip(offsets, codes, self._trailing):
            if code < 0:
                arrays.append(None)
                continue
            out = np.empty((n, *trailing), _RAW_DTYPES[code]) if features is None or arrays else features
            if os.preadv(fd, [out], offset) != out.nbytes:
                raise FeatureStoreError(
                    f"short read of image {image_id!r} from {self.paths[file_index]}: was the file changed while in use?"
                )
            arrays.append(out)
        record = RegionRecord(image_id, arrays[0], arrays[1], image_w, image_h, *arrays[2:])
        return self._finite(record, file_index) if finite else record

    def num_boxes(self, image_id: str | int) -> int:
        image_id = str(image_id)
        file_index, key, row = self._where(image_id)
        layout = self._layout(image_id, file_index, key, row)
        if layout is not None:
            return layout[2][0]
        return int(self._images(file_index)[key].attrs["num_boxes"])

    def check_ids(self, needed: Iterable[str | int], what: str = "the annotations") -> None:
        """Fail before training when ids that `what` need are missing, listing them."""
        missing = self._index.missing(needed)
        if missing:
            shown = ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else "")
            raise FeatureStoreError(
                f"{len(missing)} image id(s) used by {what} have no features in "
                f"{[str(p) for p in self.paths]}: {shown}. Extract features for these images "
                "(vlbert extract) or drop them from the annotations."
            )

    def check_feature_dim(self, expected: int, where: str = "the model config") -> None:
        if expected != self.feature_dim:
            raise FeatureStoreError(
                f"the feature store has {self.feature_dim}-d region features but {where} expects "
                f"{expected}; set region_feature_dim: {self.feature_dim} or use features from a matching detector"
            )

    def close(self) -> None:
        if os.getpid() == self._pid:
            for handle in self._handles.values():
                handle.close()
            for fd in self._fds.values():
                os.close(fd)
        self._handles, self._groups, self._fds = {}, {}, {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"], state["_groups"], state["_fds"] = {}, {}, {}  # pickled into spawned workers without open handles
        return state
