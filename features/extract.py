"""`vlbert extract`: images -> region features in one HDF5 file, safe to kill and rerun.

Flow: list images (id = relative path without extension) -> keep this shard's ids -> skip ids
already in the output or in finished part files -> decode in DataLoader workers -> batched
detector -> records into small part files ``<output>.parts/part-*.h5`` (each one renamed into
place only when complete) -> at the end, the existing output and all parts are merged into
``<output>.tmp`` and renamed onto ``<output>``; the parts are removed.

So the file the user sees is always complete or absent; a kill -9 loses at most the images in
the unfinished part; a rerun picks up the finished parts and extracts only what is missing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from jsonargparse import ActionConfigFile, ActionYesNo, Namespace

from vlbert.errors import InputError
from vlbert.features.launcher import launched_device, resolve_shard
from vlbert.featstore import FeatureStore, FeatureStoreError, FeatureWriter, RegionRecord, read_header
from vlbert.features.config import (
    FIELDS, ConfigError, ExtractConfig, SettingsParser, add_config_arguments, config_from, describe_error,
)
from vlbert.features.images import DecodedImage, ImageFolderDataset, ImageListError, collate_decoded, list_images
from vlbert.features.provenance import ProvenanceMismatch, check_same, run_info

log = logging.getLogger("vlbert.extract")

PARTS_SUFFIX = ".parts"


class ExtractError(InputError):
    """A run that cannot start as asked (bad boxes file, shard flags, a locked or foreign output)."""


@dataclass
class Failure:
    image_id: str
    path: str
    reason: str


@dataclass
class ExtractResult:
    """Counts of one run over this shard's images."""

    output: Path
    total: int  # images of this shard
    extracted: int  # written by this run
    already_done: int  # found in the output or in part files of an earlier run
    failures: list[Failure] = field(default_factory=list)
    failures_path: Path | None = None

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def done(self) -> int:
        return self.extracted + self.already_done


# ----------------------------------------------------------------------------------------- inputs


def shard_of(image_id: str, num_shards: int) -> int:
    """Stable shard of an image id (independent of listing order and of which images exist)."""
    return zlib.crc32(image_id.encode("utf-8")) % num_shards


def shard_output_path(output: str | os.PathLike, num_shards: int, shard_index: int) -> Path:
    """`{shard}` in the name is replaced by the index; otherwise shards get a `.shardIIIII-of-KKKKK` infix."""
    output = Path(output)
    if "{shard}" in output.name:
        return output.with_name(output.name.replace("{shard}", str(shard_index)))
    if num_shards == 1:
        return output
    return output.with_name(f"{output.stem}.shard{shard_index:05d}-of-{num_shards:05d}{output.suffix}")


def failures_path_for(output: Path) -> Path:
    return output.with_name(output.stem + ".failures.json")


def parts_dir_for(output: Path) -> Path:
    return output.with_name(output.name + PARTS_SUFFIX)


def load_given_boxes(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read {"image id": [[x1, y1, x2, y2], ...]} (image pixels); malformed entries are errors up front."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ExtractError(f"cannot read boxes file {path}: {err}") from None
    if not isinstance(raw, dict):
        raise ExtractError(f"{path}: expected a JSON object {{image id: [[x1, y1, x2, y2], ...]}}")
    boxes: dict[str, np.ndarray] = {}
    for image_id, entries in raw.items():
        where = f"{path}: image {image_id!r}"
        try:
            array = np.asarray(entries, dtype=np.float32).reshape(-1, 4) if len(entries) else np.zeros((0, 4), np.float32)
        except (TypeError, ValueError):
            raise ExtractError(f"{where}: boxes must be a list of [x1, y1, x2, y2] number lists") from None
        if len(entries) and np.asarray(entries, dtype=object).shape != (len(entries), 4):
            raise ExtractError(f"{where}: every box must have exactly 4 numbers [x1, y1, x2, y2]")
        bad = ~np.isfinite(array).all(1) | (array[:, 2] <= array[:, 0]) | (array[:, 3] <= array[:, 1])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ExtractError(f"{where}: box {i} {entries[i]} is not x1 < x2, y1 < y2 (absolute pixels, x1 y1 x2 y2)")
        boxes[str(image_id)] = array
    return boxes


def _clip_given(boxes: np.ndarray, width: int, height: int) -> tuple[np.ndarray | None, str | None]:
    if len(boxes) == 0:
        return None, "no boxes given for this image"
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        return None, f"given box {i} {boxes[i].tolist()} lies outside the {width}x{height} image"
    return clipped, None


# ----------------------------------------------------------------------------------------- output


class _OutputLock:
    """One extraction per output at a time (an advisory lock the OS drops if the process dies)."""

    def __init__(self, parts_dir: Path) -> None:
        self.path = parts_dir / ".lock"
        self.handle = None

    def __enter__(self) -> "_OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a")
        try:
            import fcntl

            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock
            pass
        except OSError:
            self.handle.close()
            raise ExtractError(
                f"another `vlbert extract` is writing {self.path.parent}; wait for it or choose another --output"
            ) from None
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.path.unlink(missing_ok=True)  # while still held: no one else is inside
            self.handle.close()


