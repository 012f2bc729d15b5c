"""`vlbert merge-features`: join shard files into one feature file.

Shards must have been made identically (same backend, model, weights and settings: their
provenance identities must be equal; the same class and attribute names) and must not share image
ids. Every array of a record (scores and attributes included) and the names are carried over. Records are streamed one
at a time into ``<output>.tmp``, renamed into place at the end.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

import h5py

from vlbert.featstore import FeatureStore, FeatureStoreError, FeatureWriter, names_difference, read_header
from vlbert.features.provenance import ProvenanceMismatch, check_same, identity, run_info


def _image_ids(path: Path) -> list[str]:
    with h5py.File(path, "r") as f:
        return [str(group.attrs.get("image_id", key)) for key, group in f["images"].items()]


def merge_features(inputs: Sequence[str | os.PathLike], output: str | os.PathLike, overwrite: bool = False) -> int:
    """Merge feature files into `output`; returns the number of images. Refuses differing provenance
    and duplicate image ids (each image must come from exactly one shard)."""
    paths = [Path(p) for p in inputs]
    if not paths:
        raise FeatureStoreError("no input feature files given")
    output = Path(output)
    if output.resolve() in {p.resolve() for p in paths}:
        raise FeatureStoreError(f"{output} is also an input; write the merged file elsewhere")
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} exists; choose another --output or pass --overwrite")
    headers = [read_header(p) for p in paths]
    first = headers[0]
    for path, header in zip(paths[1:], headers[1:]):
        check_same(first["provenance"], header["provenance"], str(paths[0]), str(path),
                   "Only shards of one extraction (same backend, weights and settings) can be merged.")
        for key in ("feature_dim", "num_classes", "dtype"):
            if header[key] != first[key]:
                raise ProvenanceMismatch(f"{path} has {key}={header[key]} but {paths[0]} has {first[key]}")
        for key in ("class_names", "attribute_names"):
            if header[key] != first[key]:
                raise ProvenanceMismatch(f"{path} and {paths[0]} have different {key} "
                                         f"({names_difference(first[key], header[key])}); merge shards of one detector")
    seen: dict[str, Path] = {}
    for path in paths:
        for image_id in _image_ids(path):
            if image_id in seen:
                raise FeatureStoreError(
                    f"image {image_id!r} is in both {seen[image_id]} and {path}; shards must not overlap"
                )
            seen[image_id] = path
    provenance = identity(first["provenance"])
    provenance["run"] = run_info(merged_from=[p.name for p in paths],
                                 shard_runs=[h["provenance"].get("run", {}) for h in headers])
    writer = FeatureWriter(output, first["feature_dim"], first["num_classes"], provenance, dtype=first["dtype"],
                           overwrite=overwrite, class_names=first["class_names"],
                           attribute_names=first["attribute_names"])
    try:
        for path in paths:
            store = FeatureStore(path)
            try:
                for image_id in store.ids:
                    writer.add(store[image_id])
            finally:
                store.close()
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return len(seen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vlbert merge-features",
        description="Merge feature shards (from `vlbert extract --num-shards K`) into one file.",
    )
    parser.add_argument("inputs", nargs="+", help="shard .h5 files (or folders of them)")
    parser.add_argument("--output", required=True, help="merged .h5 file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    inputs: list[Path] = []
    for name in args.inputs:
        p = Path(name)
        inputs.extend(sorted(p.glob("*.h5")) if p.is_dir() else [p])
    missing = [str(p) for p in inputs if not p.is_file()]
    if missing:
        print(f"vlbert merge-features: error: not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        count = merge_features(inputs, args.output, overwrite=args.overwrite)
    except (FeatureStoreError, ProvenanceMismatch, FileExistsError, OSError) as err:
        print(f"vlbert merge-features: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.output}: {count} images from {len(inputs)} files", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
