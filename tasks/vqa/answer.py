"""`vlbert answer`: answer questions about one image with a fine-tuned VQA model directory.

    vlbert answer --model runs/vqa/export --image photo.jpg --question "what color is the bus?"
    vlbert answer --model runs/vqa_tiny/export --features world/features.h5 --image-id 1003 \\
                  --question "how many circles are there?"

With ``--image`` the regions are extracted on the fly by the detector the model's training
features came from, with the same settings: both are read from the model directory's
features.json (the feature file's provenance), and the rebuilt detector is checked against it.
A detector weights file is not stored in the model directory: pass it with ``--detector-weights``
(its SHA-256 must match). With ``--features`` / ``--image-id`` the stored regions are used.

``--save-image out.png`` also draws, per question, the regions on the image with the ones the
answer relied on most highlighted, beside the top answers and their scores (`answer_figure`).
"Relied on" is read from the attention of [CLS] (query position 0) to the region positions in the
last encoder layer, averaged over heads (`region_attention`). With ``--features`` the picture is
drawn on ``--image`` when given (the regions still come from the store), else on a blank canvas of
the stored image size.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

from vlbert.errors import InputError
from vlbert.data.collate import collate_inputs
from vlbert.data.tags import ObjectTags
from vlbert.data.regions import box_locations
from vlbert.data.tokenizer import load_tokenizer
from vlbert.modeling import VLBertForVQA
from vlbert.modeling.vqa import INPUTS_FILE


DEFAULT_INPUTS = {"max_text_len": 40, "max_regions": 100}


class AnswerError(InputError):
    """A request `vlbert answer` cannot serve, with what to do instead."""


def model_inputs(model_dir: str | Path) -> dict:
    """The input settings the model was fine-tuned with (vqa.json), else the data defaults; with
    object tags also "object_tags", "max_tags" and the "class_names" the tags were made from."""
    path = Path(model_dir) / INPUTS_FILE
    stored = json.loads(path.read_text()) if path.is_file() else {}
    tags = ("object_tags", "max_tags", "class_names") if stored.get("object_tags") else ()
    return {**DEFAULT_INPUTS, **{k: v for k, v in stored.items() if k in DEFAULT_INPUTS or k in tags}}


def model_tags(inputs: dict, tokenizer, model_dir: str | Path) -> ObjectTags | None:
    """The object tags the model was fine-tuned with, made from the same class names; None without."""
    if not inputs.get("object_tags"):
        return None
    return ObjectTags(inputs.get("class_names"), tokenizer, inputs["max_tags"], source=f"{Path(model_dir) / INPUTS_FILE}")


def features_provenance(model_dir: str | Path) -> dict:
    path = Path(model_dir) / "features.json"
    if not path.is_file():
        raise AnswerError(f"{path} not found: the model directory does not say which region features it was "
                          "trained on, so regions cannot be extracted to match; use --features and --image-id")
    return json.loads(path.read_text())


def extraction_config(provenance: dict, detector_weights: str | None = None, device: str = "auto"):
    """The ExtractConfig that reproduces the training features' detector and box selection."""
    from vlbert.features.config import ExtractConfig

    backend = provenance.get("backend")
    if backend == "synthetic":
        raise AnswerError("this model was trained on synthetic-world features, which are computed from scene "
                          "descriptions, not extracted from pixels; answer from the stored features with "
                          "--features FILE --image-id ID")
    if (provenance.get("regions") or {}).get("source") == "given":
        raise AnswerError("the training features were pooled from given boxes, not detected; there is no box "
                          "selection to repeat on a new image; use --features and --image-id")
    settings = provenance.get("settings")
    weights = provenance.get("weights") or {}
    if not isinstance(settings, dict) or backend is None:
        raise AnswerError("features.json has no detector settings (provenance 'backend' / 'settings'); "
                          "use --features and --image-id")
    fields = {f.name for f in dataclasses.fields(ExtractConfig)}
    values = {k: v for k, v in settings.items() if k in fields}
    values.update(batch_size=1, num_workers=0, device=device)
    source = weights.get("source")
    if detector_weights is not None:
        values["weights"] = detector_weights
    elif source == "none":
        values.update(weights="none", seed=weights.get("seed", 0))
    elif source == "torchvision" and weights.get("name"):
        values["weights"] = weights["name"].rsplit(".", 1)[-1]
    else:
        raise AnswerError(f"the training features came from detector weights {weights.get('file') or weights!r}, "
                          "which are not stored with the model; pass the file with --detector-weights")
    return ExtractConfig(**values)