def _finished_parts(parts_dir: Path) -> list[Path]:
    if not parts_dir.is_dir():
        return []
    for stale in parts_dir.glob("*.tmp"):  # a part being written when the process died
        stale.unlink(missing_ok=True)
    return sorted(parts_dir.glob("part-*.h5"))


def _stored_ids(path: Path) -> list[str]:
    store = FeatureStore(path)
    try:
        return store.ids
    finally:
        store.close()


def _check_existing(path: Path, provenance: dict, what: str) -> dict:
    try:
        header = read_header(path)
    except (OSError, FeatureStoreError) as err:
        raise ExtractError(
            f"{path} exists but is not a readable vlbert feature file ({err}); it is left untouched: "
            "choose another --output"
        ) from None
    check_same(provenance, header["provenance"], "this run's settings", f"{what} {path}",
               "Use the original settings to resume, or write to another --output.")
    return header


def _merge_into_output(output: Path, parts: list[Path], provenance: dict) -> int:
    """Existing output + parts -> one file, atomically replacing the output. Returns images written."""
    sources = ([output] if output.exists() else []) + parts
    header = read_header(parts[0])
    writer = FeatureWriter(output, header["feature_dim"], header["num_classes"], provenance,
                           dtype=header["dtype"], overwrite=True, class_names=header["class_names"],
                           attribute_names=header["attribute_names"])
    written: set[str] = set()
    try:
        for source in sources:
            store = FeatureStore(source)
            try:
                for image_id in store.ids:
                    if image_id not in written:  # a rerun after a kill between rename and cleanup
                        writer.add(store[image_id])
                        written.add(image_id)
            finally:
                store.close()
    except BaseException:
        writer.abort()
        raise
    writer.close()
    for part in parts:
        part.unlink()
    return len(written)


