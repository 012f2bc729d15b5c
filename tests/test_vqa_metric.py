"""The VQA metric and `vlbert vqa-eval` against a literal re-statement of the official evaluation.

`OfficialLoop` below re-states the official tool (GT-Vision-Lab/VQA, vqaEval.py + vqa.py
loadRes) step by step in plain code: answer dicts mutated in place, "other humans" found by
comparing whole dicts, Python-2 `round` and `\\d`. It is deliberately naive and shares no code
with vlbert.tasks.vqa, so that agreement on random inputs means something.
"""
import copy
import json
import random
import re
from fractions import Fraction

import pytest

from vlbert.cli import main as vlbert_main
from vlbert.tasks.vqa.answers import answer_accuracy
from vlbert.tasks.vqa.data import VQAExample
from vlbert.tasks.vqa.evaluate import VQAEvalError, evaluate_files, main
from vlbert.tasks.vqa.metric import (
    AccuracyTotals,
    evaluate_examples,
    python2_round,
    record_accuracy,
)


class OfficialLoop:
    contractions = {
        "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
        "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
        "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
        "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
        "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
        "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
        "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
        "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
        "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
        "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
        "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
        "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
        "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
        "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
        "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
        "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
        "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
        "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
        "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
        "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
        "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
        "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
        "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
        "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
        "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
        "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
        "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
        "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
        "youve": "you've",
    }
    number_map = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                  "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
    articles = ["a", "an", "the"]
    # The official patterns, compiled with re.ASCII because Python 2 (the official
    # interpreter) gives \d its ASCII meaning when no UNICODE flag is passed.
    period_strip = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)
    comma_strip = re.compile(r"(\d)(\,)(\d)", re.ASCII)
    punct = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]

    def punctuation(self, in_text):
        out_text = in_text
        for p in self.punct:
            if (p + " " in in_text or " " + p in in_text) or (re.search(self.comma_strip, in_text) is not None):
                out_text = out_text.replace(p, "")
            else:
                out_text = out_text.replace(p, " ")
        # the official call passes re.UNICODE (32) in the position of `count`
        return self.period_strip.sub("", out_text, 32)

    def digit_article(self, in_text):
        out = []
        for word in in_text.lower().split():
            word = self.number_map.setdefault(word, word)
            if word not in self.articles:
                out.append(word)
        for i, word in enumerate(out):
            if word in self.contractions:
                out[i] = self.contractions[word]
        return " ".join(out)

    @staticmethod
    def py2_round(x, n=2):
        # Python 2's round: nearest multiple of 10**-n of the exact binary value, ties away from 0.
        scaled = Fraction(x) * 10 ** n
        whole = scaled.numerator // scaled.denominator
        if scaled - whole >= Fraction(1, 2):
            whole += 1
        return float(Fraction(whole, 10 ** n))

    def run(self, annotation_file, result_list, ques_ids=None):
        anns = copy.deepcopy(annotation_file["annotations"])
        results = copy.deepcopy(result_list)
        qa = {ann["question_id"]: ann for ann in anns}
        all_ids = [ann["question_id"] for ann in anns]
        assert set(r["question_id"] for r in results) == set(all_ids)
        res = {}
        for r in results:
            res[r["question_id"]] = r
        ques_ids = all_ids if ques_ids is None else ques_ids
        acc_qa, acc_ques_type, acc_ans_type = [], {}, {}
        for ques_id in ques_ids:
            gt = qa[ques_id]
            for ans_dic in gt["answers"]:
                ans_dic["answer"] = ans_dic["answer"].replace("\n", " ")
                ans_dic["answer"] = ans_dic["answer"].replace("\t", " ")
                ans_dic["answer"] = ans_dic["answer"].strip()
            res_ans = res[ques_id]["answer"]
            res_ans = res_ans.replace("\n", " ").replace("\t", " ").strip()
            gt_answers = [a["answer"] for a in gt["answers"]]
            if len(set(gt_answers)) > 1:
                for ans_dic in gt["answers"]:
                    ans_dic["answer"] = self.punctuation(ans_dic["answer"])
                    ans_dic["answer"] = self.digit_article(ans_dic["answer"])
                res_ans = self.digit_article(self.punctuation(res_ans))
            gt_acc = []
            for gt_datum in gt["answers"]:
                others = [item for item in gt["answers"] if item != gt_datum]
                matching = [item for item in others if item["answer"] == res_ans]
                gt_acc.append(min(1, float(len(matching)) / 3))
            avg = float(sum(gt_acc)) / len(gt_acc)
            acc_qa.append(avg)
            acc_ques_type.setdefault(gt["question_type"], []).append(avg)
            acc_ans_type.setdefault(gt["answer_type"], []).append(avg)

        def pct(values):
            total = 0
            for v in values:  # plain left-to-right sum, as Python 2's sum()
                total = total + v
            return self.py2_round(100 * float(total) / len(values))

        return {
            "overall": pct(acc_qa),
            "perAnswerType": {k: pct(v) for k, v in acc_ans_type.items()},
            "perQuestionType": {k: pct(v) for k, v in acc_ques_type.items()},
        }


