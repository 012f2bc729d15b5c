"""``vlbert vqa-eval``: the official VQA accuracy of a result file.

    vlbert vqa-eval --questions v2_OpenEnded_mscoco_val2014_questions.json \\
                    --annotations v2_mscoco_val2014_annotations.json \\
                    --results val_results.json

prints one JSON object ``{"overall": .., "perAnswerType": {..}, "perQuestionType": {..}}``
with accuracies in percent, equal to the numbers of the official evaluation tool (see
``metric.py`` for the arithmetic). Like the official tool, a result file must answer every
annotated question and nothing else; ``--allow-missing`` scores only the answered questions
instead (the official ``evaluate(quesIds=...)``), and says so on stderr. When a question id
appears twice in the results the last answer counts, as in the official tool (a warning is
printed). Only the JSON goes to stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Hashable, Sequence

from vlbert.errors import InputError
from vlbert.tasks.vqa.metric import VQAAccuracy, evaluate_annotations


class VQAEvalError(InputError):
    """Input files that the evaluation cannot score, with what is wrong and how to fix it."""


def _examples(ids: Sequence[Any], k: int = 5) -> str:
    shown = ", ".join(repr(i) for i in list(ids)[:k])
    return shown + (", ..." if len(ids) > k else "")


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file, naming the file and the position of a syntax error."""
    path = Path(path)
    if not path.is_file():
        raise VQAEvalError(f"{what} file {path} does not exist")
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise VQAEvalError(f"{what} file {path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})") from None
    except UnicodeDecodeError as err:
        raise VQAEvalError(f"{what} file {path} is not UTF-8 text ({err})") from None


def _is_question_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def check_annotations(data: Any, path: str | Path) -> list[dict]:
    """The ``annotations`` list of an official annotation file, every record checked."""
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise VQAEvalError(f"annotation file {path} must be a JSON object with an 'annotations' list (the official VQA format)")
    annotations = data["annotations"]
    if not annotations:
        raise VQAEvalError(f"annotation file {path} has no annotations")
    seen: set = set()
    for n, annotation in enumerate(annotations):
        where = f"annotation file {path}, annotation #{n}"
        if not isinstance(annotation, dict):
            raise VQAEvalError(f"{where} is not an object")
        for key in ("question_id", "answers", "answer_type", "question_type"):
            if key not in annotation:
                raise VQAEvalError(f"{where} has no {key!r}")
        qid = annotation["question_id"]
        if not _is_question_id(qid):
            raise VQAEvalError(f"{where}: question_id {qid!r} is not an integer or string")
        if qid in seen:
            raise VQAEvalError(f"annotation file {path} annotates question {qid!r} twice")
        seen.add(qid)
        answers = annotation["answers"]
        if not isinstance(answers, list) or not answers:
            raise VQAEvalError(f"{where} (question {qid!r}): 'answers' must be a non-empty list")
        for answer in answers:
            if not isinstance(answer, dict) or not isinstance(answer.get("answer"), str):
                raise VQAEvalError(f"{where} (question {qid!r}): each answer must be an object with a string 'answer', got {answer!r}")
    return annotations


def check_results(data: Any, path: str | Path) -> dict[Hashable, str]:
    """Question id -> answer from a result file ``[{"question_id": .., "answer": ..}, ...]``;
    a repeated id keeps its last answer (as the official tool does), with a warning."""
    if not isinstance(data, list):
        raise VQAEvalError(f"result file {path} must be a JSON list of {{\"question_id\": ..., \"answer\": ...}} objects, got {type(data).__name__}")
    predictions: dict[Hashable, str] = {}
    repeated = []
    for n, result in enumerate(data):
        where = f"result file {path}, entry #{n}"
        if not isinstance(result, dict) or "question_id" not in result or "answer" not in result:
            raise VQAEvalError(f"{where} must be an object with 'question_id' and 'answer', got {result!r}"[:300])
        qid, answer = result["question_id"], result["answer"]
        if not _is_question_id(qid):
            raise VQAEvalError(f"{where}: question_id {qid!r} is not an integer or string")
        if not isinstance(answer, str):
            raise VQAEvalError(f"{where} (question {qid!r}): answer {answer!r} is not a string")
        if qid in predictions:
            repeated.append(qid)
        predictions[qid] = answer
    if repeated:
        print(f"vlbert vqa-eval: warning: {len(repeated)} question id(s) appear more than once in {path} "
              f"(e.g. {_examples(repeated)}); the last answer of each counts, as in the official tool", file=sys.stderr)
    return predictions