def check_detector(config, provenance: dict) -> None:
    """The rebuilt detector must be the one (weights included) that made the training features."""
    from vlbert.features.backends import model_identity
    from vlbert.features.provenance import differences

    rebuilt = {"backend": config.backend, **model_identity(config), "settings": config.output_settings()}
    stored = {key: provenance[key] for key in rebuilt if key in provenance}
    diff = differences(stored, {key: rebuilt[key] for key in stored})
    if diff:
        raise AnswerError(f"the detector rebuilt for this image differs from the one that made the model's "
                          f"training features in: {', '.join(diff[:8])}; its regions would not match what the "
                          "model learned from")


def detect_regions(image: str | Path, provenance: dict, detector_weights: str | None, device: str):
    """(features [N, D], boxes [N, 4], width, height) of one image from the training features' detector."""
    from vlbert.features.backends import build_backend, resolve_device
    from vlbert.features.images import ImageFolderDataset

    config = extraction_config(provenance, detector_weights, device)
    check_detector(config, provenance)
    if not Path(image).is_file():
        raise AnswerError(f"image {image} does not exist")
    # Decoded exactly as `vlbert extract` decodes (EXIF orientation, size limits, resizing).
    decoded = ImageFolderDataset([(Path(image).stem, Path(image))], config.min_size, config.max_size, config.max_image_pixels)[0]
    if decoded.error is not None:
        raise AnswerError(f"cannot decode image {image}: {decoded.error}")
    backend = build_backend(config, resolve_device(config.device))
    regions = backend.detect([decoded])[0]
    width, height = decoded.width, decoded.height
    return regions.features, regions.boxes, width, height, regions.labels


def stored_regions(features: str, image_id: str, provenance: dict | None):
    """(features, boxes, width, height, top labels or None) of an image in a feature store made like
    the model's training features."""
    from vlbert.featstore import FeatureStore
    from vlbert.features.provenance import differences, identity

    store = FeatureStore(features)
    if provenance is not None:
        diff = differences(identity(provenance), identity(store.provenance))
        if diff:
            raise AnswerError(f"{features} was made differently from the model's training features ({', '.join(diff[:8])})")
    if image_id not in store:
        raise AnswerError(f"image {image_id!r} has no features in {features}")
    record = store[image_id]
    return record.features, record.boxes, record.image_w, record.image_h, record.top_labels()


def question_batch(tokenizer, questions: list[str], regions: tuple, max_text_len: int, max_regions: int,
                   tags: ObjectTags | None = None) -> dict:
    """The model inputs of every question about one image: the same first `max_regions` regions each
    (regions: features, boxes, width, height[, top labels]); with `tags`, the regions' object tags
    follow each question, as in fine-tuning."""
    features, boxes, width, height, *rest = regions
    features = np.asarray(features[:max_regions], dtype=np.float32)
    locations = box_locations(np.asarray(boxes[:max_regions]), width, height)
    encoded = tokenizer(questions, truncation=True, max_length=max_text_len)["input_ids"]
    items = [{"input_ids": np.asarray(ids, dtype=np.int64), "region_features": features, "region_locations": locations}
             for ids in encoded]
    if tags is not None:
        labels = rest[0] if rest else None
        if labels is None:
            raise AnswerError("the model was fine-tuned with object tags, but these regions have no detector class "
                              "labels to make them from; give regions from a detector with classes")
        for item in items:
            item["input_ids"], item["token_type_ids"] = tags.append_to(item["input_ids"], labels, max_regions)
    return collate_inputs(items, tokenizer.pad_token_id)


@torch.no_grad()
def answer_questions(model: VLBertForVQA, tokenizer, questions: list[str], regions: tuple, max_text_len: int,
                     max_regions: int, top_k: int = 5, tags: ObjectTags | None = None) -> list[list[tuple[str, float]]]:
    """Top-k (answer, score) per question; a score is the sigmoid of the answer's logit, the
    model's estimate of that answer's VQA accuracy."""
    batch = question_batch(tokenizer, questions, regions, max_text_len, max_regions, tags)
    model.eval()
    scores = torch.sigmoid(model(**batch).logits.float())
    top = scores.topk(min(top_k, scores.shape[1]), dim=-1)
    answers = model.answers
    return [[(answers[int(i)], float(s)) for s, i in zip(row_s, row_i)] for row_s, row_i in zip(top.values, top.indices)]


