"""COCO caption metrics: equal to pycocoevalcap's own COCOEvalCap on the same files; the Java-free
fallback; SPICE never downloading; bad results files."""
import contextlib
import io
import json

import pytest

from vlbert.cli import main as vlbert
from vlbert.errors import InputError
from vlbert.tasks.caption import metric
from vlbert.tasks.caption.evaluate import evaluate_files
from vlbert.tasks.caption.metric import caption_scores, simple_tokenize, tokenize

needs_java = pytest.mark.skipif(not metric.java_available(), reason="java is not installed")

IMAGES = {
    42: ["A man riding a red bike down the street.", "A person on a bicycle, in a city.", "Man rides his bike (on a road)."],
    7: ["Two dogs play in the snow.", "A couple of dogs running through snow!", "Dogs don't mind the cold; they're playing."],
    1001: ["A plate of food with broccoli and rice.", "Broccoli, rice and chicken on a white plate.", "a dinner plate"],
    5: ["A red circle and a blue square", "two shapes: a circle and a square", "a blue square right of a red circle"],
}
RESULTS = {42: "a man riding a bike on a street", 7: "two dogs playing in the snow", 1001: "a plate of broccoli and rice",
           5: "a red circle and a blue square"}


def write_coco(tmp_path, images=IMAGES, results=RESULTS):
    annotations = {"info": {}, "licenses": [], "type": "captions",
                   "images": [{"id": i, "file_name": f"{i}.jpg"} for i in images],
                   "annotations": [{"id": n, "image_id": i, "caption": c}
                                   for n, (i, c) in enumerate((i, c) for i, caps in images.items() for c in caps)]}
    ann_path, res_path = tmp_path / "captions.json", tmp_path / "results.json"
    ann_path.write_text(json.dumps(annotations))
    res_path.write_text(json.dumps([{"image_id": i, "caption": c} for i, c in results.items()]))
    return ann_path, res_path


def coco_eval_cap(ann_path, res_path, monkeypatch, skip=("SPICE",)) -> dict:
    """pycocoevalcap's own evaluation (its example's protocol: the images of the results), SPICE left
    out: its first run would download Stanford CoreNLP (and `skip`'s other scorers, for time)."""
    from pycocoevalcap import eval as coco_eval
    from pycocotools.coco import COCO

    class Skipped:
        def compute_score(self, gts, res):
            return float("nan"), [float("nan")] * len(gts)

        def method(self):
            return "skipped"

    for name in skip:
        monkeypatch.setattr(coco_eval, name.title(), Skipped)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann_path))
        results = coco.loadRes(str(res_path))
        evaluation = coco_eval.COCOEvalCap(coco, results)
        evaluation.params["image_id"] = results.getImgIds()
        evaluation.evaluate()
    return {k: v for k, v in evaluation.eval.items() if k not in skip}


@pytest.mark.slow
@needs_java
def test_numbers_equal_coco_eval_cap_on_the_same_files(tmp_path, monkeypatch):
    ann_path, res_path = write_coco(tmp_path)
    official = coco_eval_cap(ann_path, res_path, monkeypatch)
    ours = evaluate_files(ann_path, res_path)
    assert ours.tokenization == "ptb"
    assert set(official) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}
    assert {k: ours.scores[k] for k in official} == official  # exactly, float for float
    assert 0 < official["CIDEr"] and 0 < official["Bleu_4"] < 1
    if not metric.spice_jars_present():
        assert any("SPICE skipped" in note for note in ours.notes) and "SPICE" not in ours.scores
    # a results file captioning some of the images: scored on those, as COCOEvalCap is
    partial = {k: RESULTS[k] for k in (7, 5)}
    ann_path, res_path = write_coco(tmp_path, results=partial)
    official = coco_eval_cap(ann_path, res_path, monkeypatch, skip=("SPICE", "METEOR"))
    with pytest.raises(InputError, match="allow-missing"):
        evaluate_files(ann_path, res_path, metrics=["BLEU", "CIDEr"])
    ours = evaluate_files(ann_path, res_path, metrics=["BLEU", "ROUGE_L", "CIDEr"], allow_missing=True)
    assert {k: ours.scores[k] for k in ours.scores} == {k: official[k] for k in ours.scores}


