"""VQA questions and annotations (the official VQA v2 JSON files) as examples.

A question file is ``{"data_subtype": "val2014", "questions": [{"question_id", "image_id",
"question"}, ...], ...}``; an annotation file is ``{"annotations": [{"question_id",
"image_id", "answers": [{"answer", "answer_confidence", "answer_id"}, ...], "answer_type",
"question_type", "multiple_choice_answer"}, ...]}``. Test and test-dev splits come without
annotations; they load with empty ``answers`` (for ``predict``).

Regions are looked up in the feature store by a *feature id* built from the VQA image id with
a format string: the default is COCO's file naming, ``"COCO_{data_subtype}_{image_id:012d}"``
(the stem of ``COCO_val2014_000000123456.jpg``, what ``vlbert extract`` stores for COCO
images); the synthetic world uses ``"{image_id}"``. ``{data_subtype}`` comes from the
question file ("test-dev2015" maps to "test2015", whose images test-dev uses) unless given.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from vlbert.data.text_files import read_json
from vlbert.errors import InputError
from vlbert.tasks.vqa.answers import (
    AnswerVocab,
    count_human_answers,
    count_majority_answers,
    normalize_answer,
    soft_scores,
    vocab_from_counts,
)

COCO_FEATURE_ID = "COCO_{data_subtype}_{image_id:012d}"
PLAIN_FEATURE_ID = "{image_id}"
# Splits whose images live under another split's name.
IMAGE_SUBTYPE = {"test-dev2015": "test2015"}


class VQADataError(InputError):
    """A question / annotation file that cannot be used, saying which file and what to fix."""


@dataclass(frozen=True)
class VQAExample:
    """One question. ``answers`` are the raw human answers (10 in VQA v2; empty for test)."""

    question_id: int | str
    image_id: int | str
    feature_id: str
    question: str
    answers: tuple[str, ...] = ()
    answer_type: str | None = None
    question_type: str | None = None
    multiple_choice_answer: str | None = None


def _read_json(path: str | os.PathLike, what: str) -> Any:
    try:
        return read_json(path, f"{what} file")
    except InputError as error:
        raise VQADataError(str(error)) from None


def _records(data: Any, key: str, required: Sequence[str], path: str | os.PathLike, what: str) -> list[dict]:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise VQADataError(f"{what} file {path} must be a JSON object with a {key!r} list (the official VQA format)")
    records = data[key]
    seen: set = set()
    for n, record in enumerate(records):
        if not isinstance(record, dict):
            raise VQADataError(f"{what} file {path}, entry #{n} of {key!r} is not an object")
        absent = [k for k in required if k not in record]
        if absent:
            raise VQADataError(f"{what} file {path}, entry #{n} of {key!r} has no {', '.join(map(repr, absent))}")
        qid = record["question_id"]
        if isinstance(qid, bool) or not isinstance(qid, (int, str)):
            raise VQADataError(f"{what} file {path}, entry #{n}: question_id {qid!r} is not an integer or string")
        if qid in seen:
            raise VQADataError(f"{what} file {path} lists question {qid!r} twice")
        seen.add(qid)
    return records


def feature_id(image_id: int | str, feature_id_format: str = COCO_FEATURE_ID, data_subtype: str | None = None) -> str:
    """The feature-store id of a VQA image: ``feature_id_format`` filled with ``image_id`` and
    ``data_subtype``, e.g. 42, "val2014" -> "COCO_val2014_000000000042"."""
    try:
        return feature_id_format.format(image_id=image_id, data_subtype=data_subtype)
    except KeyError as err:
        raise VQADataError(
            f"feature id format {feature_id_format!r} names {{{err.args[0]}}}; only {{image_id}} and {{data_subtype}} are available"
        ) from None
    except (ValueError, IndexError) as err:
        raise VQADataError(
            f"feature id format {feature_id_format!r} cannot format image id {image_id!r} ({err}); "
            "use '{image_id}' for non-integer ids"
        ) from None


def load_vqa(
    questions: str | os.PathLike,
    annotations: str | os.PathLike | None = None,
    feature_id_format: str = COCO_FEATURE_ID,
    data_subtype: str | None = None,
) -> list[VQAExample]:
    """Examples of a question file, with the human answers of its annotation file if given.

    ``data_subtype`` overrides the question file's for ``{data_subtype}`` in the format. The
    two files must cover the same questions with the same image ids.
    """
    question_data = _read_json(questions, "question")
    question_list = _records(question_data, "questions", ("question_id", "image_id", "question"), questions, "question")
    if data_subtype is None and "{data_subtype" in feature_id_format:
        data_subtype = question_data.get("data_subtype")
        if not isinstance(data_subtype, str):
            raise VQADataError(
                f"question file {questions} has no 'data_subtype' (e.g. 'val2014') for the feature id format "
                f"{feature_id_format!r}; pass data_subtype or a format without {{data_subtype}}"
            )
        data_subtype = IMAGE_SUBTYPE.get(data_subtype, data_subtype)

    by_question: dict[Any, dict] = {}
    if annotations is not None:
        annotation_list = _records(
            _read_json(annotations, "annotation"), "annotations",
            ("question_id", "image_id", "answers", "answer_type", "question_type"), annotations, "annotation",
        )
        by_question = {a["question_id"]: a for a in annotation_list}
        asked = {q["question_id"] for q in question_list}
        unasked = [qid for qid in by_question if qid not in asked]
        unanswered = [q["question_id"] for q in question_list if q["question_id"] not in by_question]
        if unasked or unanswered:
            raise VQADataError(
                f"{questions} and {annotations} do not describe the same questions: {len(unasked)} annotated "
                f"question(s) are not in the question file (e.g. {unasked[:3]}) and {len(unanswered)} question(s) "
                f"have no annotation (e.g. {unanswered[:3]}); pass the two files of one split"
            )

    examples = []
    for question in question_list:
        qid, image_id = question["question_id"], question["image_id"]
        if not isinstance(question["question"], str):
            raise VQADataError(f"question file {questions}: question {qid!r} has a non-string 'question'")
        fields: dict[str, Any] = {}
        annotation = by_question.get(qid)
        if annotation is not None:
            if annotation["image_id"] != image_id:
                raise VQADataError(
                    f"question {qid!r} is about image {image_id!r} in {questions} but image "
                    f"{annotation['image_id']!r} in {annotations}"
                )
            answers = annotation["answers"]
            if not isinstance(answers, list) or not all(isinstance(a, dict) and isinstance(a.get("answer"), str) for a in answers):
                raise VQADataError(f"annotation file {annotations}: question {qid!r} needs 'answers' as a list of objects with a string 'answer'")
            fields = {
                "answers": tuple(a["answer"] for a in answers),
                "answer_type": annotation["answer_type"],
                "question_type": annotation["question_type"],
                "multiple_choice_answer": annotation.get("multiple_choice_answer"),
            }
        examples.append(VQAExample(
            question_id=qid,
            image_id=image_id,
            feature_id=feature_id(image_id, feature_id_format, data_subtype),
            question=question["question"],
            **fields,
        ))
    return examples


def build_answer_vocab(examples: Iterable[VQAExample], min_count: int = 9, count_by: str = "human") -> AnswerVocab:
    """Answer vocabulary of the normalised answers seen at least ``min_count`` times.

    ``count_by="human"`` counts every human answer (10 per question); ``"majority"`` counts
    each question once under its ``multiple_choice_answer`` (else its most frequent normalised
    human answer), which is what Bottom-Up, LXMERT and UNITER do: min_count=9 over VQA v2
    train+val gives their 3129 answers.
    """
    examples = [e for e in examples if e.answers]
    if count_by == "human":
        counts = count_human_answers(e.answers for e in examples)
    elif count_by == "majority":
        counts = count_majority_answers(
            e.multiple_choice_answer if e.multiple_choice_answer is not None
            else Counter(normalize_answer(a) for a in e.answers).most_common(1)[0][0]
            for e in examples
        )
    else:
        raise ValueError(f"count_by must be 'human' or 'majority', got {count_by!r}")
    if not counts:
        raise VQADataError("no annotated questions to build an answer vocabulary from; pass annotation files")
    return vocab_from_counts(counts, min_count, count_by)


def answer_targets(examples: Sequence[VQAExample], vocab: AnswerVocab) -> list[dict[int, float]]:
    """Soft target per example: vocab index -> official accuracy of that answer (> 0 only).
    Answers outside the vocabulary are dropped; examples without answers get ``{}``."""
    return [soft_scores(example.answers, vocab) for example in examples]


def select_for_training(
    examples: Sequence[VQAExample],
    targets: Sequence[dict[int, float]],
    keep_without_target: bool = False,
) -> tuple[list[VQAExample], list[dict[int, float]]]:
    """Drop questions none of whose answers is in the vocabulary (unless ``keep_without_target``:
    their all-zero target then teaches "none of these"). Evaluation keeps every question."""
    if keep_without_target:
        return list(examples), list(targets)
    kept = [(e, t) for e, t in zip(examples, targets) if t]
    return [e for e, _ in kept], [t for _, t in kept]