@torch.no_grad()
def region_attention(model: VLBertForVQA, tokenizer, questions: list[str], regions: tuple, max_text_len: int,
                     max_regions: int, tags: ObjectTags | None = None) -> np.ndarray:
    """[Q, R]: per question, the attention probability from [CLS] (query position 0) to each of the
    R regions given to the model, in the last encoder layer, averaged over heads. A row sums to the
    share of [CLS]'s attention that goes to regions (the rest goes to the question's tokens)."""
    batch = question_batch(tokenizer, questions, regions, max_text_len, max_regions, tags)
    model.eval()
    last = model.vlbert(**batch, output_attentions=True).attentions[-1]  # [Q, heads, T + R, T + R]
    text_len = batch["input_ids"].shape[1]  # regions follow the (padded) text and tags
    return last[:, :, 0, text_len:].mean(1).cpu().numpy()


def answer_figure(questions: list[str], results: list[list[tuple[str, float]]], attention: np.ndarray, boxes: np.ndarray,
                  width: int, height: int, pixels: np.ndarray | None, highlight: int = 3, num_heads: int | None = None,
                  total_regions: int | None = None):
    """One row per question: the image (or a blank canvas) with every region given to the model
    outlined thinly and the `highlight` most attended ones in colour, tagged '#row share'; beside
    it, the top answers and their scores. attention [Q, R] (`region_attention`); boxes [>= R, 4]."""
    from matplotlib.figure import Figure

    from vlbert.features.drawing import PALETTE, blank_canvas, draw_boxes, show_image

    regions = attention.shape[1]
    boxes = np.asarray(boxes)[:regions]
    image_w_in = 4.8 * width / max(width, height)
    image_h_in = 4.8 * height / max(width, height)
    row_h_in = max(image_h_in, 0.3 * len(results[0]) + 1.2) + 0.5
    figure = Figure(figsize=(image_w_in + 4.6, row_h_in * len(questions) + 0.7), dpi=100, layout="constrained")
    axes = figure.subplots(len(questions), 2, squeeze=False, width_ratios=[image_w_in, 4.6])
    for (image_ax, bars_ax), question, top, weights in zip(axes, questions, results, attention):
        show_image(image_ax, blank_canvas() if pixels is None else pixels, width, height)
        draw_boxes(image_ax, boxes, ["white"] * len(boxes), linewidth=1.0, linestyle=(0, (4, 2)), halo=0.8)
        order = np.argsort(-weights, kind="stable")[:highlight]
        # the least attended of the highlighted drawn first, so the most attended is on top
        order = order[::-1]
        draw_boxes(image_ax, boxes[order], [PALETTE[rank] for rank in range(len(order))][::-1], linewidth=2.6,
                   tags=[f"#{row} · {weights[row]:.0%}" for row in order])
        image_ax.set_title(f"[CLS] → regions: {weights.sum():.0%} of its attention", fontsize=9, color="0.3")
        answers = [a for a, _ in top][::-1]
        scores = [s for _, s in top][::-1]
        colors = ["0.75"] * (len(top) - 1) + ["#1f6fd1"]
        bars_ax.barh(range(len(top)), scores, color=colors, height=0.7)
        bars_ax.set_yticks(range(len(top)), answers, fontsize=10)
        for y, score in enumerate(scores):
            bars_ax.text(min(score, 1.0) + 0.01, y, f"{score:.3f}", va="center", fontsize=9)
        bars_ax.set_xlim(0, 1.12)
        bars_ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
        bars_ax.tick_params(axis="x", labelsize=8)
        bars_ax.spines[["top", "right"]].set_visible(False)
        bars_ax.set_title(textwrap.fill(f"Q: {question}", 52), fontsize=11, loc="left", fontweight="bold")
    heads = f" over {num_heads} heads" if num_heads else " over heads"
    given = f"{regions} regions given to the model" + (f" (the first {regions} of {total_regions})" if total_regions and total_regions > regions else "")
    figure.supxlabel(
        f"Dashed boxes: the {given}. Coloured: the {min(highlight, regions)} regions [CLS] "
        f"attends to most in the last encoder layer,\naveraged{heads}; tag = region row · share of [CLS]'s attention. "
        "Bars: top answers, score = sigmoid of the answer's logit."
        + ("\nNo image given: drawn on a blank canvas of the stored image size." if pixels is None else ""),
        fontsize=8, color="0.3",
    )
    return figure


