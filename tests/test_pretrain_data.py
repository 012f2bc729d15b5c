"""Masking rates, conditional masking, ITM negatives, dynamic padding and the task sampler."""
import numpy as np
import pytest
import torch

from vlbert.data.annotations import load_pairs
from vlbert.data.collate import length_mask
from vlbert.data.regions import box_locations
from vlbert.data.samplers import EpochSampler, TaskBatchSampler
from vlbert.featstore import FeatureStore
from vlbert.pretraining.dataset import PretrainDataset, collate_pretrain
from vlbert.pretraining.masking import IGNORE_INDEX, mask_regions, mask_tokens
from vlbert.pretraining.objectives import Objectives


def test_mask_tokens_rate_and_80_10_10():
    rng = np.random.default_rng(0)
    special = {0, 2, 3}
    masked_count = replaced_mask = replaced_random = kept = total = 0
    for _ in range(2000):
        ids = np.concatenate([[2], rng.integers(10, 100, 30), [3]])
        new, labels = mask_tokens(ids, rng, mask_token_id=4, vocab_size=100, special_ids=special, prob=0.15)
        chosen = labels != IGNORE_INDEX
        assert not chosen[0] and not chosen[-1]  # [CLS] / [SEP] are never masked
        assert (labels[chosen] == ids[chosen]).all()
        assert (new[~chosen] == ids[~chosen]).all()
        total += 30
        masked_count += chosen.sum()
        replaced_mask += (new[chosen] == 4).sum()
        kept += (new[chosen] == ids[chosen]).sum()
        replaced_random += ((new[chosen] != 4) & (new[chosen] != ids[chosen])).sum()
    assert masked_count / total == pytest.approx(0.15, abs=0.01)
    assert replaced_mask / masked_count == pytest.approx(0.8, abs=0.02)
    # random replacements that happen to draw the original token count as kept
    assert kept / masked_count == pytest.approx(0.1, abs=0.02)
    assert replaced_random / masked_count == pytest.approx(0.1, abs=0.02)


def test_mask_tokens_masks_at_least_one_and_skips_all_special():
    rng = np.random.default_rng(1)
    _, labels = mask_tokens(np.array([2, 50, 3]), rng, 4, 100, {2, 3}, prob=0.0)
    assert (labels != IGNORE_INDEX).sum() == 1
    ids, labels = mask_tokens(np.array([2, 3]), rng, 4, 100, {2, 3})
    assert (labels == IGNORE_INDEX).all() and ids.tolist() == [2, 3]


def test_mask_regions_rate():
    rng = np.random.default_rng(0)
    masks = [mask_regions(40, rng, 0.15) for _ in range(1000)]
    assert np.mean(masks) == pytest.approx(0.15, abs=0.01)
    assert mask_regions(3, rng, 0.0).sum() == 1
    assert mask_regions(0, rng).shape == (0,)


def test_box_locations():
    loc = box_locations(np.array([[10, 20, 30, 60]]), 100, 200)
    assert loc[0].tolist() == pytest.approx([0.1, 0.1, 0.3, 0.3, 0.2, 0.2, 0.04])


@pytest.fixture(scope="module")
def dataset_parts(tiny_world, tiny_tokenizer):
    store = FeatureStore(tiny_world.features_path)
    pairs = load_pairs(tiny_world.captions("train"))
    return pairs, store, tiny_tokenizer


def test_mix_mode_conditional_masking_and_negatives(dataset_parts):
    pairs, store, tokenizer = dataset_parts
    dataset = PretrainDataset(pairs, store, tokenizer, Objectives(mixing="sum", mrc=1.0), seed=3)
    roles = {"negative": 0, "positive": 0, "text": 0, "image": 0}
    for index in range(len(dataset)):
        example = dataset[(index, "mix", 0)]
        text_masked = (example["mlm_labels"] != IGNORE_INDEX).any()
        image_masked = example["region_masked"].any()
        assert not (text_masked and image_masked), "one modality at a time"
        if example["itm_label"] != IGNORE_INDEX:
            # ITM pairs are never masked (a mask only on matched pairs would give the answer away)
            assert not text_masked and not image_masked
            roles["negative" if example["itm_label"] == 0 else "positive"] += 1
        else:
            assert text_masked or image_masked, "masked modelling runs on matched pairs"
            roles["text" if text_masked else "image"] += 1
        if image_masked:
            assert np.all(example["region_features"][example["region_masked"]] == 0)
            assert len(example["region_targets"]) == example["region_masked"].sum() == len(example["region_labels"])
    # weights mlm 1, region 1 + 1 + 1, itm 1: roles text 1/5, image 3/5, itm 1/5 (half negative)
    n = len(dataset)
    assert roles["text"] == pytest.approx(n / 5, abs=n * 0.08) and roles["image"] == pytest.approx(3 * n / 5, abs=n * 0.1)
    assert roles["negative"] == pytest.approx(n / 10, abs=n * 0.06) and roles["positive"] == pytest.approx(n / 10, abs=n * 0.06)


