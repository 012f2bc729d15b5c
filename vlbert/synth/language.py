"""Captions and VQA questions that are true of a scene.

Every word the generator can emit is in `LEXICON`, so the tokenizer vocabulary is the same
for every seed and world size (a model trained on one world reads another).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .scene import COLOR_NAMES, RELATIONS, SHAPES, SIZES, Scene, SceneObject

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven")
CAPTIONS_PER_IMAGE = 5
RELATION_PHRASES = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
POSITION_PHRASES = {
    ("top", "left"): "in the top left",
    ("top", "center"): "at the top",
    ("top", "right"): "in the top right",
    ("middle", "left"): "on the left",
    ("middle", "center"): "in the center",
    ("middle", "right"): "on the right",
    ("bottom", "left"): "in the bottom left",
    ("bottom", "center"): "at the bottom",
    ("bottom", "right"): "in the bottom right",
}
def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


_FUNCTION_WORDS = (
    "a an and the is are there what color shape how many any object objects shapes image picture with "
    "of to in at on top bottom left right center above below including it yes no"
)
LEXICON: frozenset[str] = frozenset(
    list(COLOR_NAMES)
    + list(SHAPES)
    + [plural(s) for s in SHAPES]
    + list(SIZES)
    + list(NUMBER_WORDS)
    + [str(i) for i in range(len(NUMBER_WORDS))]
    + _FUNCTION_WORDS.split()
)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (punctuation dropped), as in Karpathy's `tokens`."""
    return re.findall(r"[a-z0-9]+", text.lower())


def count_phrase(n: int, noun_singular: str) -> str:
    """'one red circle', 'three circles'. `noun_singular` may hold adjectives before the noun."""
    head, _, last = noun_singular.rpartition(" ")
    noun = noun_singular if n == 1 else (head + " " if head else "") + plural(last)
    return f"{NUMBER_WORDS[n]} {noun}"


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def describe(obj: SceneObject, with_size: bool) -> str:
    """'a small red circle' / 'a red circle'."""
    return _article((obj.size + " " if with_size else "") + f"{obj.color} {obj.shape}")


# ---------------------------------------------------------------- captions
def _caption_inventory(scene: Scene, rng: np.random.Generator) -> str:
    n = len(scene.objects)
    chosen = rng.permutation(n)[: min(n, 3)]
    parts = [describe(scene.objects[i], bool(rng.random() < 0.3)) for i in chosen]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    if n <= 3:
        return f"{listed} are the {count_phrase(n, 'shape')} in the image"
    return f"{count_phrase(n, 'shape')} including {listed}"


def _caption_relation(scene: Scene, rng: np.random.Generator) -> str:
    i, j = (int(k) for k in rng.permutation(len(scene.objects))[:2])
    rel = RELATION_PHRASES[scene.relation(i, j)]
    a = describe(scene.objects[i], bool(rng.random() < 0.3))
    b = describe(scene.objects[j], bool(rng.random() < 0.3))
    return f"{a} {rel} {b}" if rng.random() < 0.5 else f"there is {a} {rel} {b}"


def _caption_count(scene: Scene, rng: np.random.Generator) -> str:
    """Count of one attribute value plus one more object: 'two red shapes and a large blue square'."""
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    if rng.random() < 0.5:
        n = sum(o.color == obj.color for o in scene.objects)
        counted = count_phrase(n, f"{obj.color} shape")
        others = [o for o in scene.objects if o.color != obj.color]
    else:
        n = sum(o.shape == obj.shape for o in scene.objects)
        counted = count_phrase(n, obj.shape)
        others = [o for o in scene.objects if o.shape != obj.shape]
    if not others:
        return f"an image with {counted}"
    other = others[int(rng.integers(len(others)))]
    return f"{counted} and {describe(other, bool(rng.random() < 0.5))}"


def _caption_position(scene: Scene, rng: np.random.Generator) -> str:
    chosen = rng.permutation(len(scene.objects))[:2]
    parts = []
    for i in chosen:
        obj = scene.objects[int(i)]
        place = POSITION_PHRASES[obj.position(scene.width, scene.height)]
        parts.append(f"{describe(obj, bool(rng.random() < 0.5))} {place}")
    return " and ".join(parts)


def _caption_pair_relation(scene: Scene, rng: np.random.Generator) -> str:
    """Two relations to one anchor: 'a red circle above a blue square and a green cross to the left of it'."""
    n = len(scene.objects)
    if n < 3:
        return _caption_relation(scene, rng) + " in the picture"
    i, j, k = (int(x) for x in rng.permutation(n)[:3])
    anchor = describe(scene.objects[j], False)
    first = f"{describe(scene.objects[i], False)} {RELATION_PHRASES[scene.relation(i, j)]} {anchor}"
    second = f"{describe(scene.objects[k], False)} {RELATION_PHRASES[scene.relation(k, j)]} it"
    return f"{first} and {second}"


_CAPTION_KINDS = (_caption_inventory, _caption_relation, _caption_count, _caption_position, _caption_pair_relation)


def make_captions(scene: Scene, rng: np.random.Generator) -> list[str]:
    """Five distinct true captions, one per template family (order shuffled)."""
    captions: list[str] = []
    for kind in rng.permutation(len(_CAPTION_KINDS)):
        make = _CAPTION_KINDS[int(kind)]
        caption = make(scene, rng)
        for _retry in range(5):
            if caption not in captions:
                break
            caption = make(scene, rng)
        if caption in captions:  # a tiny scene can exhaust a family: fall back to a varied inventory
            caption = _caption_inventory(scene, rng) + " in the picture"
        captions.append(caption)
    return captions