def _write_failures(path: Path, failures: list[Failure], images_dir: Path, output: Path) -> Path | None:
    if not failures:
        path.unlink(missing_ok=True)  # a stale list from an earlier run no longer applies
        return None
    payload = {
        "output": str(output),
        "images": str(images_dir),
        "count": len(failures),
        "failures": [dataclasses.asdict(f) for f in failures],
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------- the run


def _infer(backend, images: list[DecodedImage], boxes: list[np.ndarray] | None, failures: list[Failure]):
    """Run a batch; if it fails, run its images one by one so only the culprit is skipped."""
    def call(items, item_boxes):
        return backend.pool(items, item_boxes) if item_boxes is not None else backend.detect(items)

    try:
        return list(zip(images, call(images, boxes)))
    except (RuntimeError, ValueError) as err:
        if len(images) == 1:
            failures.append(Failure(images[0].image_id, images[0].path, f"detector error: {type(err).__name__}: {err}"))
            return []
        out = []
        for i, image in enumerate(images):
            out.extend(_infer(backend, [image], None if boxes is None else [boxes[i]], failures))
        return out


class _PartWriter:
    """Writes records into successive part files of about `flush_every` images each; `names`: the
    FeatureWriter's class_names / attribute_names."""

    def __init__(self, parts_dir: Path, feature_dim: int, num_classes: int, provenance: dict,
                 dtype: str, flush_every: int, names: dict[str, list[str] | None] | None = None) -> None:
        self.parts_dir = parts_dir
        self.args = (feature_dim, num_classes, provenance, dtype)
        self.names = names or {}
        self.flush_every = flush_every
        self.run = uuid.uuid4().hex[:8]
        self.sequence = 0
        self.writer: FeatureWriter | None = None

    def add(self, record: RegionRecord) -> None:
        if self.writer is None:
            path = self.parts_dir / f"part-{self.run}-{self.sequence:06d}.h5"
            self.sequence += 1
            self.writer = FeatureWriter(path, *self.args[:3], dtype=self.args[3], **self.names)
        self.writer.add(record)

    def end_of_batch(self) -> None:
        # parts end on batch boundaries, so a resumed run batches the remaining images as before
        if self.writer is not None and self.writer.count >= self.flush_every:
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _record(item: DecodedImage, regions) -> RegionRecord:
    return RegionRecord(item.image_id, regions.features, regions.boxes, item.width, item.height,
                        class_probs=regions.class_probs, labels=regions.labels, scores=regions.scores,
                        attributes=regions.attributes, attribute_scores=regions.attribute_scores)


def _extract_todo(todo: list[tuple[str, Path]], given: dict[str, np.ndarray] | None, config: ExtractConfig,
                  parts_dir: Path, provenance: dict, progress: bool, failures: list[Failure]) -> int:
    from tqdm.auto import tqdm

    from vlbert.features.backends import build_backend, resolve_device

    device = resolve_device(config.device)
    backend = build_backend(config, device)
    dataset = ImageFolderDataset(todo, config.min_size, config.max_size, config.max_image_pixels)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, shuffle=False, num_workers=config.num_workers,
        collate_fn=collate_decoded, pin_memory=device.type == "cuda",
        prefetch_factor=2 if config.num_workers > 0 else None,
    )
    names = {"class_names": getattr(backend, "class_names", None),
             "attribute_names": getattr(backend, "attribute_names", None)}
    parts = _PartWriter(parts_dir, backend.feature_dim, backend.num_classes, provenance, config.dtype,
                        config.flush_every, names)
    extracted = 0
    bar = tqdm(total=len(todo), unit="img", desc="extract", disable=not progress, dynamic_ncols=True)
    try:
        for batch in loader:
            ready, ready_boxes = [], []
            for item in batch:
                if item.error is not None:
                    failures.append(Failure(item.image_id, item.path, item.error))
                    continue
                if given is not None:
                    boxes, reason = _clip_given(given[item.image_id], item.width, item.height)
                    if reason is not None:
                        failures.append(Failure(item.image_id, item.path, reason))
                        continue
                    ready_boxes.append(boxes)
                ready.append(item)
            results = _infer(backend, ready, ready_boxes if given is not None else None, failures) if ready else []
            for item, regions in results:
                if len(regions.features) == 0:  # nothing to train on: a failure, not an extracted image
                    failures.append(Failure(item.image_id, item.path, "no regions: the detector proposed no box"))
                    continue
                record = _record(item, regions)
                try:
                    parts.add(record)
                except FeatureStoreError as err:  # e.g. NaN features from a broken detector
                    failures.append(Failure(item.image_id, item.path, str(err)))
                    continue
                extracted += 1
            parts.end_of_batch()
            bar.update(len(batch))
    finally:
        parts.close()  # records already added are complete: keep them, even on Ctrl-C
        bar.close()
    return extracted


def _provenance(config: ExtractConfig, boxes_json: str | os.PathLike | None) -> dict:
    from vlbert.features.backends import model_identity, sha256_file

    prov: dict[str, Any] = {"backend": config.backend, **model_identity(config)}
    prov["settings"] = config.output_settings()
    if not config.detector:
        prov["regions"] = {"source": config.backend}  # one region per patch / grid cell
    elif boxes_json is not None:
        prov["regions"] = {"source": "given", "boxes_file": Path(boxes_json).name,
                           "boxes_sha256": sha256_file(str(boxes_json))}
    else:
        prov["regions"] = {"source": "detected", "selection": dataclasses.asdict(config.selection)}
    return prov