# Answers that exercise every rule: case, whitespace, marks, periods, digit commas, number
# words, articles, contractions, near-duplicates.
POOL = [
    "yes", "Yes", "yes.", "YES!", " yes ", "yes\n", "no", "No.", "nope", "2", "two", "Two.", "2.0", "3",
    "three", "none", "0", "zero", "1,000", "1000", "1, 000", "3.5", "3.5.", "the dog", "a dog", "dog", "dogs",
    "Dog!", "isnt", "isn't", "dont", "don't", "Dont", "red, white", "red,white", "red white", "red-white",
    "t-shirt", "t shirt", "tshirt", "(yes)", "left/right", "left / right", "\tcat\n", "cat", "Cat", "a",
    "the", "an apple", "apple", "ten", "10", "it's", "its", "im", "Im", "somebody'd", "somebodyd",
    "5:00", "$5", "5", "five", "...", "a.m.", "am", "e.g.", "eg", "hot dog", "hot-dog", "hotdog", "",
    "x;-y c-d", "x y c d", "..5", ".5", "1,000.", "red;white",
]
ANSWER_TYPES = ["yes/no", "number", "other"]
QUESTION_TYPES = ["is the", "how many", "what color is the", "what", "none of the above"]


def random_case(rng, num_questions, drop_answer_ids=False):
    annotations, results = [], []
    for n in range(num_questions):
        qid = 1000 + n * 7
        style = rng.random()
        if style < 0.25:                       # unanimous humans
            answers = [rng.choice(POOL)] * 10
        elif style < 0.5:                      # a few variants of one answer
            base = rng.sample(POOL, 3)
            answers = [rng.choice(base) for _ in range(10)]
        else:
            answers = [rng.choice(POOL) for _ in range(rng.choice([10, 10, 10, 3, 1]))]
        records = []
        for i, answer in enumerate(answers):
            record = {"answer": answer, "answer_confidence": rng.choice(["yes", "maybe"])}
            if not drop_answer_ids:
                record["answer_id"] = i + 1
            records.append(record)
        annotations.append({
            "question_id": qid, "image_id": n // 3,
            "answers": records,
            "answer_type": rng.choice(ANSWER_TYPES), "question_type": rng.choice(QUESTION_TYPES),
        })
        prediction = rng.choice(answers) if rng.random() < 0.5 else rng.choice(POOL)
        if rng.random() < 0.2:
            prediction = rng.choice([" ", "\t", "\n", ""]) + prediction + rng.choice([" ", "\n", "."])
        results.append({"question_id": qid, "answer": prediction})
    rng.shuffle(results)
    return {"annotations": annotations}, results


def write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return path


def questions_for(annotation_file):
    return {
        "task_type": "Open-Ended", "data_subtype": "val2014",
        "questions": [{"question_id": a["question_id"], "image_id": a.get("image_id", 0), "question": "?"}
                      for a in annotation_file.get("annotations", [])],
    }


def run_cli(tmp_path, capsys, annotation_file, results, *extra):
    q = write(tmp_path, "q.json", questions_for(annotation_file))
    a = write(tmp_path, "a.json", annotation_file)
    r = write(tmp_path, "r.json", results)
    code = main(["--questions", str(q), "--annotations", str(a), "--results", str(r), *extra])
    out = capsys.readouterr()
    return code, (json.loads(out.out) if code == 0 else None), out.err


@pytest.mark.parametrize("seed", range(12))
def test_cli_equals_the_official_loop_on_random_inputs(tmp_path, capsys, seed):
    rng = random.Random(seed)
    annotation_file, results = random_case(rng, num_questions=60, drop_answer_ids=(seed % 4 == 3))
    expected = OfficialLoop().run(annotation_file, results)
    code, got, err = run_cli(tmp_path, capsys, annotation_file, results)
    assert code == 0, err
    assert got == expected   # exact float equality, not approx


def test_per_question_accuracy_equals_the_official_loop():
    rng = random.Random(123)
    for _ in range(300):
        annotation_file, results = random_case(rng, num_questions=1, drop_answer_ids=rng.random() < 0.3)
        annotation = annotation_file["annotations"][0]
        prediction = results[0]["answer"]
        loop = OfficialLoop().run(annotation_file, results)
        assert python2_round(100 * record_accuracy(prediction, annotation["answers"])) == loop["overall"]
        if len({a["answer_id"] for a in annotation["answers"] if "answer_id" in a}) == len(annotation["answers"]):
            assert record_accuracy(prediction, annotation["answers"]) == answer_accuracy(
                prediction, [a["answer"] for a in annotation["answers"]])


