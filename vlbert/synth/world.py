"""`generate_world`: render the whole synthetic world to a directory, and `World`, its file map.

Layout of a world directory (all ids are integers; ``images/<id>.png`` has stem ``str(id)``,
which is also the feature-store id)::

    synth.json                      manifest: generator, settings, split ids (marks the dir as ours)
    images/<image_id>.png
    captions/{split}.jsonl          {"image_id", "caption"} lines, 5 per image
    captions/captions_{split}.json  COCO captions format
    vqa/questions_{split}.json      VQA v2 questions
    vqa/annotations_{split}.json    VQA v2 annotations (10 answers each)
    retrieval/dataset_synth.json    Karpathy format
    boxes.json                      {"<image_id>": [[x1, y1, x2, y2], ...]} ground-truth object boxes
    scenes.json                     full scene graphs (attributes, positions, relations)
    tokenizer/                      word-level BERT tokenizer covering every word used
    features.h5                     region features (vlbert.featstore schema), unless disabled
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vlbert.errors import InputError
from vlbert.data.tokenizer import build_word_tokenizer
from vlbert.featstore import FeatureStoreError, FeatureWriter, read_header

from . import formats
from .features import FeatureSettings, projection, provenance, scene_regions
from .language import LEXICON, annotator_answers, make_captions, make_questions, words
from .render import render_scene
from .scene import COLOR_NAMES, SHAPES, SIZES, class_name, num_classes, sample_scene

SPLITS = ("train", "val", "test")
MANIFEST = "synth.json"
GENERATOR = "vlbert.synth"
FORMAT_VERSION = 1
FIRST_IMAGE_ID = 1000  # ids are not list indices, so code that mixes the two fails loudly


@dataclass
class World:
    """Paths and facts of a generated world; build with `generate_world` or `open_world`."""

    root: Path
    seed: int
    num_images: int
    image_size: int
    feature_dim: int
    has_features: bool
    split_ids: dict[str, list[int]] = field(default_factory=dict)
    num_classes: int = num_classes()
    colors: tuple[str, ...] = COLOR_NAMES
    shapes: tuple[str, ...] = SHAPES
    sizes: tuple[str, ...] = SIZES

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def image_path(self, image_id: int) -> Path:
        return self.images_dir / f"{image_id}.png"

    def image_ids(self, split: str | None = None) -> list[int]:
        if split is None:
            return [i for s in SPLITS for i in self.split_ids[s]]
        return list(self.split_ids[_check_split(split)])

    def captions(self, split: str) -> Path:
        """JSONL of {"image_id", "caption"}."""
        return self.root / "captions" / f"{_check_split(split)}.jsonl"

    def coco_captions(self, split: str) -> Path:
        return self.root / "captions" / f"captions_{_check_split(split)}.json"

    def vqa_questions(self, split: str) -> Path:
        return self.root / "vqa" / f"questions_{_check_split(split)}.json"

    def vqa_annotations(self, split: str) -> Path:
        return self.root / "vqa" / f"annotations_{_check_split(split)}.json"

    @property
    def karpathy_json(self) -> Path:
        return self.root / "retrieval" / "dataset_synth.json"

    @property
    def boxes_json(self) -> Path:
        return self.root / "boxes.json"

    @property
    def scenes_json(self) -> Path:
        return self.root / "scenes.json"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def features_path(self) -> Path:
        """HDF5 region features (exists only when the world was generated with features)."""
        return self.root / "features.h5"


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; the synthetic world has {list(SPLITS)}")
    return split


def split_counts(num_images: int, fractions: tuple[float, float, float]) -> list[int]:
    """Images per split (train, val, test): rounded fractions, the remainder going to test."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise InputError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    train = int(round(fractions[0] * num_images))
    val = int(round(fractions[1] * num_images))
    counts = [train, val, num_images - train - val]
    for name, frac, count in zip(SPLITS, fractions, counts):
        if frac > 0 and count <= 0:
            raise InputError(
                f"{num_images} images leave the {name} split empty with fractions {list(fractions)}; "
                "generate more images or change the fractions"
            )
    return counts


