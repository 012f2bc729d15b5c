"""`vlbert show-features`: draw one image's stored regions, to see what extraction kept.

    vlbert show-features world/features.h5 --image-id 1003 --out boxes.png [--image world/images/1003.png] [--top 10]

Boxes are drawn on the image (or, without --image, on a grey canvas of the stored image size),
each tagged with its row in the store (#0, #1, ...: the order the model reads them in; extraction
stores them most confident first), its class name or index when the store has labels or class
probabilities, and that class's probability when it has class probabilities. --top K draws the
first K rows only.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

from vlbert.errors import InputError
from vlbert.features.drawing import (
    PALETTE, PictureError, blank_canvas, check_same_image, draw_boxes, image_figure, load_image, save_figure, show_image,
)


def class_names(provenance: dict) -> list[str] | None:
    """Names of a store's class indices where its provenance says which detector made it: the
    synthetic world's (colour, shape) classes, or the categories of torchvision's published
    weights. None otherwise (a weights file, random weights, detectron2, imported TSV)."""
    if provenance.get("backend") == "synthetic":
        from vlbert.synth.scene import class_name, num_classes

        return [class_name(i) for i in range(num_classes())]
    weights = provenance.get("weights") or {}
    if weights.get("source") == "torchvision" and weights.get("name"):
        try:
            from torchvision.models import get_weight

            return list(get_weight(weights["name"]).meta["categories"])
        except Exception:  # noqa: BLE001 - an unknown name just means: no names
            return None
    return None


def region_tags(record, names: list[str] | None) -> list[str]:
    """'#row [class] [probability]' for every region of a RegionRecord."""
    labels = record.top_labels()
    tags = []
    for row in range(record.num_boxes):
        tag = f"#{row}"
        if labels is not None:
            label = int(labels[row])
            tag += f" {names[label] if names is not None and 0 <= label < len(names) else f'class {label}'}"
            if record.class_probs is not None:
                tag += f" {float(record.class_probs[row, label]):.2f}"
        tags.append(tag)
    return tags


def draw_record(record, pixels: np.ndarray | None = None, names: list[str] | None = None, top: int | None = None):
    """The figure of a RegionRecord's first `top` regions (all when None) on `pixels` (an image of
    its size, at any resolution) or a blank canvas."""
    count = record.num_boxes if top is None else min(top, record.num_boxes)
    figure, ax = image_figure(record.image_w, record.image_h)
    show_image(ax, blank_canvas() if pixels is None else pixels, record.image_w, record.image_h)
    colors = [PALETTE[i % len(PALETTE)] for i in range(count)]
    draw_boxes(ax, record.boxes[:count], colors, linewidth=2.0, tags=region_tags(record, names)[:count])
    caption = f"image {record.image_id}: {count} of {record.num_boxes} regions" + ("" if pixels is not None else " (no image given)")
    figure.text(0.005, 0.005, caption, fontsize=9, ha="left", va="bottom",
                bbox=dict(boxstyle="square,pad=0.25", facecolor="white", edgecolor="none", alpha=0.8))
    return figure


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlbert show-features",
                                     description="Draw one image's stored regions (boxes, classes, scores) to a picture.")
    parser.add_argument("features", help="feature file (vlbert extract / synth / import-tsv)")
    parser.add_argument("--image-id", required=True, help="the image's id in the feature file")
    parser.add_argument("--out", required=True, help="picture to write (.png; .pdf or .svg by suffix)")
    parser.add_argument("--image", help="the image file; without it the boxes are drawn on a blank canvas of the stored size")
    parser.add_argument("--top", type=int, metavar="K", help="draw only the first K regions (the most confident, as extraction stores them)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.top is not None and args.top < 1:
        parser.error("--top must be at least 1")
    from vlbert.featstore import FeatureStore

    try:
        store = FeatureStore(args.features)  # a file it cannot read: FeatureStoreError, one line
        if args.image_id not in store:
            raise PictureError(f"image {args.image_id!r} has no regions in {args.features} ({len(store)} images)")
        record = store[args.image_id]
        pixels = None
        if args.image is not None:
            pixels, width, height = load_image(args.image)
            check_same_image((width, height), (record.image_w, record.image_h), args.image)
        figure = draw_record(record, pixels, class_names(store.provenance), args.top)
        out = save_figure(figure, args.out)
    except (InputError, OSError) as err:  # FeatureStoreError, PictureError; OSError: the picture cannot be written
        print(f"vlbert show-features: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