def annotation(qid, answers, answer_type, question_type, with_ids=True):
    records = [{"answer": a, "answer_confidence": "yes", **({"answer_id": i + 1} if with_ids else {})}
               for i, a in enumerate(answers)]
    return {"question_id": qid, "image_id": qid, "answers": records,
            "answer_type": answer_type, "question_type": question_type}


def test_hand_computed_numbers(tmp_path, capsys):
    annotation_file = {"annotations": [
        annotation(1, ["yes"] * 10, "yes/no", "is the"),              # "yes": 1.0
        annotation(2, ["2"] * 3 + ["3"] * 7, "number", "how many"),   # "two" -> "2": 0.9
        annotation(3, ["red"] + ["blue"] * 9, "other", "what color"),  # "Red" -> "red": 0.3
        annotation(4, ["no"] * 10, "yes/no", "is the"),               # "No" vs unanimous raw "no": 0
    ]}
    results = [{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "two"},
               {"question_id": 3, "answer": "Red"}, {"question_id": 4, "answer": "No"}]
    code, got, err = run_cli(tmp_path, capsys, annotation_file, results)
    assert code == 0, err
    assert got == {
        "overall": 55.0,
        "perAnswerType": {"number": 90.0, "other": 30.0, "yes/no": 50.0},
        "perQuestionType": {"how many": 90.0, "is the": 50.0, "what color": 30.0},
    }
    assert got == OfficialLoop().run(annotation_file, results)


def test_repeated_answer_records_leave_together():
    # Without answer ids, the three {"answer": "yes", ...} records are equal dicts: for each of
    # them the official loop removes all three from "the others", so they score 0; each "no"
    # sayer sees three "yes": 1. Mean 7/10 (with ids it would be 0.9).
    answers = [{"answer": "yes", "answer_confidence": "yes"}] * 3 + [{"answer": "no", "answer_confidence": "yes"}] * 7
    assert record_accuracy("yes", answers) == pytest.approx(0.7)
    with_ids = [dict(a, answer_id=i) for i, a in enumerate(answers)]
    assert record_accuracy("yes", with_ids) == pytest.approx(0.9)


def test_python2_rounding():
    assert python2_round(0.125) == 0.13       # exact tie: away from zero (Python 3 gives 0.12)
    assert python2_round(0.375) == 0.38
    assert python2_round(2.675) == 2.67       # 2.675 is 2.67499999... in binary
    assert python2_round(55.0) == 55.0
    assert python2_round(1 / 3 * 100) == 33.33


def test_rounding_tie_reaches_the_output(tmp_path, capsys):
    anns = [annotation(q, ["yes"] * 10, "other", "what") for q in range(1, 801)]
    results = [{"question_id": q, "answer": "yes" if q == 1 else "no"} for q in range(1, 801)]
    code, got, _ = run_cli(tmp_path, capsys, {"annotations": anns}, results)
    assert got["overall"] == 0.13 == OfficialLoop().run({"annotations": anns}, results)["overall"]


def test_evaluate_examples_and_totals():
    examples = [
        VQAExample(1, 1, "1", "q", ("yes",) * 10, "yes/no", "is the"),
        VQAExample(2, 1, "1", "q", ("2",) * 3 + ("3",) * 7, "number", "how many"),
        VQAExample(3, 1, "1", "q"),                                          # no answers: skipped
    ]
    accuracy = evaluate_examples(examples, {1: "yes", 2: "two"})
    assert accuracy.overall == 95.0 and accuracy.per_answer_type == {"yes/no": 100.0, "number": 90.0}
    assert accuracy.num_questions == 2
    with pytest.raises(KeyError, match="no prediction for 1"):
        evaluate_examples(examples, {1: "yes"})
    with pytest.raises(ValueError, match="no questions"):
        AccuracyTotals().result()


# ---------------------------------------------------------------- errors and options

def small_case():
    anns = [annotation(q, ["yes"] * 6 + ["no"] * 4, "yes/no", "is the") for q in (1, 2, 3)]
    return {"annotations": anns}


def test_missing_results_fail_by_default_and_allow_missing_scores_the_answered(tmp_path, capsys):
    results = [{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "no"}]
    code, _, err = run_cli(tmp_path, capsys, small_case(), results)
    assert code == 1
    assert "answers 2 of the 3 annotated questions; 1 have no result (e.g. 3)" in err and "--allow-missing" in err
    code, got, err = run_cli(tmp_path, capsys, small_case(), results, "--allow-missing")
    assert code == 0 and "scoring only the 2 answered questions" in err
    # = the official evaluate(quesIds=[1, 2]): "yes" (6 humans) and "no" (4 humans) both score 1.0
    assert got["overall"] == 100.0
    answered = {"annotations": small_case()["annotations"][:2]}
    assert got == OfficialLoop().run(answered, results)


