"""Answer normalisation, per-question accuracy, vocabulary and soft targets on hand-made cases."""
import json

import pytest

from vlbert.tasks.vqa.answers import (
    CONTRACTIONS,
    AnswerVocab,
    UnknownAnswerError,
    answer_accuracy,
    compared_answers,
    count_human_answers,
    count_majority_answers,
    normalize_answer,
    process_digit_article,
    process_punctuation,
    soft_scores,
    vocab_from_counts,
)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("yes", "yes"),
        ("Yes!", "yes"),                    # '!' not touching a space -> space, then split/join
        ("yes.", "yes"),                    # period not before a digit is deleted
        ("3.5", "3.5"),                     # period before a digit stays
        ("2.50.", "2.50"),
        ("a.b.c", "abc"),
        ("1,000", "1000"),                  # digit,digit: every mark is deleted
        ("1,000 - 2", "1000 2"),
        ("red,white", "red white"),         # ',' not touching a space -> space
        ("red, white", "red white"),        # ', ' in the text -> ',' deleted
        ("x, y-z", "x y z"),                # ',' deleted (touches a space), '-' spaced out
        ("t-shirt", "t shirt"),
        ("(yes)", "yes"),
        ("left/right", "left right"),
        ("\tcat\n", "cat"),
        ("  Two  Dogs ", "2 dogs"),         # number words, case, inner whitespace
        ("none", "0"),
        ("None of the above", "0 of above"),
        ("ten", "10"),
        ("eleven", "eleven"),
        ("the dog", "dog"),
        ("A Dog", "dog"),
        ("an apple", "apple"),
        ("a", ""),
        ("dont", "don't"),
        ("Dont", "don't"),
        ("don't", "don't"),
        ("isnt it", "isn't it"),
        ("Im", "im"),                       # the table's capitalised keys never match
        ("somebody'd", "somebodyd"),        # the table's reversed entry
        ("$5", "$5"),                       # marks outside the official list stay
        ("5:00", "5:00"),
        ("it's", "it's"),
        ("x;-y c-d", "x y c d"),            # the space test reads the input, not the running output
        ("..5", ".5"),
        ("1,000.", "1000"),
    ],
)
def test_normalize_answer_hand_cases(raw, expected):
    assert normalize_answer(raw) == expected


def test_punctuation_rule_looks_at_the_input_text():
    # '-' touches a space somewhere, so every '-' is deleted, also the one inside "t-shirt".
    assert process_punctuation("t-shirt - blue") == "tshirt  blue"
    # Only the first 32 periods are removed (the official count=re.UNICODE quirk).
    assert process_punctuation("." * 40) == "." * 8


def test_digit_article_maps_numbers_before_dropping_articles():
    assert process_digit_article("The One") == "1"
    assert process_digit_article("A  an THE") == ""


def test_contraction_table_has_the_official_size():
    assert len(CONTRACTIONS) == 120
    assert CONTRACTIONS["wouldnt've"] == "wouldn't've" and CONTRACTIONS["twas"] == "'twas"


def test_answers_are_normalised_only_when_humans_disagree():
    forms, normalised = compared_answers(["Yes"] * 10)
    assert forms == ["Yes"] * 10 and not normalised
    forms, normalised = compared_answers(["Yes\t"] * 9 + [" Yes"])   # same after whitespace cleaning
    assert forms == ["Yes"] * 10 and not normalised
    forms, normalised = compared_answers(["Yes"] * 9 + ["yes."])
    assert forms == ["yes"] * 10 and normalised


def test_answer_accuracy_hand_computed():
    ten_yes = ["yes"] * 10
    assert answer_accuracy("yes", ten_yes) == 1.0
    assert answer_accuracy(" yes\n", ten_yes) == 1.0
    assert answer_accuracy("Yes", ten_yes) == 0.0             # unanimous: no normalisation of the prediction
    assert answer_accuracy("Yes", ["Yes"] * 10) == 1.0
    for count, expected in [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]:
        answers = ["yes"] * count + ["no"] * (10 - count)
        assert answer_accuracy("yes", answers) == pytest.approx(expected, abs=1e-12)
    # 3 x "two" and 7 x "2" disagree, are normalised to ten "2"s: every spelling scores 1.
    answers = ["two"] * 3 + ["2"] * 7
    assert answer_accuracy("Two", answers) == 1.0 and answer_accuracy("2.", answers) == 1.0
    # Not 10 answers: 3 humans, 1 said "cat": others for the cat-sayer hold no cat -> 0; for
    # the other two one cat -> 1/3 each: mean (0 + 1/3 + 1/3) / 3.
    assert answer_accuracy("cat", ["cat", "dog", "dog"]) == pytest.approx(2 / 9)
    with pytest.raises(ValueError, match="no human answers"):
        answer_accuracy("cat", [])