def extract(
    images_dir: str | os.PathLike,
    output: str | os.PathLike,
    config: ExtractConfig | None = None,
    boxes_json: str | os.PathLike | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
    strict: bool = False,
    progress: bool = True,
) -> ExtractResult:
    """Extract region features of the images under `images_dir` (this shard's share) into `output`.

    Resumable: rerunning with the same settings skips finished images. With `boxes_json`
    ({"image id": [[x1, y1, x2, y2], ...]}) features are pooled on those boxes, for the images
    listed there only. `strict` only affects the CLI exit status (any failure -> 1).
    """
    config = config or ExtractConfig()
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ExtractError(f"--shard_index must be in [0, {num_shards}) and --num_shards >= 1, "
                           f"got {shard_index} of {num_shards}")
    images_dir = Path(images_dir)
    images = list_images(images_dir)
    given = None
    if boxes_json is not None and not config.detector:
        raise ExtractError(f"--boxes needs a detector backend (torchvision, detectron2); backend {config.backend} "
                           "makes its own regions (one per patch / grid cell)")
    if boxes_json is not None:
        given = load_given_boxes(boxes_json)
        missing = sorted(set(given) - set(images))
        if missing:
            raise ExtractError(
                f"{len(missing)} image id(s) in {boxes_json} have no image under {images_dir}: "
                f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}"
            )
        images = {image_id: path for image_id, path in images.items() if image_id in given}
    mine = [image_id for image_id in sorted(images) if shard_of(image_id, num_shards) == shard_index]
    output = shard_output_path(output, num_shards, shard_index)
    parts_dir = parts_dir_for(output)
    provenance = _provenance(config, boxes_json)
    provenance["run"] = run_info(num_shards=num_shards, shard_index=shard_index, images=str(images_dir))

    failures: list[Failure] = []
    try:
        with _OutputLock(parts_dir):
            done: set[str] = set()
            if output.exists():
                _check_existing(output, provenance, "the existing output")
                done.update(_stored_ids(output))
            for part in _finished_parts(parts_dir):
                _check_existing(part, provenance, "the unfinished run's part")
                done.update(_stored_ids(part))
            todo = [(image_id, images[image_id]) for image_id in mine if image_id not in done]
            already = len(mine) - len(todo)
            log.info("%d images in shard %d/%d: %d already done, %d to extract",
                     len(mine), shard_index, num_shards, already, len(todo))
            extracted = 0
            if todo:
                extracted = _extract_todo(todo, given, config, parts_dir, provenance, progress, failures)
            parts = _finished_parts(parts_dir)
            if parts:
                _merge_into_output(output, parts, provenance)
    finally:
        if parts_dir.is_dir() and not any(parts_dir.iterdir()):
            parts_dir.rmdir()
    failures_path = _write_failures(failures_path_for(output), failures, images_dir, output)
    return ExtractResult(output, len(mine), extracted, already, failures, failures_path)


# ----------------------------------------------------------------------------------------- CLI

# What to extract, besides the settings (ExtractConfig fields): also keys of a --config file.
RUN_KEYS = ("images", "output", "boxes", "num_shards", "shard_index", "strict", "progress")

# The argparse spellings of earlier versions, still accepted: old flag -> jsonargparse flag.
LEGACY_FLAGS = {
    "--num-shards": "--num_shards", "--shard-index": "--shard_index", "--no-progress": "--no_progress",
    "--print-config": "--print_config",
    **{"--" + name.replace("_", "-"): "--" + name for name in FIELDS if "_" in name},
}
_LEGACY_LISTS = ("--detectron2-setup", "--detectron2-opts")  # took any number of values: --detectron2-opts A 1


