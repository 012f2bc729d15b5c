"""Loading official-format VQA files into examples, feature ids, vocabulary and soft targets."""
import json

import pytest

from vlbert.tasks.vqa.answers import AnswerVocab
from vlbert.tasks.vqa.data import (
    PLAIN_FEATURE_ID,
    VQAExample,
    VQADataError,
    answer_targets,
    build_answer_vocab,
    feature_id,
    load_vqa,
    select_for_training,
)


def answers(*texts):
    return [{"answer": t, "answer_confidence": "yes", "answer_id": i + 1} for i, t in enumerate(texts)]


def write_split(tmp_path, subtype="val2014", questions=None, annotations=None):
    questions = questions if questions is not None else [
        {"question_id": 11, "image_id": 42, "question": "Is it a cat?"},
        {"question_id": 12, "image_id": 42, "question": "How many dogs?"},
        {"question_id": 13, "image_id": 7, "question": "What color is the ball?"},
    ]
    annotations = annotations if annotations is not None else [
        {"question_id": 11, "image_id": 42, "answers": answers(*["yes"] * 7, *["no"] * 3),
         "answer_type": "yes/no", "question_type": "is it", "multiple_choice_answer": "yes"},
        {"question_id": 12, "image_id": 42, "answers": answers(*["two"] * 5, *["2"] * 4, "3"),
         "answer_type": "number", "question_type": "how many", "multiple_choice_answer": "2"},
        {"question_id": 13, "image_id": 7, "answers": answers("teal", "Teal.", "aqua", *["cyan"] * 7),
         "answer_type": "other", "question_type": "what color is the", "multiple_choice_answer": "cyan"},
    ]
    q = tmp_path / f"questions_{subtype}.json"
    q.write_text(json.dumps({"task_type": "Open-Ended", "data_subtype": subtype, "questions": questions}))
    a = tmp_path / f"annotations_{subtype}.json"
    a.write_text(json.dumps({"annotations": annotations}))
    return q, a


def test_load_questions_and_annotations(tmp_path):
    q, a = write_split(tmp_path)
    examples = load_vqa(q, a)
    assert [e.question_id for e in examples] == [11, 12, 13]
    first = examples[0]
    assert first.image_id == 42 and first.question == "Is it a cat?"
    assert first.feature_id == "COCO_val2014_000000000042"
    assert first.answers == ("yes",) * 7 + ("no",) * 3
    assert (first.answer_type, first.question_type, first.multiple_choice_answer) == ("yes/no", "is it", "yes")


def test_feature_id_formats(tmp_path):
    q, a = write_split(tmp_path)
    assert [e.feature_id for e in load_vqa(q, a, feature_id_format=PLAIN_FEATURE_ID)] == ["42", "42", "7"]
    assert load_vqa(q, feature_id_format="img{image_id:05d}")[2].feature_id == "img00007"
    assert load_vqa(q, data_subtype="train2014")[0].feature_id == "COCO_train2014_000000000042"
    assert feature_id(123456, data_subtype="train2014") == "COCO_train2014_000000123456"
    with pytest.raises(VQADataError, match="names {split}"):
        feature_id(1, "{split}_{image_id}")
    with pytest.raises(VQADataError, match="cannot format image id 'abc'"):
        feature_id("abc", "{image_id:012d}", "val2014")


def test_test_dev_questions_without_annotations_load(tmp_path):
    q, _ = write_split(tmp_path, subtype="test-dev2015")
    examples = load_vqa(q)
    assert all(e.answers == () and e.answer_type is None for e in examples)
    # test-dev questions are about test2015 images
    assert examples[0].feature_id == "COCO_test2015_000000000042"


def test_missing_subtype_needs_an_override(tmp_path):
    q = tmp_path / "q.json"
    q.write_text(json.dumps({"questions": [{"question_id": 1, "image_id": 3, "question": "?"}]}))
    with pytest.raises(VQADataError, match="no 'data_subtype'"):
        load_vqa(q)
    assert load_vqa(q, feature_id_format=PLAIN_FEATURE_ID)[0].feature_id == "3"


def test_mismatched_files_are_rejected(tmp_path):
    q, a = write_split(tmp_path)
    data = json.loads(a.read_text())
    data["annotations"] = data["annotations"][:2]
    a.write_text(json.dumps(data))
    with pytest.raises(VQADataError, match="1 question\\(s\\) have no annotation \\(e.g. \\[13\\]\\)"):
        load_vqa(q, a)
    data["annotations"].append(dict(data["annotations"][0], question_id=13, image_id=8))
    a.write_text(json.dumps(data))
    with pytest.raises(VQADataError, match="question 13 is about image 7 .* but image 8"):
        load_vqa(q, a)


@pytest.mark.parametrize(
    "content, match",
    [
        ("{oops", "not valid JSON"),
        (json.dumps([1, 2]), "'questions' list"),
        (json.dumps({"questions": [{"question_id": 1, "question": "?"}]}), "has no 'image_id'"),
        (json.dumps({"questions": [{"question_id": 1, "image_id": 1, "question": "?"}] * 2}), "question 1 twice"),
    ],
)
def test_bad_question_files(tmp_path, content, match):
    q = tmp_path / "bad_questions.json"
    q.write_text(content)
    with pytest.raises(VQADataError, match=match) as info:
        load_vqa(q, feature_id_format=PLAIN_FEATURE_ID)
    assert "bad_questions.json" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(VQADataError, match="does not exist"):
        load_vqa(tmp_path / "nope.json")


def test_vocab_by_human_answers_and_by_majority(tmp_path):
    examples = load_vqa(*write_split(tmp_path))
    human = build_answer_vocab(examples, min_count=3, count_by="human")
    # normalised counts: yes 7, 2 9 (five "two" + four "2"), cyan 7, no 3, teal 2, aqua 1, 3 1
    assert human.answers == ["2", "cyan", "yes", "no"] and human.counts == [9, 7, 7, 3]
    majority = build_answer_vocab(examples, min_count=1, count_by="majority")
    assert majority.answers == ["2", "cyan", "yes"]
    with pytest.raises(ValueError, match="count_by"):
        build_answer_vocab(examples, count_by="votes")
    with pytest.raises(VQADataError, match="no annotated questions"):
        build_answer_vocab([VQAExample(1, 1, "1", "?")])


def test_soft_targets_and_training_selection(tmp_path):
    examples = load_vqa(*write_split(tmp_path))
    vocab = AnswerVocab(["yes", "no", "2", "teal"])
    targets = answer_targets(examples, vocab)
    assert targets[0] == pytest.approx({0: 1.0, 1: 0.9})
    assert targets[1] == pytest.approx({2: 1.0})                     # "two" and "2" merge when humans disagree
    assert targets[2] == pytest.approx({3: 0.6})                     # "teal", "Teal." -> 2 humans; cyan is out of vocab
    narrow = AnswerVocab(["yes", "no"])
    kept, kept_targets = select_for_training(examples, answer_targets(examples, narrow))
    assert [e.question_id for e in kept] == [11] and len(kept_targets) == 1
    everything, _ = select_for_training(examples, answer_targets(examples, narrow), keep_without_target=True)
    assert len(everything) == 3
    assert answer_targets(load_vqa(write_split(tmp_path, "test2015")[0]), vocab) == [{}, {}, {}]
