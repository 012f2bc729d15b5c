"""`vlbert caption evaluate`: the COCO caption metrics of a results file.

    vlbert caption evaluate --annotations captions_val2014.json --results results.json
    vlbert caption evaluate --annotations dataset_coco.json --split test --results results.json

Results are COCO's ``[{"image_id": 391895, "caption": "a man riding a bike"}, ...]`` (what
`vlbert caption predict` writes), one caption per image. References: COCO captions JSON, a
Karpathy-split file with `--split`, or JSONL caption lines. Prints one JSON object: COCOEvalCap's
`eval` values (fractions), the tokenization used and notes on what was skipped (stderr too).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from vlbert.tasks.caption.data import CaptionDataError, load_captions
from vlbert.tasks.caption.metric import METRICS, TOKENIZATIONS, CaptionScores, caption_scores


def read_results(path: str | os.PathLike) -> dict:
    """{image id: caption} of a COCO results file, checked: a list of {"image_id", "caption"} with
    one caption per image."""
    path = Path(path)
    if not path.is_file():
        raise CaptionDataError(f"results file {path} does not exist")
    try:
        rows = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CaptionDataError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(rows, list):
        raise CaptionDataError(f"{path}: results must be a JSON list of {{'image_id', 'caption'}} objects")
    predictions: dict = {}
    for n, row in enumerate(rows):
        if not isinstance(row, dict) or "image_id" not in row or not isinstance(row.get("caption"), str):
            raise CaptionDataError(f"{path} entry #{n}: expected {{'image_id': ..., 'caption': str}}, got {str(row)[:80]}")
        if row["image_id"] in predictions:
            raise CaptionDataError(f"{path}: image {row['image_id']!r} has more than one caption; the COCO metrics score one per image")
        predictions[row["image_id"]] = row["caption"]
    return predictions


def evaluate_files(annotations: str | os.PathLike, results: str | os.PathLike, splits: Sequence[str] | None = None,
                   image_id_from: str = "stem", metrics: Sequence[str] = METRICS, tokenization: str = "auto",
                   allow_missing: bool = False) -> CaptionScores:
    """The metrics of a results file against the references of `annotations` (`splits` of a
    Karpathy file). Every image of the references must have a caption unless `allow_missing`
    (then only the captioned ones are scored, as COCOEvalCap with params["image_id"] set to them)."""
    split = load_captions(annotations, splits, image_id_from)
    split.check_references()
    references = split.reference_map()
    predictions = read_results(results)
    unknown = [key for key in predictions if key not in references]
    if unknown:
        hint = ""
        if all(isinstance(k, str) for k in unknown) and any(isinstance(k, int) for k in references):
            hint = " (the results' ids are strings, the references' integers)"
        raise CaptionDataError(f"{results}: {len(unknown)} image id(s) are not in {split.source}{hint}: {unknown[:10]}")
    missing = [key for key in references if key not in predictions]
    if missing and not allow_missing:
        raise CaptionDataError(f"{results} captions {len(predictions)} of the {len(references)} images of {split.source}; "
                               f"missing e.g. {missing[:5]} (--allow-missing scores the captioned ones only)")
    scores = caption_scores(references, predictions, metrics, tokenization)
    if missing:
        scores.notes.append(f"scored the {len(predictions)} captioned images of {len(references)}")
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vlbert caption evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotations", required=True, help="references: COCO captions JSON, Karpathy JSON (with --split) or JSONL")
    parser.add_argument("--results", required=True, help='COCO results JSON: [{"image_id", "caption"}, ...]')
    parser.add_argument("--split", action="append", help="Karpathy split(s) to read (repeat for several)")
    parser.add_argument("--image-id-from", default="stem", help="feature ids of the annotations (see docs/captioning.md)")
    parser.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    parser.add_argument("--tokenization", default="auto", choices=TOKENIZATIONS,
                        help="auto: pycocoevalcap's PTB tokenizer when java is present, else vlbert's simple one")
    parser.add_argument("--allow-missing", action="store_true", help="score only the images the results caption")
    args = parser.parse_args(argv)
    scores = evaluate_files(args.annotations, args.results, args.split, args.image_id_from, args.metrics,
                            args.tokenization, args.allow_missing)
    for note in scores.notes:
        print(f"vlbert caption evaluate: note: {note}", file=sys.stderr)
    print(json.dumps({**scores.scores, "tokenization": scores.tokenization, "notes": scores.notes}))
    return 0