def test_unknown_question_ids_are_an_error(tmp_path, capsys):
    results = [{"question_id": q, "answer": "yes"} for q in (1, 2, 3, 99)]
    code, _, err = run_cli(tmp_path, capsys, small_case(), results, "--allow-missing")
    assert code == 1 and "1 question id(s) that are not in" in err and "99" in err
    results = [{"question_id": str(q), "answer": "yes"} for q in (1, 2, 3)]
    code, _, err = run_cli(tmp_path, capsys, small_case(), results)
    assert code == 1 and "write question_id as a number" in err


def test_repeated_results_keep_the_last_answer_with_a_warning(tmp_path, capsys):
    results = [{"question_id": 1, "answer": "no"}, {"question_id": 2, "answer": "no"},
               {"question_id": 3, "answer": "no"}, {"question_id": 1, "answer": "yes"}]
    code, got, err = run_cli(tmp_path, capsys, small_case(), results)
    assert code == 0 and "appear more than once" in err
    assert got == OfficialLoop().run(small_case(), results)


@pytest.mark.parametrize(
    "results, match",
    [
        ("[{\"question_id\": 1, ", "not valid JSON (line 1"),
        ({"question_id": 1, "answer": "yes"}, "must be a JSON list"),
        ([{"question_id": 1}], "must be an object with 'question_id' and 'answer'"),
        ([{"question_id": 1, "answer": 7}], "answer 7 is not a string"),
        ([{"question_id": [1], "answer": "yes"}], "is not an integer or string"),
    ],
)
def test_malformed_results(tmp_path, capsys, results, match):
    code, _, err = run_cli(tmp_path, capsys, small_case(), results)
    assert code == 1 and match in err and "r.json" in err


@pytest.mark.parametrize(
    "annotation_file, match",
    [
        ({"questions": []}, "'annotations' list"),
        ({"annotations": []}, "has no annotations"),
        ({"annotations": [{"question_id": 1, "answers": [{"answer": "yes"}], "answer_type": "x"}]}, "has no 'question_type'"),
        ({"annotations": [annotation(1, ["yes"], "x", "y"), annotation(1, ["no"], "x", "y")]}, "question 1 twice"),
        ({"annotations": [annotation(1, [], "x", "y")]}, "non-empty list"),
    ],
)
def test_malformed_annotations(tmp_path, capsys, annotation_file, match):
    code, _, err = run_cli(tmp_path, capsys, annotation_file, [{"question_id": 1, "answer": "yes"}])
    assert code == 1 and match in err


def test_missing_file_and_bad_question_file(tmp_path, capsys):
    a = write(tmp_path, "a.json", small_case())
    r = write(tmp_path, "r.json", [{"question_id": q, "answer": "yes"} for q in (1, 2, 3)])
    assert main(["--questions", str(tmp_path / "none.json"), "--annotations", str(a), "--results", str(r)]) == 1
    assert "question file" in capsys.readouterr().err
    q = write(tmp_path, "q.json", {"images": []})
    assert main(["--questions", str(q), "--annotations", str(a), "--results", str(r)]) == 1
    assert "'questions' list" in capsys.readouterr().err


def test_multiple_choice_answers_must_be_choices(tmp_path):
    anns = small_case()
    q = write(tmp_path, "q.json", {"task_type": "Multiple Choice", "questions": [
        {"question_id": i, "image_id": i, "question": "?", "multiple_choices": ["yes", "no"]} for i in (1, 2, 3)]})
    a = write(tmp_path, "a.json", anns)
    r = write(tmp_path, "r.json", [{"question_id": i, "answer": "yes"} for i in (1, 2)] + [{"question_id": 3, "answer": "maybe"}])
    with pytest.raises(VQAEvalError, match="'maybe' is not one of its multiple choices"):
        evaluate_files(q, a, r)


def test_dispatched_by_the_vlbert_command(tmp_path, capsys):
    anns = small_case()
    q, a = write(tmp_path, "q.json", questions_for(anns)), write(tmp_path, "a.json", anns)
    r = write(tmp_path, "r.json", [{"question_id": i, "answer": "yes"} for i in (1, 2, 3)])
    assert vlbert_main(["vqa-eval", "--questions", str(q), "--annotations", str(a), "--results", str(r)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"overall": 100.0, "perAnswerType": {"yes/no": 100.0}, "perQuestionType": {"is the": 100.0}}