def test_soft_scores_equal_the_official_accuracy_of_each_entry():
    vocab = AnswerVocab(["yes", "no", "2", "red", "blue"])
    answers = ["Yes"] * 3 + ["no"] * 5 + ["two", "2."]
    scores = soft_scores(answers, vocab)
    assert scores == pytest.approx({0: 0.9, 1: 1.0, 2: 0.6})
    for index, answer in enumerate(vocab):
        assert scores.get(index, 0.0) == pytest.approx(answer_accuracy(answer, answers))
    # Out-of-vocabulary answers ("green") are dropped; no answers -> no target.
    assert soft_scores(["green"] * 10, vocab) == {}
    assert soft_scores([], vocab) == {}


def test_soft_scores_follow_the_unanimity_quirk():
    # Ten identical "Yes": the official tool compares raw text, so the entry "yes" earns nothing.
    assert soft_scores(["Yes"] * 10, AnswerVocab(["yes"])) == {}
    assert soft_scores(["Yes"] * 10, AnswerVocab(["no", "Yes"])) == {1: 1.0}
    # An entry that is not in normal form still earns credit when the humans disagree.
    assert soft_scores(["Yes"] * 9 + ["no"], AnswerVocab(["Yes", "yes"])) == {0: 1.0, 1: 1.0}


def test_counts_and_vocab_order():
    answer_lists = [["Yes"] * 6 + ["no"] * 4, ["yes."] * 10, ["two"] * 5 + ["2"] * 5]
    counts = count_human_answers(answer_lists)
    assert counts == {"yes": 16, "no": 4, "2": 10}
    vocab = vocab_from_counts(counts, min_count=4, count_by="human")
    assert vocab.answers == ["yes", "2", "no"] and vocab.counts == [16, 10, 4]
    assert vocab_from_counts(counts, min_count=5).answers == ["yes", "2"]
    assert vocab_from_counts({"b": 2, "a": 2, "c": 3}, min_count=1).answers == ["c", "a", "b"]  # ties alphabetical
    assert count_majority_answers(["Yes", "yes.", "Two"]) == {"yes": 2, "2": 1}
    with pytest.raises(ValueError, match="no answer occurs 100"):
        vocab_from_counts(counts, min_count=100)


def test_vocab_index_and_unknown_answer(tmp_path):
    vocab = AnswerVocab(["yes", "no"])
    assert vocab.index("no") == 1 and vocab[0] == "yes" and len(vocab) == 2 and "yes" in vocab
    path = vocab.save(tmp_path / "answers.json")
    loaded = AnswerVocab.load(path)
    with pytest.raises(KeyError) as info:
        loaded.index("foo")
    assert isinstance(info.value, UnknownAnswerError)
    message = str(info.value)
    assert "'foo'" in message and str(path) in message and "2 answers" in message


def test_vocab_save_load_roundtrip_and_no_overwrite(tmp_path):
    vocab = vocab_from_counts({"yes": 20, "no": 12, "2": 9}, min_count=9, count_by="majority")
    path = vocab.save(tmp_path / "model" / "answers.json")
    loaded = AnswerVocab.load(path)
    assert loaded == vocab and loaded.counts == [20, 12, 9]
    assert loaded.min_count == 9 and loaded.count_by == "majority"
    with pytest.raises(FileExistsError, match="already exists"):
        vocab.save(path)
    assert AnswerVocab.load(path) == vocab          # untouched
    vocab.save(path, overwrite=True)
    assert not (tmp_path / "model" / "answers.json.tmp").exists()


def test_vocab_loads_plain_list_and_ans2label(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(["yes", "no"]))
    assert AnswerVocab.load(tmp_path / "list.json").answers == ["yes", "no"]
    (tmp_path / "ans2label.json").write_text(json.dumps({"no": 1, "yes": 0, "2": 2}))
    assert AnswerVocab.load(tmp_path / "ans2label.json").answers == ["yes", "no", "2"]


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        (json.dumps(["yes", "yes"]), "twice"),
        (json.dumps(["yes", 3]), "not a string"),
        (json.dumps({"yes": 0, "no": 2}), "indices"),
        (json.dumps({"format": "vlbert-vqa-answers"}), "no 'answers' list"),
        (json.dumps({"yes": "no"}), "neither"),
    ],
)
def test_bad_vocab_files_name_the_problem(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as info:
        AnswerVocab.load(path)
    assert "bad.json" in str(info.value)


def test_missing_vocab_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        AnswerVocab.load(tmp_path / "nope.json")
