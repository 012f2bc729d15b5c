"""Builders of the official annotation formats (COCO captions, VQA v2, Karpathy retrieval).

Each builder returns plain JSON-ready objects; `write_json` / `write_jsonl` write them
byte-deterministically and atomically (temporary file, then rename).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from .language import Question, words

INFO = {
    "description": "vlbert synthetic shapes world",
    "version": "1.0",
    "contributor": "vlbert.synth",
}
LICENSE = {"name": "CC0 1.0", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}


def write_json(path: Path, obj: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(tmp, path)


def caption_id(image_id: int, k: int) -> int:
    return image_id * 10 + k


def question_id(image_id: int, k: int) -> int:
    """VQA-style id: the image id times 1000 plus the question's index."""
    return image_id * 1000 + k


def coco_captions(split: str, images: list[tuple[int, int, int]], captions: dict[int, list[str]]) -> dict:
    """COCO captions JSON. `images`: (image_id, width, height)."""
    return {
        "info": dict(INFO, split=split),
        "licenses": [LICENSE],
        "images": [
            {"id": image_id, "file_name": f"{image_id}.png", "width": w, "height": h} for image_id, w, h in images
        ],
        "annotations": [
            {"id": caption_id(image_id, k), "image_id": image_id, "caption": caption}
            for image_id, _, _ in images
            for k, caption in enumerate(captions[image_id])
        ],
    }


def vqa_questions(split: str, questions: dict[int, list[Question]]) -> dict:
    return {
        "info": dict(INFO, split=split),
        "task_type": "Open-Ended",
        "data_type": "synth",
        "license": LICENSE,
        "data_subtype": split,
        "questions": [
            {"image_id": image_id, "question": q.question, "question_id": question_id(image_id, k)}
            for image_id, qs in questions.items()
            for k, q in enumerate(qs)
        ],
    }


def vqa_annotations(split: str, questions: dict[int, list[Question]], answers: dict[int, list[list[str]]]) -> dict:
    """VQA v2 annotations; `answers[image_id][k]` holds the 10 raw answers of question k."""
    annotations = []
    for image_id, qs in questions.items():
        for k, q in enumerate(qs):
            raw = answers[image_id][k]
            annotations.append(
                {
                    "question_type": q.question_type,
                    "multiple_choice_answer": most_frequent(raw),
                    "answers": [
                        {"answer": a, "answer_confidence": "yes" if a == q.answer else "maybe", "answer_id": i + 1}
                        for i, a in enumerate(raw)
                    ],
                    "image_id": image_id,
                    "answer_type": q.answer_type,
                    "question_id": question_id(image_id, k),
                }
            )
    return {"info": dict(INFO, split=split), "license": LICENSE, "data_subtype": split, "annotations": annotations}


def most_frequent(answers: list[str]) -> str:
    """Most frequent answer; ties go to the one given first."""
    counts: dict[str, int] = {}
    for a in answers:
        counts[a] = counts.get(a, 0) + 1
    return max(counts, key=lambda a: counts[a])


def karpathy(images: list[tuple[int, str]], captions: dict[int, list[str]]) -> dict:
    """Karpathy-split JSON (as dataset_coco.json). `images`: (image_id, split) in file order."""
    out = []
    sentid = 0
    for imgid, (image_id, split) in enumerate(images):
        sentences = []
        for caption in captions[image_id]:
            sentences.append({"raw": caption, "tokens": words(caption), "imgid": imgid, "sentid": sentid})
            sentid += 1
        out.append(
            {
                "filepath": "images",
                "filename": f"{image_id}.png",
                "imgid": imgid,
                "cocoid": image_id,
                "split": split,
                "sentids": [s["sentid"] for s in sentences],
                "sentences": sentences,
            }
        )
    return {"dataset": "synth", "images": out}