def test_itm_negative_never_uses_the_captions_own_image(dataset_parts, monkeypatch):
    pairs, store, tokenizer = dataset_parts
    dataset = PretrainDataset(pairs, store, tokenizer, Objectives(itm_negative_prob=1.0))
    seen = []
    original = store.__class__.__getitem__
    monkeypatch.setattr(store.__class__, "__getitem__", lambda self, key: seen.append(key) or original(self, key))
    for epoch in range(3):
        for index in range(len(dataset)):
            seen.clear()
            example = dataset[(index, "itm", epoch)]
            assert example["itm_label"] == 0
            assert seen == [seen[0]] and seen[0] != pairs[index].image_id


def test_examples_are_deterministic_per_key(dataset_parts):
    pairs, store, tokenizer = dataset_parts
    a = PretrainDataset(pairs, store, tokenizer, Objectives(), seed=5)
    b = PretrainDataset(pairs, store, tokenizer, Objectives(), seed=5)
    for key in [(0, "mlm", 0), (1, "mrfr", 2), (2, "itm", 1)]:
        x, y = a[key], b[key]
        assert all(np.array_equal(x[k], y[k]) for k in ("input_ids", "mlm_labels", "region_features"))
    # another epoch masks differently
    assert any(not np.array_equal(a[(i, "mlm", 0)]["mlm_labels"], a[(i, "mlm", 1)]["mlm_labels"]) for i in range(5))


def test_single_task_examples_mask_only_their_modality(dataset_parts):
    pairs, store, tokenizer = dataset_parts
    dataset = PretrainDataset(pairs, store, tokenizer, Objectives())
    mlm = dataset[(0, "mlm", 0)]
    assert (mlm["mlm_labels"] != IGNORE_INDEX).any() and not mlm["region_masked"].any() and mlm["itm_label"] == IGNORE_INDEX
    mrm = dataset[(0, "mrc_kl", 0)]
    assert (mrm["mlm_labels"] == IGNORE_INDEX).all() and mrm["region_masked"].any()
    assert mrm["region_probs"].shape == (mrm["region_masked"].sum(), store.num_classes)


def test_collate_pads_to_the_batch_longest_and_masks(dataset_parts):
    pairs, store, tokenizer = dataset_parts
    dataset = PretrainDataset(pairs, store, tokenizer, Objectives(), max_regions=5)
    examples = [dataset[(i, "mlm", 0)] for i in range(4)]
    batch = collate_pretrain(examples, tokenizer.pad_token_id)
    lengths = [len(e["input_ids"]) for e in examples]
    regions = [len(e["region_features"]) for e in examples]
    assert batch["input_ids"].shape == (4, max(lengths))
    assert batch["text_mask"].sum(1).tolist() == lengths
    assert batch["region_features"].shape == (4, max(regions), store.feature_dim)
    assert batch["region_mask"].sum(1).tolist() == regions and max(regions) <= 5
    assert (batch["input_ids"][~batch["text_mask"]] == tokenizer.pad_token_id).all()
    assert (batch["mlm_labels"][~batch["text_mask"]] == IGNORE_INDEX).all()
    assert batch["task"] == "mlm"


def test_collate_row_indices_address_the_masked_targets(dataset_parts):
    """mlm_index / region_index / itm_index pick the same rows and targets as the boolean masks."""
    pairs, store, tokenizer = dataset_parts
    dataset = PretrainDataset(pairs, store, tokenizer, Objectives(mixing="sum", mrc=1.0), max_regions=7, seed=3)
    batch = collate_pretrain([dataset[(i, "mix", 0)] for i in range(12)], tokenizer.pad_token_id)
    b, t = batch["input_ids"].shape
    r = batch["region_masked"].shape[1]
    rows = torch.arange(b * (t + r)).view(b, t + r)  # stands for the model's output rows
    text_targets = batch["mlm_labels"] != IGNORE_INDEX
    assert 0 < len(batch["mlm_index"]) and 0 < len(batch["region_index"]) and 0 < len(batch["itm_index"]) < b
    assert torch.equal(batch["mlm_index"], rows[:, :t][text_targets])
    assert torch.equal(batch["mlm_targets"], batch["mlm_labels"][text_targets])
    assert torch.equal(batch["region_index"], rows[:, t:][batch["region_masked"]])
    assert len(batch["region_index"]) == len(batch["region_targets"]) == len(batch["region_labels"])
    itm = batch["itm_labels"] != IGNORE_INDEX
    assert torch.equal(batch["itm_index"], itm.nonzero().squeeze(1)) and torch.equal(batch["itm_targets"], batch["itm_labels"][itm])