def _settings(seed, num_images, image_size, fractions, feature: FeatureSettings) -> dict:
    return {
        "seed": int(seed),
        "num_images": int(num_images),
        "image_size": int(image_size),
        "split_fractions": [float(f) for f in fractions],
        "feature_dim": feature.feature_dim,
        "feature_noise": feature.noise_std,
        "projection_seed": feature.projection_seed,
        "first_image_id": FIRST_IMAGE_ID,
        "format_version": FORMAT_VERSION,
    }


def _read_manifest(root: Path) -> dict | None:
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("generator") == GENERATOR else None


def _check_target(root: Path, settings: dict, features_provenance: dict | None, overwrite: bool) -> dict | None:
    """Raise before anything is written when ``root`` holds files that are not ours to replace."""
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a directory; choose another --out")
    if not root.exists() or not any(root.iterdir()):
        return None
    manifest = _read_manifest(root)
    if manifest is None:
        raise FileExistsError(
            f"{root} is not empty and holds no synthetic world ({MANIFEST} missing); refusing to write into it. "
            "Choose a new or empty directory for --out."
        )
    if manifest.get("settings") != settings and not overwrite:
        old = manifest.get("settings", {})
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        raise FileExistsError(
            f"{root} holds a synthetic world with other settings (old, new): {diff}. "
            "Pass --overwrite (overwrite=True) to replace it, or choose another directory."
        )
    features = root / "features.h5"
    if features_provenance is not None and features.exists() and not overwrite:
        try:
            existing = read_header(features)["provenance"]
        except (OSError, FeatureStoreError):
            existing = None
        if existing != features_provenance:
            raise FileExistsError(
                f"{features} exists and was not written by this synthetic world's settings; "
                "pass --overwrite (overwrite=True) to replace it, or move it away."
            )
    return manifest


def _remove_stale_images(images_dir: Path, keep: set[int]) -> None:
    """Drop ``<int>.png`` files of an earlier, larger world of ours (nothing else is touched)."""
    if not images_dir.is_dir():
        return
    for path in images_dir.glob("*.png"):
        if path.stem.isdigit() and int(path.stem) not in keep:
            path.unlink()


def open_world(root: str | os.PathLike) -> World:
    """The `World` of an existing, completely generated directory."""
    root = Path(root)
    manifest = _read_manifest(root)
    if manifest is None:
        raise FileNotFoundError(f"{root} holds no synthetic world ({MANIFEST} missing); run `vlbert synth --out {root}`")
    if not manifest.get("complete"):
        raise FileNotFoundError(f"the synthetic world in {root} is incomplete (interrupted?); generate it again")
    s = manifest["settings"]
    return World(
        root=root,
        seed=s["seed"],
        num_images=s["num_images"],
        image_size=s["image_size"],
        feature_dim=s["feature_dim"],
        has_features=bool(manifest.get("features")) and (root / "features.h5").exists(),
        split_ids={k: list(v) for k, v in manifest["splits"].items()},
    )


