"""VQA accuracy over a set of questions: overall, per answer type and per question type, in
percent, computed and rounded exactly as the official evaluation (``vqaEval.py``) does.

Per question the accuracy comes from ``answers.py``. The aggregate of a group is
``round(100 * float(sum(accs)) / len(accs), 2)`` with the sum taken left to right in
annotation order (we never use ``math.fsum`` or Python >= 3.12's compensated ``sum``, so the
floats are bit-identical to the official tool's) and ``round`` as in Python 2, the language
of the official code: an exact binary tie rounds away from zero (0.125 -> 0.13), where
Python 3 would round it to even (0.12). Only exact ties differ, e.g. 1 correct answer
out of 800 questions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Hashable, Iterable, Mapping, Protocol, Sequence

from vlbert.tasks.vqa.answers import compared_answers, compared_prediction, leave_one_out_accuracy


def python2_round(value: float, ndigits: int = 2) -> float:
    """``round(value, ndigits)`` as Python 2 computes it: the exact binary value rounded to the
    nearest multiple of 10**-ndigits, exact ties away from zero."""
    exact = Decimal(value)  # exact: every float is a finite binary fraction
    return float(exact.quantize(Decimal(1).scaleb(-ndigits), rounding=ROUND_HALF_UP))


def mean_percent(accuracies: Sequence[float], ndigits: int = 2) -> float:
    """100 * mean, rounded like the official tool; the sum runs left to right without compensation."""
    total = 0
    for accuracy in accuracies:
        total += accuracy
    return python2_round(100 * float(total) / len(accuracies), ndigits)


@dataclass
class VQAAccuracy:
    """Accuracies in percent, rounded to ``ndigits`` decimals."""

    overall: float
    per_answer_type: dict[str, float]
    per_question_type: dict[str, float]
    num_questions: int

    def to_dict(self) -> dict[str, Any]:
        """The official tool's key names, types sorted by name."""
        return {
            "overall": self.overall,
            "perAnswerType": dict(sorted(self.per_answer_type.items())),
            "perQuestionType": dict(sorted(self.per_question_type.items())),
        }


@dataclass
class AccuracyTotals:
    """Per-question accuracies (0..1) collected in question order and grouped by type."""

    overall: list[float] = field(default_factory=list)
    by_answer_type: dict[Hashable, list[float]] = field(default_factory=dict)
    by_question_type: dict[Hashable, list[float]] = field(default_factory=dict)

    def add(self, accuracy: float, answer_type: Hashable | None = None, question_type: Hashable | None = None) -> None:
        """Record one question; a type of None leaves the question out of that breakdown."""
        self.overall.append(accuracy)
        if answer_type is not None:
            self.by_answer_type.setdefault(answer_type, []).append(accuracy)
        if question_type is not None:
            self.by_question_type.setdefault(question_type, []).append(accuracy)

    def result(self, ndigits: int = 2) -> VQAAccuracy:
        if not self.overall:
            raise ValueError("no questions to compute VQA accuracy over")
        return VQAAccuracy(
            overall=mean_percent(self.overall, ndigits),
            per_answer_type={str(k): mean_percent(v, ndigits) for k, v in self.by_answer_type.items()},
            per_question_type={str(k): mean_percent(v, ndigits) for k, v in self.by_question_type.items()},
            num_questions=len(self.overall),
        )


def record_accuracy(prediction: str, answer_records: Sequence[Mapping[str, Any]]) -> float:
    """Official accuracy (0..1) of ``prediction`` for one annotation's ``answers`` records
    (dicts with at least ``answer``).

    The official tool leaves out of "the other humans" every record *equal* to the current one
    (whole dicts, compared after the answer text is normalised). With the unique ``answer_id``
    of real VQA files that is exactly one record; with repeated records it is several, and we
    reproduce that.
    """
    forms, normalised = compared_answers([record["answer"] for record in answer_records])
    prediction = compared_prediction(prediction, normalised)
    matching = [i for i, form in enumerate(forms) if form == prediction]
    removed_with = [1] * len(forms)
    if len(matching) > 1:
        # Records equal to a matching record also match (the answer is part of the record).
        compared = {i: {**answer_records[i], "answer": forms[i]} for i in matching}
        for i in matching:
            removed_with[i] = sum(1 for j in matching if compared[j] == compared[i])
    return leave_one_out_accuracy(prediction, forms, removed_with)


def evaluate_annotations(
    annotations: Sequence[Mapping[str, Any]],
    predictions: Mapping[Hashable, str],
    ndigits: int = 2,
) -> VQAAccuracy:
    """Accuracy of ``predictions`` (question id -> answer) over official annotation records
    (``question_id``, ``answers``, ``answer_type``, ``question_type``), in annotation order.
    Every annotation must have a prediction: select the annotations first to score a subset."""
    totals = AccuracyTotals()
    for annotation in annotations:
        accuracy = record_accuracy(predictions[annotation["question_id"]], annotation["answers"])
        totals.add(accuracy, annotation["answer_type"], annotation["question_type"])
    return totals.result(ndigits)


class _AnsweredQuestion(Protocol):
    question_id: Any
    answers: Sequence[str]
    answer_type: str | None
    question_type: str | None


def evaluate_examples(examples: Iterable[_AnsweredQuestion], predictions: Mapping[Hashable, str], ndigits: int = 2) -> VQAAccuracy:
    """Accuracy of ``predictions`` over loaded examples (``data.VQAExample``) that have human
    answers; examples without a prediction are an error (a lost batch must not look like a
    harder split)."""
    totals = AccuracyTotals()
    missing = []
    for example in examples:
        if not example.answers:
            continue
        if example.question_id not in predictions:
            missing.append(example.question_id)
            continue
        forms, normalised = compared_answers(example.answers)
        accuracy = leave_one_out_accuracy(compared_prediction(predictions[example.question_id], normalised), forms)
        totals.add(accuracy, example.answer_type, example.question_type)
    if missing:
        raise KeyError(f"no prediction for {len(missing)} question(s), e.g. {missing[:5]}")
    return totals.result(ndigits)
