"""VQA answers: the official normalisation, the per-question accuracy, the answer vocabulary
and soft targets.

Everything here follows the official VQA v2 evaluation (GT-Vision-Lab/VQA,
``vqaEval.py``) to the letter, quirks included, so that training targets, in-training
validation and ``vlbert vqa-eval`` agree with the number a leaderboard reports:

* ``clean_whitespace``: newlines and tabs become spaces, then surrounding whitespace goes.
* ``process_punctuation``: each of 21 marks is deleted when it touches a space anywhere in
  the text (or the text holds digit,digit such as "1,000"), otherwise replaced by a space;
  then a '.' not followed by a digit is deleted (at most 32 of them: the official code passes
  ``re.UNICODE`` (= 32) where ``re.sub`` expects ``count``). ':', "'", '#', '$', '%', '&',
  '*' and friends are left alone.
* ``process_digit_article``: lower-case, split on whitespace, number words "zero".."ten"
  (and "none") become digits, "a"/"an"/"the" are dropped, then a fixed table restores
  apostrophes in contractions ("dont" -> "don't").
* The human answers (and the prediction) are normalised **only when the humans disagree**
  (more than one distinct answer after ``clean_whitespace``). When all of them typed the same
  text, the prediction must equal that text exactly (after ``clean_whitespace``).
* Accuracy of a prediction for one question: for each human answer i, min(1, (number of
  *other* humans who gave the prediction) / 3); the mean over i. With 10 humans and c of them
  agreeing with the prediction this is 0.3, 0.6, 0.9 and 1.0 for c = 1, 2, 3, >= 4.

The official code is Python 2; where Python 2 and 3 differ we follow Python 2 (``\\d`` in
its regular expressions matches only ASCII digits). Pure Python, no torch: ``vlbert
vqa-eval`` imports this without the deep-learning stack.
"""
from __future__ import annotations

import functools
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

from vlbert.errors import InputError
from vlbert.modeling.vqa import ANSWERS_FORMAT, read_answers_file

# The marks the official evaluation treats as punctuation ('.' is handled separately).
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
    ">", "<", "@", "`", ",", "?", "!",
)
NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# The official contraction table as "typed=restored" pairs. It is data, kept verbatim with its
# oddities: keys with capitals ("Im", "Ive", ...) can never match because words are
# lower-cased first, and "somebody'd" maps *to* "somebodyd".
_CONTRACTION_PAIRS = """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's
howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm Ive=I've isnt=isn't itd=it'd
itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am mightnt=mightn't
mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't mustve=must've
neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at 'ows'at='ow's'at
'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's shouldve=should've
shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've somebody'd=somebodyd
somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's
someoned=someone'd someoned've=someone'd've someone'dve=someone'd've someonell=someone'll
someones=someone's somethingd=something'd somethingd've=something'd've
something'dve=something'd've somethingll=something'll thats=that's thered=there'd
thered've=there'd've there'dve=there'd've therere=there're theres=there's theyd=they'd
theyd've=they'd've they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas
wasnt=wasn't wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll
whatre=what're whats=what's whatve=what've whens=when's whered=where'd wheres=where's
whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's
whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
you'dve=you'd've youll=you'll youre=you're youve=you've
"""
CONTRACTIONS: dict[str, str] = dict(pair.split("=", 1) for pair in _CONTRACTION_PAIRS.split())

# "1,000": when the text holds digit-comma-digit, every mark is deleted rather than spaced out.
_DIGIT_COMMA_DIGIT = re.compile(r"[0-9],[0-9]")
# The official pattern is "(?!<=\d)(\.)(?!\d)"; its first group is a *lookahead* for the
# literal "<=" plus a digit (a typo for a lookbehind), which never matches at a '.', so
# the pattern is: a period not followed by an ASCII digit.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?![0-9])")
_MAX_PERIODS_REMOVED = 32  # re.UNICODE passed as re.sub's count in the official code
# Most answers ("yes", "2", "red") hold no mark at all; they skip the 21 replace passes.
_ANY_MARK = re.compile("[" + re.escape("".join(PUNCTUATION) + ".") + "]")