def generate_world(
    out_dir: str | os.PathLike,
    seed: int = 0,
    num_images: int = 600,
    image_size: int = 128,
    feature_dim: int = 64,
    write_features: bool = True,
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    feature_noise: float = 0.3,
    overwrite: bool = False,
    verbose: bool = False,
) -> World:
    """Render a deterministic synthetic world into ``out_dir`` and return its `World`.

    The same arguments give byte-identical JSON, identical pixels and identical features.
    Refuses a non-empty ``out_dir`` that is not a synthetic world of the same settings
    (``overwrite=True`` allows replacing a synthetic world of other settings and a foreign
    ``features.h5``; a directory without our manifest is never written into).
    """
    if num_images < 1:
        raise InputError(f"num_images must be positive, got {num_images}")
    if feature_dim < 1:
        raise InputError(f"feature_dim must be positive, got {feature_dim}")
    if feature_noise < 0:
        raise InputError(f"feature_noise must be >= 0, got {feature_noise}")
    counts = split_counts(num_images, tuple(split_fractions))
    feature_settings = FeatureSettings(feature_dim=feature_dim, noise_std=feature_noise)
    settings = _settings(seed, num_images, image_size, split_fractions, feature_settings)
    feat_prov = provenance(seed, feature_settings) if write_features else None
    root = Path(out_dir)
    start = time.perf_counter()
    _check_target(root, settings, feat_prov, overwrite)
    sample_scene(np.random.default_rng(0), 0, image_size)  # fail on a bad image size before writing anything

    ids = [FIRST_IMAGE_ID + i for i in range(num_images)]
    split_of: dict[int, str] = {}
    split_ids: dict[str, list[int]] = {}
    offset = 0
    for name, count in zip(SPLITS, counts):
        split_ids[name] = ids[offset : offset + count]
        split_of.update({i: name for i in split_ids[name]})
        offset += count

    for sub in ("images", "captions", "vqa", "retrieval"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    manifest = {
        "generator": GENERATOR,
        "settings": settings,
        "features": bool(write_features),
        "complete": False,
        "num_classes": num_classes(),
        "splits": split_ids,
    }
    formats.write_json(root / MANIFEST, manifest)
    _remove_stale_images(root / "images", set(ids))

    writer = None
    if write_features:
        writer = FeatureWriter(
            root / "features.h5", feature_dim, num_classes(), provenance=feat_prov, dtype="float32", overwrite=True,
            class_names=[class_name(i) for i in range(num_classes())],
        )
    weights = projection(feature_settings)
    try:
        scenes, captions, questions, answers = {}, {}, {}, {}
        for index, image_id in enumerate(ids):
            scene = sample_scene(np.random.default_rng([seed, index, 0]), image_id, image_size)
            render_scene(scene).save(root / "images" / f"{image_id}.png", format="PNG")
            text_rng = np.random.default_rng([seed, index, 1])
            scenes[image_id] = scene
            captions[image_id] = make_captions(scene, text_rng)
            questions[image_id] = make_questions(scene, text_rng)
            answers[image_id] = [annotator_answers(q, text_rng) for q in questions[image_id]]
            if writer is not None:
                writer.add(scene_regions(scene, np.random.default_rng([seed, index, 2]), feature_settings, weights))

        for name in SPLITS:
            members = split_ids[name]
            formats.write_jsonl(
                root / "captions" / f"{name}.jsonl",
                ({"image_id": i, "caption": c} for i in members for c in captions[i]),
            )
            formats.write_json(
                root / "captions" / f"captions_{name}.json",
                formats.coco_captions(name, [(i, image_size, image_size) for i in members], captions),
            )
            qs = {i: questions[i] for i in members}
            formats.write_json(root / "vqa" / f"questions_{name}.json", formats.vqa_questions(name, qs))
            formats.write_json(root / "vqa" / f"annotations_{name}.json", formats.vqa_annotations(name, qs, answers))
        formats.write_json(
            root / "retrieval" / "dataset_synth.json", formats.karpathy([(i, split_of[i]) for i in ids], captions)
        )
        formats.write_json(root / "boxes.json", {str(i): [list(o.box) for o in scenes[i].objects] for i in ids})
        formats.write_json(
            root / "scenes.json",
            {
                "colors": list(COLOR_NAMES),
                "shapes": list(SHAPES),
                "sizes": list(SIZES),
                "num_classes": num_classes(),
                "scenes": [dict(scenes[i].to_dict(), split=split_of[i]) for i in ids],
            },
        )

        texts = [t for i in ids for t in captions[i] + [q.question for q in questions[i]] + sum(answers[i], [])]
        used = {w for text in texts for w in words(text)}
        stray = used - LEXICON
        if stray:  # a template emitted a word outside the fixed lexicon: the vocabulary would depend on the seed
            raise RuntimeError(f"synthetic text uses words outside LEXICON: {sorted(stray)}")
        build_word_tokenizer(sorted(LEXICON), root / "tokenizer")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise

    if writer is not None:
        writer.close()
    manifest["complete"] = True
    formats.write_json(root / MANIFEST, manifest)
    if verbose:
        print(f"synthetic world: {num_images} images in {time.perf_counter() - start:.1f}s -> {root}")
    return World(
        root=root,
        seed=int(seed),
        num_images=num_images,
        image_size=image_size,
        feature_dim=feature_dim,
        has_features=bool(write_features),
        split_ids=split_ids,
    )
