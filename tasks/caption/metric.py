"""COCO caption metrics through pycocoevalcap, the package of the COCO caption evaluation server's
code: BLEU-1..4, METEOR, ROUGE-L, CIDEr(-D) and SPICE, computed exactly as its `COCOEvalCap`
does (the same tokenizer, scorers, image order and values), with two differences of availability:

- METEOR, SPICE and the PTB tokenizer run in Java. Without `java` on the PATH, METEOR and SPICE
  are skipped and captions are tokenized by `simple_tokenize` (lower case, punctuation split off
  and dropped, as the PTB tokenizer's output is used); each is said in `CaptionScores.notes`.
- SPICE needs Stanford CoreNLP, which pycocoevalcap downloads on first use. It is never
  downloaded here: without its jars SPICE is skipped with a note saying how to fetch them.

Values are pycocoevalcap's (fractions: CIDEr 1.278 is the "127.8" papers print); the training
jobs log them x 100.
"""
from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

METRICS = ("BLEU", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
TOKENIZATIONS = ("auto", "ptb", "simple")
# what pycocoevalcap's PTB tokenizer output loses: these tokens are dropped
PTB_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
COCO_KEYS = {"BLEU": ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"], "METEOR": ["METEOR"], "ROUGE_L": ["ROUGE_L"],
             "CIDEr": ["CIDEr"], "SPICE": ["SPICE"]}


@dataclass
class CaptionScores:
    """scores: COCOEvalCap's `eval` dict (Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr, SPICE; those
    computed); per_image: {image id: {metric: value}} as its imgToEval; tokenization: "ptb" or
    "simple"; notes: what was skipped or replaced, and why."""

    scores: dict[str, float]
    per_image: dict = field(default_factory=dict, repr=False)
    tokenization: str = "ptb"
    notes: list[str] = field(default_factory=list)


def java_available() -> bool:
    return shutil.which("java") is not None


def spice_jars_present() -> bool:
    """Whether SPICE's Stanford CoreNLP jars are installed (pycocoevalcap would download them)."""
    from pycocoevalcap.spice import get_stanford_models as spice_models

    lib = Path(spice_models.SPICEDIR) / spice_models.SPICELIB
    return all((lib / name.format(spice_models.JAR)).is_file() for name in ("{}.jar", "{}-models.jar"))


BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}


def simple_tokenize(text: str) -> str:
    """The Java-free fallback tokenization, an approximation of what pycocoevalcap's PTB tokenizer
    gives: lower case; clitics split off ("don't" -> "do n't", "there's" -> "there 's"); words
    keep inner hyphens, periods and commas ("well-known", "u.s.", "1,000"); brackets become PTB's
    (lower-cased) -lrb- / -rrb- ...; other punctuation is split off and then dropped with
    pycocoevalcap's list. Equal to PTB's on plain words; it may differ on unusual text."""
    text = text.lower().replace("\n", " ")
    text = re.sub(r"(\w)(n't)\b", r"\1 \2", text)
    text = re.sub(r"(\w)('(?:s|re|ve|ll|d|m))\b", r"\1 \2", text)
    tokens = re.findall(r"n't|'(?:s|re|ve|ll|d|m)\b|\w+(?:[-.,/]\w+)+\.?(?<=\w\.\w\.)|\w+(?:[-.,/]\w+)*|\.\.\.|--|\S", text)
    tokens = [BRACKETS.get(t, t) for t in tokens]
    return " ".join(t for t in tokens if t not in PTB_PUNCTUATION)


def ptb_tokenize(captions: dict) -> dict:
    """pycocoevalcap's PTBTokenizer.tokenize, run the same way (its Stanford CoreNLP jar, the same
    flags, one line per caption, its punctuation dropped) but reading the captions from a pipe,
    not a temporary file in the package's directory, and with Java's progress line kept off the
    terminal: a failure of Java raises with what it printed."""
    from pycocoevalcap.tokenizer import ptbtokenizer as ptb

    jar = Path(ptb.__file__).with_name(ptb.STANFORD_CORENLP_3_4_1_JAR)
    keys = [key for key, texts in captions.items() for _ in texts]
    lines = "\n".join(c.replace("\n", " ") for texts in captions.values() for c in texts)
    done = subprocess.run(["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"],
                          input=lines.encode(), capture_output=True)
    tokenized = done.stdout.decode().split("\n")
    if done.returncode != 0 or len(tokenized) < len(keys):
        raise RuntimeError(f"the PTB tokenizer (java) failed with status {done.returncode}: {done.stderr.decode()[-500:]}")
    out: dict = {}
    for key, line in zip(keys, tokenized):
        out.setdefault(key, []).append(" ".join(w for w in line.rstrip().split(" ") if w not in ptb.PUNCTUATIONS))
    return out