def check_questions(data: Any, path: str | Path, annotations: list[dict], predictions: dict[Hashable, str]) -> None:
    """The question file: its format, that it covers the annotations (else a warning), and for
    a Multiple Choice task that every answer is one of the choices (as the official tool checks)."""
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise VQAEvalError(f"question file {path} must be a JSON object with a 'questions' list (the official VQA format)")
    questions = {q["question_id"]: q for q in data["questions"] if isinstance(q, dict) and _is_question_id(q.get("question_id"))}
    unknown = [a["question_id"] for a in annotations if a["question_id"] not in questions]
    if unknown:
        print(f"vlbert vqa-eval: warning: {len(unknown)} annotated question(s) are not in {path} "
              f"(e.g. {_examples(unknown)}); are the question and annotation files of the same split?", file=sys.stderr)
    if data.get("task_type") == "Multiple Choice":
        for qid, answer in predictions.items():
            choices = questions.get(qid, {}).get("multiple_choices", [])
            if answer not in choices:
                raise VQAEvalError(f"question {qid!r}: answer {answer!r} is not one of its multiple choices (task_type is 'Multiple Choice')")


def evaluate_files(
    questions: str | Path,
    annotations: str | Path,
    results: str | Path,
    allow_missing: bool = False,
    ndigits: int = 2,
) -> VQAAccuracy:
    """Load, check and score official-format files; raise ``VQAEvalError`` on bad input."""
    annotation_list = check_annotations(read_json(annotations, "annotation"), annotations)
    predictions = check_results(read_json(results, "result"), results)
    question_data = read_json(questions, "question")

    annotated = {a["question_id"] for a in annotation_list}
    unknown = [qid for qid in predictions if qid not in annotated]
    if unknown:
        hint = ""
        if any(isinstance(q, str) for q in unknown) and any(isinstance(q, int) for q in annotated):
            hint = " (the annotations use integer ids; write question_id as a number, not a string)"
        raise VQAEvalError(f"{results} answers {len(unknown)} question id(s) that are not in {annotations}, "
                           f"e.g. {_examples(unknown)}{hint}; are the result and annotation files of the same split?")
    missing = [a["question_id"] for a in annotation_list if a["question_id"] not in predictions]
    if missing and not allow_missing:
        raise VQAEvalError(f"{results} answers {len(predictions)} of the {len(annotation_list)} annotated questions; "
                           f"{len(missing)} have no result (e.g. {_examples(missing)}). The official tool requires all; "
                           "pass --allow-missing to score only the answered questions")
    if missing:
        print(f"vlbert vqa-eval: warning: scoring only the {len(predictions)} answered questions; "
              f"{len(missing)} of {len(annotation_list)} have no result", file=sys.stderr)
        annotation_list = [a for a in annotation_list if a["question_id"] in predictions]
    check_questions(question_data, questions, annotation_list, predictions)
    return evaluate_annotations(annotation_list, predictions, ndigits)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vlbert vqa-eval",
        description="Official VQA accuracy (overall, per answer type, per question type, in percent) of a result file.",
    )
    parser.add_argument("--questions", required=True, help="official question file (e.g. v2_OpenEnded_mscoco_val2014_questions.json)")
    parser.add_argument("--annotations", required=True, help="official annotation file (e.g. v2_mscoco_val2014_annotations.json)")
    parser.add_argument("--results", required=True, help='result file: [{"question_id": int, "answer": str}, ...]')
    parser.add_argument("--allow-missing", action="store_true",
                        help="score only the answered questions instead of failing when some have no result")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        accuracy = evaluate_files(args.questions, args.annotations, args.results, args.allow_missing)
    except VQAEvalError as err:
        print(f"vlbert vqa-eval: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(accuracy.to_dict(), indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
