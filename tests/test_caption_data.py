"""Caption annotations (Karpathy, COCO, JSONL), the objectives' targets, and the batches."""
import json

import numpy as np
import pytest
import torch

from vlbert.errors import InputError
from vlbert.featstore import FeatureStore
from vlbert.modeling.caption import IGNORE_INDEX
from vlbert.tasks.caption.data import load_captions
from vlbert.tasks.caption.dataset import CaptionImageDataset, CaptionTrainDataset, caption_targets, collate_images, collate_train


def test_the_worlds_three_caption_files_give_the_same_split(tiny_world):
    karpathy = load_captions(tiny_world.karpathy_json, ["test"])
    coco = load_captions(tiny_world.coco_captions("test"))
    jsonl = load_captions(tiny_world.captions("test"))
    ids = tiny_world.image_ids("test")
    assert karpathy.feature_ids == coco.feature_ids == jsonl.feature_ids == [str(i) for i in ids]
    assert karpathy.result_ids == coco.result_ids == jsonl.result_ids == ids  # integers, as COCO results want
    assert karpathy.references == coco.references == jsonl.references
    assert all(len(refs) == 5 for refs in karpathy.references)
    two = load_captions(tiny_world.karpathy_json, ["val", "test"])
    assert len(two) == len(tiny_world.image_ids("val")) + len(ids)


def test_karpathy_ids_and_unknown_splits(tmp_path):
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps({"images": [
        {"filename": "COCO_val2014_000000391895.jpg", "split": "test", "cocoid": 391895, "imgid": 0,
         "sentences": [{"raw": "A man on a bike.", "tokens": ["a", "man"]}]},
        {"filename": "COCO_val2014_000000000042.jpg", "split": "restval", "cocoid": 42, "imgid": 1,
         "sentences": [{"raw": "A dog.", "tokens": ["a", "dog"]}]}]}))
    split = load_captions(path, ["test"])
    assert split.feature_ids == ["COCO_val2014_000000391895"] and split.result_ids == [391895]
    assert load_captions(path, ["test", "restval"], image_id_from="cocoid").feature_ids == ["391895", "42"]
    with pytest.raises(InputError, match=r"no images in split\(s\) \['tset'\]; the file has splits \['restval', 'test'\]"):
        load_captions(path, ["tset"])
    with pytest.raises(InputError, match="needs the split"):
        load_captions(path)
    with pytest.raises(InputError, match="do not exist"):
        load_captions(tmp_path / "missing.json", ["test"])
    with pytest.raises(InputError, match="image_id_from"):
        load_captions(path, ["test"], image_id_from="number")


def test_caption_targets_per_objective():
    ids = np.array([2, 10, 11, 12, 3])  # [CLS] w w w [SEP]
    inputs, labels = caption_targets(ids, "next_token", np.random.default_rng(0), 4, 150, cls_token_id=2)
    assert inputs.tolist() == ids.tolist() and labels.tolist() == [10, 11, 12, 3, IGNORE_INDEX]
    seen_sep = False
    for seed in range(50):
        inputs, labels = caption_targets(ids, "masked", np.random.default_rng(seed), 4, 150, cls_token_id=2, mask_prob=0.3)
        scored = labels != IGNORE_INDEX
        assert scored.any() and not scored[0]  # at least one target; [CLS] is never masked
        assert labels[scored].tolist() == ids[scored].tolist()
        assert (inputs[~scored] == ids[~scored]).all()
        seen_sep |= bool(scored[-1])
    assert seen_sep  # the end token is a target too: the model learns where captions end
    with pytest.raises(ValueError, match="objective"):
        caption_targets(ids, "shifted", np.random.default_rng(0), 4, 150, 2)


def test_training_batches_and_image_batches(tiny_world, tiny_tokenizer):
    store = FeatureStore(tiny_world.features_path)
    split = load_captions(tiny_world.karpathy_json, ["train"])
    dataset = CaptionTrainDataset(split, store, tiny_tokenizer, "masked", max_text_len=12, max_regions=4, seed=3)
    assert len(dataset) == 5 * len(split)
    first = dataset[(7, "caption", 2)]
    assert first["input_ids"].tolist() == dataset[(7, "caption", 2, 0)]["input_ids"].tolist()  # same key, same masks
    batch = collate_train([dataset[(i, "caption", 0)] for i in range(4)], tiny_tokenizer.pad_token_id)
    assert batch["labels"].shape == batch["input_ids"].shape and batch["region_features"].shape[1] <= 4
    assert bool((batch["labels"][~batch["text_mask"]] == IGNORE_INDEX).all())
    images = collate_images([CaptionImageDataset(split, store, 4)[i] for i in (0, 1)])
    assert images["region_mask"].dtype == torch.bool and images["images"].result_ids == split.result_ids[:2]
    assert images["images"].references == split.references[:2]