def modern_argv(argv: list[str]) -> list[str]:
    """Rewrites the old dash spellings (`--num-shards 4`, `--min-size=600`) to today's flags."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        flag, eq, value = arg.partition("=")
        if flag not in LEGACY_FLAGS:
            out.append(arg)
        elif flag in _LEGACY_LISTS:
            values = [value] if eq else []
            while not eq and i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
            out.append(f"{LEGACY_FLAGS[flag]}={json.dumps(values)}")
        else:
            out.append(LEGACY_FLAGS[flag] + eq + value)
    return out


def build_parser() -> SettingsParser:
    parser = SettingsParser(
        prog="vlbert extract",
        description="Extract region features (detector regions, patch tokens or grid cells) from an image folder "
                    "into one HDF5 file. "
                    "Safe to interrupt: rerun the same command to finish.",
        epilog="Every key is a flag and a key of a --config YAML file (e.g. configs/extract/torchvision.yaml); "
               "later arguments win over earlier ones, so put --config first. Lists: --detectron2_opts "
               "'[MODEL.RPN.NMS_THRESH, 0.7]'. Exit status: 0 done, 1 no image extracted (or any failure "
               "with --strict), 2 unusable arguments. The dash spellings of earlier versions (--num-shards, "
               "--shard-index, --no-progress, --print-config, --min-size, ...) are still accepted.",
    )
    parser.add_argument("--config", action=ActionConfigFile,
                        help="extraction YAML of the keys below, e.g. configs/extract/torchvision.yaml")
    run = parser.add_argument_group("What to extract")
    run.add_argument("--images", type=str, required=True, help="folder of images (searched recursively)")
    run.add_argument("--output", type=str, required=True,
                     help="output .h5 file ({shard} is replaced by the shard index)")
    run.add_argument("--boxes", type=Optional[str], default=None,
                     help="JSON {image id: [[x1, y1, x2, y2], ...]}: features for these boxes only")
    run.add_argument("--num_shards", type=Optional[int], default=None,
                     help="split the images into K shards (one per GPU/node); default: torchrun's / srun's world size, else 1")
    run.add_argument("--shard_index", type=Optional[int], default=None,
                     help="which shard this process extracts (0-based); default: torchrun's / srun's rank, else 0")
    run.add_argument("--strict", action=ActionYesNo, nargs="?", default=False,
                     help="exit with status 1 if any image fails")
    run.add_argument("--progress", action=ActionYesNo, nargs="?", default=True, help="show a progress bar")
    add_config_arguments(parser)
    return parser


def _config_files(argv: list[str]) -> list[str]:
    files = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
    return files + [arg.partition("=")[2] for arg in argv if arg.startswith("--config=")]


def parse_args(argv: list[str]) -> tuple[Namespace, ExtractConfig]:
    """The parsed arguments and their checked ExtractConfig; errors are ConfigError, in one line."""
    argv = modern_argv(argv)
    try:
        args = build_parser().parse_args(argv)
        return args, config_from(args)
    except argparse.ArgumentError as err:
        message = describe_error(err, RUN_KEYS + FIELDS)
        files = _config_files(argv)
        if "is not accepted" in str(err) and len(files) == 1:  # an unknown key in the --config file
            message = f"--config {files[0]}: {message}"
        raise ConfigError(f"{message} (see vlbert extract --help)") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args, config = parse_args(argv)
    except SystemExit as done:  # --help, --print_config
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 2)
    except ConfigError as err:
        print(f"vlbert extract: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        num_shards, shard_index, launched = resolve_shard(args.num_shards, args.shard_index)
        if launched is not None:  # one process per GPU: each its own shard, on its own device
            config = dataclasses.replace(config, device=launched_device(config.device, launched, torch.cuda.is_available()))
            log.info("%s: shard %d of %d on %s", launched.launcher, shard_index, num_shards, config.device)
        result = extract(args.images, args.output, config, boxes_json=args.boxes, num_shards=num_shards,
                         shard_index=shard_index, strict=args.strict, progress=args.progress)
    except (InputError, FileExistsError) as err:  # ConfigError, ExtractError, FeatureStoreError, ...
        print(f"vlbert extract: error: {err}", file=sys.stderr)
        return 2
    summary = (f"{result.output}: {result.extracted} extracted, {result.already_done} already done, "
               f"{result.failed} failed of {result.total} images")
    if result.failures_path is not None:
        summary += f" (reasons in {result.failures_path})"
    print(summary, file=sys.stderr)
    if result.total and result.done == 0:
        print("vlbert extract: error: no image could be extracted", file=sys.stderr)
        return 1
    if args.strict and result.failed:
        print("vlbert extract: error: failures under --strict", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