@needs_java
def test_our_ptb_run_equals_pycocoevalcaps_tokenizer():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = {**IMAGES, 9: ["The U.S. flag (red, white & blue) -- well-known; 1,000 stars... isn't it?"]}
    theirs = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    assert tokenize(captions, "ptb") == theirs
    # the fallback gives the same tokens on these (plain words, punctuation, clitics, brackets)
    assert tokenize(captions, "simple") == theirs


def test_simple_tokenize_by_hand():
    assert simple_tokenize("A Man, riding a bike.") == "a man riding a bike"
    assert simple_tokenize("Dogs don't mind; they're (happy)!") == "dogs do n't mind they 're -lrb- happy -rrb-"
    assert simple_tokenize("well-known 1,000 u.s. flags...") == "well-known 1,000 u.s. flags"


def test_without_java_meteor_and_spice_are_skipped_and_tokens_come_from_python(monkeypatch):
    monkeypatch.setattr(metric, "java_available", lambda: False)
    references = {k: IMAGES[k] for k in (5, 42)}
    scores = caption_scores(references, {k: RESULTS[k] for k in (5, 42)})
    assert scores.tokenization == "simple"
    assert set(scores.scores) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    assert any("java not found" in n for n in scores.notes)
    assert any(n.startswith("METEOR skipped") for n in scores.notes) and any(n.startswith("SPICE skipped") for n in scores.notes)
    # equal to pycocoevalcap's scorers fed the same tokens
    from pycocoevalcap.cider.cider import Cider

    gts = {k: [simple_tokenize(c) for c in v] for k, v in references.items()}
    res = {k: [simple_tokenize(RESULTS[k])] for k in references}
    assert scores.scores["CIDEr"] == Cider().compute_score(gts, res)[0]
    assert scores.per_image[5]["CIDEr"] > scores.per_image[42]["CIDEr"]
    with pytest.raises(ValueError, match="needs java"):
        caption_scores(references, {5: "a"}, tokenization="ptb")


def test_spice_without_its_jars_is_skipped_not_downloaded(monkeypatch):
    monkeypatch.setattr(metric, "spice_jars_present", lambda: False)
    built, original = [], metric._scorer
    monkeypatch.setattr(metric, "_scorer", lambda name: built.append(name) or original(name))
    scores = caption_scores({5: IMAGES[5]}, {5: RESULTS[5]}, metrics=["CIDEr", "SPICE"], tokenization="simple")
    assert built == ["CIDEr"] and "SPICE" not in scores.scores  # pycocoevalcap's Spice() would download CoreNLP
    assert any("SPICE skipped" in note and "get_stanford_models" in note for note in scores.notes)


def test_bad_results_files_are_one_line_errors(tmp_path, capsys):
    ann_path, res_path = write_coco(tmp_path)
    cases = {
        "twice.json": [{"image_id": 5, "caption": "a"}, {"image_id": 5, "caption": "b"}],
        "strings.json": [{"image_id": "5", "caption": "a"}],
        "not_a_list.json": {"image_id": 5, "caption": "a"},
        "no_caption.json": [{"image_id": 5}],
    }
    messages = {"twice.json": "more than one caption", "strings.json": "ids are strings",
                "not_a_list.json": "JSON list", "no_caption.json": "expected"}
    for name, content in cases.items():
        (tmp_path / name).write_text(json.dumps(content))
        with pytest.raises(InputError, match=messages[name]):
            evaluate_files(ann_path, tmp_path / name, metrics=["CIDEr"], tokenization="simple")
        assert vlbert(["caption", "evaluate", "--annotations", str(ann_path), "--results", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("vlbert caption: error:") and len(err.strip().splitlines()) == 1
    assert vlbert(["caption", "evaluate", "--annotations", str(ann_path), "--results", str(res_path),
                   "--metrics", "BLEU", "CIDEr", "--tokenization", "simple"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(printed) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr", "tokenization", "notes"}