def clean_whitespace(text: str) -> str:
    """Newlines and tabs to spaces, then strip: applied to every answer before anything else."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def process_punctuation(text: str) -> str:
    """The official punctuation rule (see the module docstring)."""
    if _ANY_MARK.search(text) is None:
        return text
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        # The test looks at the *input* text, the replacement at the running output.
        if delete_all or (mark + " ") in text or (" " + mark) in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_MAX_PERIODS_REMOVED)


def process_digit_article(text: str) -> str:
    """Lower-case; number words to digits; drop articles; restore contractions."""
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


@functools.lru_cache(maxsize=1 << 18)
def _normalize_cleaned(text: str) -> str:
    # Cached: VQA v2 has ~2M human answers but far fewer distinct strings.
    return process_digit_article(process_punctuation(text))


def normalize_answer(text: str) -> str:
    """The full official normalisation of one answer: whitespace, punctuation, digits/articles."""
    return _normalize_cleaned(clean_whitespace(text))


def compared_answers(human_answers: Sequence[str]) -> tuple[list[str], bool]:
    """The human answers in the form the official tool compares them, and whether that form is
    normalised (it is only when the humans disagree after ``clean_whitespace``)."""
    cleaned = [clean_whitespace(answer) for answer in human_answers]
    if len(set(cleaned)) > 1:
        return [_normalize_cleaned(answer) for answer in cleaned], True
    return cleaned, False


def compared_prediction(prediction: str, normalised: bool) -> str:
    """A predicted answer in the form the official tool compares it with the human answers."""
    cleaned = clean_whitespace(prediction)
    return _normalize_cleaned(cleaned) if normalised else cleaned


def leave_one_out_accuracy(prediction: str, answers: Sequence[str], removed_with: Sequence[int] | None = None) -> float:
    """Mean over i of min(1, matches among the answers other than i / 3), in [0, 1].

    ``prediction`` and ``answers`` are already in compared form. ``removed_with[i]`` is how
    many answers leave the pool together with answer i (1 normally; the official tool removes
    every answer record equal to record i, which matters only when records repeat). The sum
    runs in answer order with the official tool's values, so the float is bit-identical.
    """
    if not answers:
        raise InputError("a question with no human answers has no VQA accuracy")
    matches = sum(1 for answer in answers if answer == prediction)
    total = 0
    for i, answer in enumerate(answers):
        others = matches - (removed_with[i] if removed_with is not None else 1) if answer == prediction else matches
        total += min(1, others / 3)
    return total / len(answers)


def answer_accuracy(prediction: str, human_answers: Sequence[str]) -> float:
    """Official VQA accuracy in [0, 1] of ``prediction`` for one question's raw human answers."""
    forms, normalised = compared_answers(human_answers)
    return leave_one_out_accuracy(compared_prediction(prediction, normalised), forms)