def tokenize(captions: dict, method: str) -> dict:
    """{image id: [caption, ...]} -> {image id: [tokenized caption, ...]}, "ptb" (pycocoevalcap's
    PTB tokenizer, one Java run for all) or "simple"."""
    if method == "simple":
        return {key: [simple_tokenize(c) for c in texts] for key, texts in captions.items()}
    return ptb_tokenize(captions)


def _scorer(metric: str):
    if metric == "BLEU":
        from pycocoevalcap.bleu.bleu import Bleu

        return Bleu(4)
    if metric == "METEOR":
        from pycocoevalcap.meteor.meteor import Meteor

        return Meteor()
    if metric == "ROUGE_L":
        from pycocoevalcap.rouge.rouge import Rouge

        return Rouge()
    if metric == "CIDEr":
        from pycocoevalcap.cider.cider import Cider

        return Cider()
    from pycocoevalcap.spice.spice import Spice

    return Spice()


def caption_scores(references: dict, predictions: dict, metrics: Sequence[str] = METRICS,
                   tokenization: str = "auto") -> CaptionScores:
    """COCO caption metrics of `predictions` {image id: caption} against `references` {image id:
    [captions]}, over the images of `predictions`, in the order of `references` (COCOEvalCap's
    with `params["image_id"] = cocoRes.getImgIds()`). `tokenization`: "auto" (PTB with Java, else
    simple), "ptb" or "simple"."""
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown or tokenization not in TOKENIZATIONS:
        raise ValueError(f"metrics must be among {METRICS} (got {unknown}) and tokenization one of {TOKENIZATIONS}")
    missing = [key for key in predictions if key not in references]
    if missing:
        raise ValueError(f"{len(missing)} predicted image(s) have no references: {missing[:10]}")
    notes = []
    java = java_available()
    if tokenization == "auto":
        tokenization = "ptb" if java else "simple"
        if not java:
            notes.append("java not found: captions tokenized by vlbert's simple_tokenize instead of the PTB tokenizer")
    elif tokenization == "ptb" and not java:
        raise ValueError("tokenization 'ptb' needs java on the PATH (pycocoevalcap's PTB tokenizer is Java); use 'simple'")
    wanted = [m for m in METRICS if m in metrics]
    if not java:
        for metric in ("METEOR", "SPICE"):
            if metric in wanted:
                wanted.remove(metric)
                notes.append(f"{metric} skipped: it runs in Java and java was not found")
    if "SPICE" in wanted and not spice_jars_present():
        wanted.remove("SPICE")
        notes.append("SPICE skipped: Stanford CoreNLP is not installed for pycocoevalcap (run `python -m "
                     "pycocoevalcap.spice.get_stanford_models` once to download it)")
    ids = [key for key in references if key in predictions]
    if not ids:
        return CaptionScores({}, {}, tokenization, notes + ["no predictions to score"])
    gts = tokenize({key: list(references[key]) for key in ids}, tokenization)
    res = tokenize({key: [predictions[key]] for key in ids}, tokenization)
    scores: dict[str, float] = {}
    per_image: dict = {key: {"image_id": key} for key in ids}
    for metric in wanted:
        with contextlib.redirect_stdout(io.StringIO()):  # BLEU prints its counts
            value, values = _scorer(metric).compute_score(gts, res)
        for name, total, image_values in zip(COCO_KEYS[metric], value if metric == "BLEU" else [value],
                                             values if metric == "BLEU" else [values]):
            scores[name] = float(total)
            for key, image_value in zip(gts, image_values):
                per_image[key][name] = image_value
    return CaptionScores(scores, per_image, tokenization, notes)