def load_vqa_model(directory: str | Path) -> VLBertForVQA:
    """A fine-tuned VQA model directory; one without a VQA head (a pretrained encoder) is refused."""
    from vlbert.modeling.pretrained import quiet_transformers

    if not (Path(directory) / "config.json").is_file():
        raise AnswerError(f"--model {directory} is not a model directory (no config.json)")
    with quiet_transformers():
        model, info = VLBertForVQA.from_pretrained(directory, output_loading_info=True)
    if any(key.startswith("vqa_head.") for key in info["missing_keys"]):
        raise AnswerError(f"{directory} has no VQA head (no vqa_head.* weights); fine-tune one with `vlbert vqa fit`")
    return model


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlbert answer", description="Answer questions about one image with a fine-tuned VQA model.")
    parser.add_argument("--model", required=True, help="fine-tuned VQA model directory (vlbert vqa fit --model.export_dir)")
    parser.add_argument("--question", required=True, action="append", help="a question (repeat for several)")
    parser.add_argument("--image", help="image file: regions are extracted with the model's training detector settings")
    parser.add_argument("--features", help="feature file holding the image's regions (instead of --image)")
    parser.add_argument("--image-id", help="the image's id in --features")
    parser.add_argument("--top-k", type=int, default=5, help="answers to show per question")
    parser.add_argument("--detector-weights", help="detector weights file, when the training features came from one")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--save-image", metavar="PATH",
                        help="also draw the regions, the most attended ones and the top answers to a picture (.png, .pdf, .svg); "
                             "with --features, drawn on --image when given, else on a blank canvas")
    parser.add_argument("--highlight", type=int, default=3, metavar="N", help="regions to highlight in --save-image")
    return parser


def save_answer_figure(args, model, tokenizer, inputs: dict, regions: tuple, results, picture,
                       tags: ObjectTags | None = None) -> None:
    """Write `answer_figure` for the command's questions to args.save_image."""
    from vlbert.features.drawing import check_same_image, save_figure

    boxes, width, height = regions[1:4]
    pixels = None
    if picture is not None:
        pixels, image_w, image_h = picture
        check_same_image((image_w, image_h), (width, height), args.image)
    attention = region_attention(model, tokenizer, args.question, regions, inputs["max_text_len"], inputs["max_regions"], tags)
    figure = answer_figure(args.question, results, attention, boxes, width, height, pixels, args.highlight,
                           model.config.num_attention_heads, total_regions=len(boxes))
    save_figure(figure, args.save_image)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.image is None and args.features is None:
        parser.error("give either --image, or --features with --image-id")
    if args.features is not None and args.image_id is None:
        parser.error("--features needs --image-id")
    if args.features is not None and args.image is not None and args.save_image is None:
        parser.error("--image with --features is only drawn on, with --save-image (the regions come from --features)")
    if args.highlight < 1:
        parser.error("--highlight must be at least 1")
    try:
        model = load_vqa_model(args.model)
        tokenizer = load_tokenizer(args.model)
        inputs = model_inputs(args.model)
        tags = model_tags(inputs, tokenizer, args.model)
        picture = None
        if args.save_image is not None and args.image is not None:
            from vlbert.features.drawing import load_image

            picture = load_image(args.image)  # before any work: an unreadable image fails at once
        if args.features is None:
            header = features_provenance(args.model)
            regions = detect_regions(args.image, header.get("provenance", {}), args.detector_weights, args.device)
        else:
            stored_header = Path(args.model) / "features.json"
            provenance = json.loads(stored_header.read_text()).get("provenance") if stored_header.is_file() else None
            regions = stored_regions(args.features, args.image_id, provenance)
        if len(regions[0]) == 0:
            raise AnswerError("the detector found no regions in the image")
        results = answer_questions(model, tokenizer, args.question, regions, inputs["max_text_len"], inputs["max_regions"],
                                   args.top_k, tags)
        if args.save_image is not None:
            save_answer_figure(args, model, tokenizer, inputs, regions, results, picture, tags)
    except (InputError, FileNotFoundError) as err:  # AnswerError, FeatureStoreError, ...
        print(f"vlbert answer: error: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"answers": [{"question": q, "top": [{"answer": a, "score": round(s, 4)} for a, s in top]}
                                      for q, top in zip(args.question, results)]}, ensure_ascii=False))
    else:
        for question, top in zip(args.question, results):
            print(question)
            for answer, score in top:
                print(f"  {score:.3f}  {answer}")
    if args.save_image is not None:
        print(f"vlbert answer: wrote {args.save_image}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
