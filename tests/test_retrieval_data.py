import json

import numpy as np
import pytest

from vlbert.featstore import FeatureStore, FeatureStoreError, FeatureWriter, RegionRecord
from vlbert.tasks.retrieval.data import load_jsonl, load_karpathy, load_split


def karpathy(tmp_path):
    images = [
        {"filename": "10.jpg", "imgid": 0, "cocoid": 910, "split": "train", "sentences": [{"raw": "a red cube "}, {"raw": "cube"}]},
        {"filename": "11.jpg", "imgid": 1, "cocoid": 911, "split": "restval", "sentences": [{"raw": "two balls"}]},
        {"filename": "val2014/12.jpg", "imgid": 2, "cocoid": 912, "split": "test", "sentences": [{"raw": "x"}, {"raw": "y"}, {"raw": "z"}]},
    ]
    path = tmp_path / "dataset_toy.json"
    path.write_text(json.dumps({"images": images, "dataset": "toy"}))
    return path


def test_karpathy_splits_and_ids(tmp_path):
    path = karpathy(tmp_path)
    train = load_karpathy(path, ["train", "restval"])
    assert train.image_ids == ["10", "11"]
    assert train.captions == ["a red cube", "cube", "two balls"]
    assert train.caption_image == [0, 0, 1]
    assert train.image_captions == [[0, 1], [2]]
    test = load_split(path, "test")
    assert test.image_ids == ["12"] and test.num_captions == 3
    assert load_karpathy(path, ["test"], image_id_from="filename").image_ids == ["12.jpg"]
    assert load_karpathy(path, ["test"], image_id_from="cocoid").image_ids == ["912"]
    assert train.first_images(1).captions == ["a red cube", "cube"]


def test_karpathy_errors_name_the_problem(tmp_path):
    path = karpathy(tmp_path)
    with pytest.raises(ValueError, match=r"no images in split\(s\) \['val'\].*'restval', 'test', 'train'"):
        load_karpathy(path, ["val"])
    with pytest.raises(ValueError, match="no 'imgid' field|no 'cocoid'"):
        bad = tmp_path / "b.json"
        bad.write_text(json.dumps({"images": [{"filename": "1.jpg", "split": "test", "sentences": [{"raw": "a"}]}]}))
        load_karpathy(bad, ["test"], image_id_from="cocoid")
    dup = tmp_path / "dup.json"
    dup.write_text(json.dumps({"images": [
        {"filename": "a/1.jpg", "split": "test", "sentences": [{"raw": "a"}]},
        {"filename": "b/1.jpg", "split": "test", "sentences": [{"raw": "b"}]},
    ]}))
    with pytest.raises(ValueError, match="'1' occurs twice"):
        load_karpathy(dup, ["test"])
    with pytest.raises(FileNotFoundError, match="do not exist"):
        load_split(tmp_path / "nope.json", "test")


def test_jsonl_pairs_merge_per_image(tmp_path):
    path = tmp_path / "pairs.jsonl"
    lines = [
        {"image": "imgs/5.png", "caption": "one"},
        {"image_id": "7", "captions": ["two", "three"], "split": "val"},
        {"image": "5.png", "caption": "four", "split": "test"},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    split = load_split(path, None)
    assert split.image_ids == ["5", "7"]
    assert split.captions == ["one", "four", "two", "three"]
    assert split.caption_image == [0, 0, 1, 1]
    val = load_jsonl(path, ["val"])  # lines without a split field are kept, "test" ones dropped
    assert val.image_ids == ["5", "7"] and val.captions == ["one", "two", "three"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"image": "1.png"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1: needs a non-empty 'caption'"):
        load_jsonl(bad)


def test_missing_features_are_listed(tmp_path):
    path = karpathy(tmp_path)
    with FeatureWriter(tmp_path / "f.h5", feature_dim=4) as w:
        w.add(RegionRecord("10", np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32), 10, 10))
    store = FeatureStore(tmp_path / "f.h5")
    split = load_karpathy(path, ["train", "restval"])
    with pytest.raises(FeatureStoreError, match=r"1 image id\(s\) used by .*dataset_toy.json \[train\+restval\].*: 11"):
        split.check_features(store)


def test_training_keys_put_their_position_in_the_batch_only(tiny_world):
    import torch

    from vlbert.tasks.retrieval.datamodule import RetrievalDataModule

    data = RetrievalDataModule(annotations=str(tiny_world.karpathy_json), features=str(tiny_world.features_path),
                               tokenizer=str(tiny_world.tokenizer_dir), negative_images=2, negative_captions=2, num_workers=0)
    data.setup("fit")
    dataset = data.train_dataset
    keys = [(i, "retrieval", 3, 5) for i in (0, 7, 20)]
    batch = dataset.collate([dataset[key] for key in keys])
    assert batch["epoch"] == 3 and batch["batch_in_epoch"] == 5
    plain = dataset.collate([dataset[key[:3]] for key in keys])  # the same examples, without a position
    assert plain.keys() | {"epoch", "batch_in_epoch"} == batch.keys()
    assert all(torch.equal(plain[name], batch[name]) for name in plain)
    assert not torch.equal(plain["negative_images"], dataset.collate([dataset[(i, "retrieval", 0)] for i in (0, 7, 20)])["negative_images"])
    assert "epoch" not in dataset.collate([dataset[i] for i in (0, 7, 20)])  # caption indices
    sampled = next(iter(data.train_dataloader()))
    assert sampled["epoch"] == 0 and sampled["batch_in_epoch"] == 0