def test_length_mask():
    assert length_mask([2, 0, 3]).tolist() == [[True, True, False], [False, False, False], [True, True, True]]


def test_task_batch_sampler_ratios_buckets_and_resume():
    lengths = list(np.random.default_rng(0).integers(5, 40, 400))
    sampler = TaskBatchSampler(EpochSampler(400, seed=1), 10, False, tasks=["mlm", "itm"], weights=[3, 1], lengths=lengths)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 40
    assert sorted(key[0] for b in batches for key in b) == list(range(400))
    tasks = [b[0][1] for b in batches]
    assert all(len({key[1] for key in b}) == 1 for b in batches)
    assert 0.55 < tasks.count("mlm") / 40 < 0.95
    spread = np.mean([np.ptp([lengths[key[0]] for key in b]) for b in batches])
    assert spread < 8  # bucketing keeps similar lengths together (unbucketed spread is ~30)
    # training keys carry their batch's position: (index, task, epoch, batch_in_epoch)
    assert all(key[2:] == (0, position) for position, b in enumerate(batches) for key in b)
    sampler.sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != batches and all(key[2:] == (1, position) for position, b in enumerate(epoch1) for key in b)
    resumed = TaskBatchSampler(EpochSampler(400, seed=1), 10, False, tasks=["mlm", "itm"], weights=[3, 1], lengths=lengths, resume_epoch=1, resume_batches=7)
    resumed.sampler.set_epoch(1)
    assert list(resumed) == epoch1[7:]  # positions still count from the epoch's start
    every = TaskBatchSampler(EpochSampler(25, shuffle=False), 10, False, tasks=["mlm", "itm"], every_task=True)
    assert len(list(every)) == len(every) == 6
    first = list(every)
    every.sampler.set_epoch(3)
    assert list(every) == first and all(key[2] == 0 and len(key) == 3 for b in first for key in b)  # fixed validation examples


def test_resumed_batch_sampler_starts_where_the_run_stopped_before_its_epoch_is_set():
    """Lightning makes a resumed run's first iterator before it sets the sampler's epoch: the
    sampler goes to the resume epoch itself; after a whole epoch, the resumed run starts the next."""
    def make(**resume):
        return TaskBatchSampler(EpochSampler(100, seed=2), 10, False, tasks=["mlm", "itm"], **resume)

    straight = make()
    epochs = []
    for epoch in range(3):
        straight.sampler.set_epoch(epoch)
        epochs.append(list(straight))
    assert list(make(resume_epoch=1, resume_batches=4)) == epochs[1][4:]  # sampler's epoch never set
    end_of_epoch = make(resume_epoch=1, resume_batches=10)
    assert list(end_of_epoch) == epochs[2] and end_of_epoch.sampler.epoch == 2
    later = make(resume_epoch=1, resume_batches=4)
    later.sampler.set_epoch(2)  # the epochs after the resumed one are whole
    assert list(later) == epochs[2]
    assert list(make(resume_epoch=0, resume_batches=0)) == epochs[0]


def test_training_keys_put_their_position_in_the_batch_only(dataset_parts):
    pairs, store, tokenizer = dataset_parts
    dataset = PretrainDataset(pairs, store, tokenizer, Objectives(), max_regions=5)
    keys = [(i, "mlm", 2, 9) for i in range(4)]
    batch = collate_pretrain(dataset.__getitems__(keys), tokenizer.pad_token_id)
    assert batch["epoch"] == 2 and batch["batch_in_epoch"] == 9
    one_by_one = collate_pretrain([dataset[key] for key in keys], tokenizer.pad_token_id)
    plain = collate_pretrain([dataset[key[:3]] for key in keys], tokenizer.pad_token_id)  # the examples are the same
    assert "epoch" not in plain and "batch_in_epoch" not in plain
    assert plain.keys() | {"epoch", "batch_in_epoch"} == batch.keys() == one_by_one.keys()
    for name in plain:
        assert plain[name] == batch[name] if isinstance(plain[name], str) else torch.equal(plain[name], batch[name]), name
    assert "epoch" not in collate_pretrain([dataset[i] for i in range(3)], tokenizer.pad_token_id)  # int keys