class UnknownAnswerError(InputError, KeyError):
    """An answer that is not in the answer vocabulary."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else ""


class AnswerVocab:
    """The answers a VQA head can give, index <-> answer string.

    Saved as JSON next to the model: ``{"format": "vlbert-vqa-answers", "answers": [...],
    "counts": [...], "min_count": 9, "count_by": "human"}``. ``load`` also reads a plain JSON
    list of answers and an ``{"answer": index}`` object (UNITER / LXMERT ``ans2label.json``).
    """

    FORMAT = ANSWERS_FORMAT

    def __init__(
        self,
        answers: Sequence[str],
        counts: Sequence[int] | None = None,
        min_count: int | None = None,
        count_by: str | None = None,
        path: str | os.PathLike | None = None,
    ) -> None:
        answers = list(answers)
        where = f" in {path}" if path else ""
        for answer in answers:
            if not isinstance(answer, str):
                raise InputError(f"answer vocabulary{where}: entry {answer!r} is not a string")
        repeated = [answer for answer, n in Counter(answers).items() if n > 1]
        if repeated:
            raise InputError(f"answer vocabulary{where} lists {len(repeated)} answer(s) twice, e.g. {repeated[:5]}")
        if counts is not None and len(counts) != len(answers):
            raise InputError(f"answer vocabulary{where}: {len(counts)} counts for {len(answers)} answers")
        self._answers = answers
        self._index = {answer: i for i, answer in enumerate(answers)}
        self.counts = list(counts) if counts is not None else None
        self.min_count = min_count
        self.count_by = count_by
        self.path = str(path) if path is not None else None
        self._credit_lookup: dict[bool, dict[str, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._answers)

    def __iter__(self) -> Iterator[str]:
        return iter(self._answers)

    def __contains__(self, answer: object) -> bool:
        return answer in self._index

    def __getitem__(self, index: int) -> str:
        return self._answers[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AnswerVocab) and self._answers == other._answers

    def __repr__(self) -> str:
        return f"AnswerVocab({len(self)} answers{', ' + self.path if self.path else ''})"

    @property
    def answers(self) -> list[str]:
        return list(self._answers)

    def index(self, answer: str) -> int:
        """Index of an answer string (exact match; normalise it first if it is raw text)."""
        try:
            return self._index[answer]
        except KeyError:
            source = f"the answer vocabulary {self.path}" if self.path else "the answer vocabulary"
            raise UnknownAnswerError(
                f"answer {answer!r} is not in {source} ({len(self)} answers); "
                "normalise it with normalize_answer() or rebuild the vocabulary with a lower min_count"
            ) from None

    def credited_indices(self, compared_form: str, normalised: bool) -> list[int]:
        """Indices of the entries the official tool would compare equal to ``compared_form``:
        entries whose compared form (normalised or only whitespace-cleaned) is that string."""
        if normalised not in self._credit_lookup:
            lookup: dict[str, list[int]] = {}
            for i, answer in enumerate(self._answers):
                lookup.setdefault(compared_prediction(answer, normalised), []).append(i)
            self._credit_lookup[normalised] = lookup
        return self._credit_lookup[normalised].get(compared_form, [])

    def to_dict(self) -> dict:
        return {
            "format": self.FORMAT,
            "version": 1,
            "min_count": self.min_count,
            "count_by": self.count_by,
            "answers": self._answers,
            "counts": self.counts,
        }

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the vocabulary as JSON (through a temporary file, so a crash leaves no half file)."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists; pass overwrite=True or choose another path")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        self.path = str(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AnswerVocab":
        """Read a vocabulary written by ``save``, a JSON list of answers, or an ans2label object."""
        return cls(**read_answers_file(path), path=path)


def count_human_answers(answer_lists: Iterable[Sequence[str]]) -> Counter:
    """How often each normalised answer was given, counting every human answer of every question."""
    counts: Counter = Counter()
    for answers in answer_lists:
        counts.update(normalize_answer(answer) for answer in answers)
    return counts


def count_majority_answers(majority_answers: Iterable[str]) -> Counter:
    """How many questions have each normalised answer as their majority answer
    (``multiple_choice_answer``): the Bottom-Up / LXMERT / UNITER way, which with min_count=9
    over VQA v2 train+val gives their 3129 answers."""
    return Counter(normalize_answer(answer) for answer in majority_answers)


def vocab_from_counts(counts: Mapping[str, int], min_count: int = 9, count_by: str | None = None) -> AnswerVocab:
    """Answers counted at least ``min_count`` times, most frequent first (ties alphabetical)."""
    if min_count < 1:
        raise InputError(f"min_count must be at least 1, got {min_count}")
    kept = sorted((answer for answer, n in counts.items() if n >= min_count), key=lambda a: (-counts[a], a))
    if not kept:
        raise InputError(f"no answer occurs {min_count} or more times ({len(counts)} distinct answers); lower min_count")
    return AnswerVocab(kept, [counts[a] for a in kept], min_count=min_count, count_by=count_by)


def soft_scores(human_answers: Sequence[str], vocab: AnswerVocab) -> dict[int, float]:
    """Soft target of one question: vocab index -> the official accuracy of answering that
    entry, for every entry that scores above 0. Answers outside the vocabulary get no entry;
    a question without human answers (test) gets none."""
    if not human_answers:
        return {}
    forms, normalised = compared_answers(human_answers)
    scores: dict[int, float] = {}
    for form in dict.fromkeys(forms):
        indices = vocab.credited_indices(form, normalised)
        if indices:
            score = leave_one_out_accuracy(form, forms)
            for index in indices:
                scores[index] = score
    return scores