# ---------------------------------------------------------------- questions
@dataclass
class Question:
    question: str
    answer: str
    answer_type: str  # "yes/no" | "number" | "other"
    question_type: str  # the question's first words, as in VQA


def _unique(scene: Scene, **attrs: str) -> list[int]:
    return [i for i, o in enumerate(scene.objects) if all(getattr(o, k) == v for k, v in attrs.items())]


def _q_color(scene: Scene, rng: np.random.Generator) -> Question | None:
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    if len(_unique(scene, shape=obj.shape)) == 1:
        text = f"what color is the {obj.shape}?"
    elif len(_unique(scene, shape=obj.shape, size=obj.size)) == 1:
        text = f"what color is the {obj.size} {obj.shape}?"
    else:
        return None
    return Question(text, obj.color, "other", "what color is the")


def _q_shape(scene: Scene, rng: np.random.Generator) -> Question | None:
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    if len(_unique(scene, color=obj.color)) == 1:
        text = f"what shape is the {obj.color} object?"
    elif len(_unique(scene, color=obj.color, size=obj.size)) == 1:
        text = f"what shape is the {obj.size} {obj.color} object?"
    else:
        return None
    return Question(text, obj.shape, "other", "what shape is the")


def _q_count(scene: Scene, rng: np.random.Generator) -> Question:
    roll = rng.random()
    if roll < 0.15:
        text, n = "how many shapes are there?", len(scene.objects)
    elif roll < 0.55:
        color = COLOR_NAMES[int(rng.integers(len(COLOR_NAMES)))] if rng.random() < 0.25 else \
            scene.objects[int(rng.integers(len(scene.objects)))].color
        text, n = f"how many {color} shapes are there?", len(_unique(scene, color=color))
    else:
        shape = SHAPES[int(rng.integers(len(SHAPES)))] if rng.random() < 0.25 else \
            scene.objects[int(rng.integers(len(scene.objects)))].shape
        text, n = f"how many {plural(shape)} are there?", len(_unique(scene, shape=shape))
    return Question(text, str(n), "number", "how many")


def _q_exists(scene: Scene, rng: np.random.Generator) -> Question:
    present = {(o.color, o.shape) for o in scene.objects}
    if rng.random() < 0.5:
        color, shape = sorted(present)[int(rng.integers(len(present)))]
    else:
        absent = [(c, s) for c in COLOR_NAMES for s in SHAPES if (c, s) not in present]
        color, shape = absent[int(rng.integers(len(absent)))]
    answer = "yes" if (color, shape) in present else "no"
    return Question(f"is there a {color} {shape}?", answer, "yes/no", "is there a")


def _q_relation(scene: Scene, rng: np.random.Generator) -> Question | None:
    """Colour or shape of the single object in one direction of a uniquely named anchor."""
    for _attempt in range(8):  # most (anchor, direction) pairs have zero or several targets
        anchor = int(rng.integers(len(scene.objects)))
        a = scene.objects[anchor]
        relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
        targets = [i for i in range(len(scene.objects)) if i != anchor and scene.relation(i, anchor) == relation]
        if len(targets) == 1 and len(_unique(scene, color=a.color, shape=a.shape)) == 1:
            break
    else:
        return None
    target = scene.objects[targets[0]]
    where = f"{RELATION_PHRASES[relation]} the {a.color} {a.shape}"
    if rng.random() < 0.5:
        return Question(f"what color is the shape {where}?", target.color, "other", "what color is the")
    return Question(f"what shape is the object {where}?", target.shape, "other", "what shape is the")


_QUESTION_KINDS = (_q_color, _q_shape, _q_count, _q_exists, _q_relation)


def make_questions(scene: Scene, rng: np.random.Generator, low: int = 4, high: int = 6) -> list[Question]:
    """Between `low` and `high` distinct questions, cycling over the kinds in a shuffled order."""
    wanted = int(rng.integers(low, high + 1))
    order = [int(k) for k in rng.permutation(len(_QUESTION_KINDS))]
    questions: list[Question] = []
    seen: set[str] = set()
    for attempt in range(60):
        if len(questions) == wanted:
            break
        q = _QUESTION_KINDS[order[attempt % len(order)]](scene, rng)
        if q is not None and q.question not in seen:
            questions.append(q)
            seen.add(q.question)
    return questions


def annotator_answers(question: Question, rng: np.random.Generator) -> list[str]:
    """Ten human-like answers: 0-3 of them differ from the truth (a wrong value, or for numbers
    sometimes the same number spelled out), so VQA soft scores have something to do."""
    n_diff = int(rng.choice([0, 0, 0, 1, 1, 2, 3]))
    answers = [question.answer] * 10
    for slot in rng.permutation(10)[:n_diff]:
        answers[int(slot)] = _other_answer(question, rng)
    return answers


def _other_answer(question: Question, rng: np.random.Generator) -> str:
    truth = question.answer
    if question.answer_type == "yes/no":
        return "no" if truth == "yes" else "yes"
    if question.answer_type == "number":
        n = int(truth)
        if rng.random() < 0.5:
            return NUMBER_WORDS[n]
        return str(n + 1 if n == 0 or rng.random() < 0.5 else n - 1)
    pool = COLOR_NAMES if truth in COLOR_NAMES else SHAPES
    others = [v for v in pool if v != truth]
    return others[int(rng.integers(len(others)))]
