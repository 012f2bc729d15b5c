"""The pretraining dataset: caption pairs + region features -> masked / negative examples.

Every random choice for an example comes from an RNG seeded by (seed, epoch, index, task),
so an example is the same whichever worker builds it and whether or not the run was resumed.

Keys: an example index (task "mix", epoch 0), (index, task, epoch), or a training key (index,
task, epoch, batch_in_epoch) from `TaskBatchSampler`, whose position only travels to the batch
(see `collate_pretrain`) and changes nothing in the example.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from vlbert.data.annotations import CaptionPair
from vlbert.errors import InputError
from vlbert.data.collate import cat_rows, collate_inputs, fresh_memory_is_zeroed, new_tensors, pad_stack, round_up, torch_dtype
from vlbert.data.regions import box_locations
from vlbert.data.tags import ObjectTags
from vlbert.data.samplers import EXAMPLE_POSITION_KEY, key_position, put_batch_position
from vlbert.featstore import FeatureStore, RegionRecord
from vlbert.pretraining.masking import IGNORE_INDEX, mask_regions, mask_tokens
from vlbert.pretraining.objectives import REGION_TASKS, TASKS, Objectives

# stable codes: a new task takes a new code, so the examples of every existing task stay the same
TASK_CODES = {"mlm": 0, "mrfr": 1, "mrc": 2, "mrc_kl": 3, "itm": 4, "mix": 5, "tag_contrastive": 6}
assert set(TASK_CODES) == {*TASKS, "mix"}


@dataclass
class _Plan:
    index: int
    task: str
    rng: np.random.Generator
    itm_label: int
    mask_text: bool
    mask_image: bool
    image_id: str
    position: tuple[int, int] | None  # (epoch, batch_in_epoch) of a training key
    tag_label: int = IGNORE_INDEX  # tag_contrastive: 1 = the image's own tags, 0 = another image's
    tag_image_id: str | None = None  # whose tags the example carries (default: image_id's)


class BatchExamples(list):
    """Examples of one batch whose region features are rows of `region_features` [B, R, D]
    (padded with zeros), which collate_pretrain uses without copying."""

    region_features: torch.Tensor


class PretrainDataset(Dataset):
    def __init__(
        self,
        pairs: Sequence[CaptionPair],
        store: FeatureStore,
        tokenizer,
        objectives: Objectives,
        max_text_len: int = 40,
        max_regions: int = 100,
        seed: int = 0,
        pad_to_multiple_of: int = 1,
        tags: ObjectTags | None = None,
    ) -> None:
        """pad_to_multiple_of: as collate_pretrain's (the batched read pads its region features so).
        tags: append each image's object tags to its text (Oscar); needed by tag_contrastive."""
        self.pairs = list(pairs)
        self.store = store
        self.objectives = objectives
        self.max_regions = max_regions
        self.seed = seed
        self.pad_to_multiple_of = pad_to_multiple_of
        self.tags = tags
        if objectives.tag_contrastive > 0 and tags is None:
            raise InputError("objectives.tag_contrastive > 0 tells clean from polluted object tags: set data.object_tags: true")
        weights = objectives.weights()
        roles = {"itm": weights["itm"], "text": weights["mlm"], "image": sum(weights[t] for t in REGION_TASKS),
                 "tags": weights["tag_contrastive"]}
        self.roles = [role for role, weight in roles.items() if weight > 0]
        self.role_probs = np.array([roles[r] for r in self.roles]) / sum(roles[r] for r in self.roles)
        self.image_ids = sorted({p.image_id for p in self.pairs})
        self.image_position = {image_id: i for i, image_id in enumerate(self.image_ids)}
        if objectives.itm > 0 and len(self.image_ids) < 2:
            raise InputError("ITM needs captions of at least 2 different images to draw negatives")
        if objectives.tag_contrastive > 0 and len(self.image_ids) < 2:
            raise InputError("tag_contrastive needs captions of at least 2 different images to draw polluted tags")
        encoded = tokenizer([p.caption for p in self.pairs], truncation=True, max_length=max_text_len)["input_ids"]
        self.input_ids = [np.asarray(ids, dtype=np.int64) for ids in encoded]
        self.mask_token_id = tokenizer.mask_token_id
        self.vocab_size = len(tokenizer)
        self.special_ids = frozenset(tokenizer.all_special_ids)

    def __len__(self) -> int:
        return len(self.pairs)

    def text_lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]

    def token_lengths(self) -> list[int]:
        """Text + region tokens of each caption with its own image (token budgets)."""
        regions = {image_id: min(self.store.num_boxes(image_id), self.max_regions) for image_id in self.image_ids}
        tags = self.tags.max_length if self.tags is not None else 0
        return [len(ids) + tags + regions[pair.image_id] for ids, pair in zip(self.input_ids, self.pairs)]

    def __getitem__(self, key: tuple[int, str, int] | tuple[int, str, int, int] | int) -> dict:
        plan = self._plan(key)
        return self._example(plan, self.store[plan.image_id])

    def __getitems__(self, keys: Sequence[tuple[int, str, int] | tuple[int, str, int, int] | int]) -> list[dict]:
        """[dataset[key] for key in keys], with the batch's region features read from the file
        straight into one padded tensor (in a DataLoader worker, shared memory) that
        `collate_pretrain` takes as it is: one copy of the features instead of two. Images the
        store reads through h5py take the one-by-one path."""
        plans = [self._plan(key) for key in keys]
        raw = [self.store.raw_features(plan.image_id) for plan in plans]
        if not plans or None in raw or len({dtype for _, dtype in raw}) > 1:
            return [self._example(plan, self.store[plan.image_id]) for plan in plans]
        counts = [min(n, self.max_regions) for n, _ in raw]
        shape = (len(plans), round_up(max(counts), self.pad_to_multiple_of), self.store.feature_dim)
        features = new_tensors({"region_features": (shape, torch_dtype(np.empty(0, raw[0][1])))})["region_features"]
        rows = features.numpy()
        examples = BatchExamples()
        for i, (plan, count) in enumerate(zip(plans, counts)):
            examples.append(self._example(plan, self.store.read_into(plan.image_id, rows[i, :count])))
            if count < shape[1] and not fresh_memory_is_zeroed():
                rows[i, count:] = 0
        examples.region_features = features
        return examples

    def _plan(self, key: tuple[int, str, int] | tuple[int, str, int, int] | int) -> "_Plan":
        """The example's random choices up to which image it reads."""
        index, task, epoch = (key, "mix", 0) if isinstance(key, int) else key[:3]
        rng = np.random.default_rng([self.seed, epoch, index, TASK_CODES[task]])
        pair = self.pairs[index]
        objectives = self.objectives
        itm_label = tag_label = IGNORE_INDEX
        mask_text = mask_image = False
        if task == "itm":
            itm_label = int(rng.random() >= objectives.itm_negative_prob)
        elif task == "tag_contrastive":
            tag_label = int(rng.random() >= objectives.tag_pollute_prob)
        elif task == "mlm":
            mask_text = True
        elif task in REGION_TASKS:
            mask_image = True
        else:  # "mix": one role per example, drawn with the objective weights as ratios
            role = self.roles[rng.choice(len(self.roles), p=self.role_probs)]
            if role == "itm":
                # ITM examples are never masked: were only matched pairs masked, a mask would
                # itself give the ITM answer away.
                itm_label = int(rng.random() >= objectives.itm_negative_prob)
            elif role == "tags":
                tag_label = int(rng.random() >= objectives.tag_pollute_prob)
            mask_text, mask_image = role == "text", role == "image"
        image_id = pair.image_id if itm_label != 0 else self._negative_image(pair.image_id, rng)
        tag_image_id = self._negative_image(pair.image_id, rng) if tag_label == 0 else None
        return _Plan(index, task, rng, itm_label, mask_text, mask_image, image_id, key_position(key), tag_label, tag_image_id)

    def _example(self, plan: "_Plan", record: RegionRecord) -> dict:
        """The example, from its plan and its image's record (whose arrays it may modify)."""
        index, task, rng, objectives = plan.index, plan.task, plan.rng, self.objectives
        features = record.features[: self.max_regions]
        locations = box_locations(record.boxes[: self.max_regions], record.image_w, record.image_h)

        input_ids, token_types = self.input_ids[index], None
        if self.tags is not None:
            tagged = record if plan.tag_image_id is None else self.store[plan.tag_image_id]
            input_ids, token_types = self.tags.append_to(input_ids, tagged.top_labels(), self.max_regions)
        mlm_labels = np.full(len(input_ids), IGNORE_INDEX)
        if plan.mask_text:  # with tags: words and tags alike (Oscar)
            input_ids, mlm_labels = mask_tokens(
                input_ids, rng, self.mask_token_id, self.vocab_size, self.special_ids, objectives.text_mask_prob
            )
        if plan.mask_image:
            region_masked = mask_regions(len(features), rng, objectives.region_mask_prob)
            region_targets = features[region_masked]  # a copy, taken before the masked rows are zeroed
            if not features.flags.writeable:
                features = features.copy()
            features[region_masked] = 0  # in place: the store's arrays are new on every read
        else:
            region_masked = np.zeros(len(features), bool)
            region_targets = features[:0]
        example = {
            "task": task,
            "input_ids": input_ids,
            "mlm_labels": mlm_labels,
            # As stored (float16 from extraction): the model casts them on its device.
            "region_features": features,
            "region_locations": locations,
            "region_masked": region_masked,
            "region_targets": region_targets,
            "itm_label": plan.itm_label,
            "tag_label": plan.tag_label,
        }
        if token_types is not None:
            example["token_type_ids"] = token_types
        labels = record.top_labels()
        if labels is not None:
            example["region_labels"] = labels[: self.max_regions][region_masked]
        if record.class_probs is not None:
            example["region_probs"] = record.class_probs[: self.max_regions][region_masked]
        if plan.position is not None:
            example[EXAMPLE_POSITION_KEY] = plan.position
        return example

    def _negative_image(self, image_id: str, rng: np.random.Generator) -> str:
        """A uniformly drawn image that is never the caption's own."""
        own = self.image_position[image_id]
        pick = int(rng.integers(len(self.image_ids) - 1))
        return self.image_ids[pick + (pick >= own)]


def collate_pretrain(examples: list[dict], pad_token_id: int = 0, pad_to_multiple_of: int = 1) -> dict:
    """Pad a list of examples into a batch (text and region lengths rounded up to a multiple of
    `pad_to_multiple_of`); masked-region targets are concatenated [M, ...].
    Region targets and class distributions keep their stored dtype (float16): the losses compute
    in float32.

    Where the targets are is also given as row indices, found here on the CPU so that the training
    step needs no data-dependent shapes on the device (each would be a host-device sync):
    mlm_index [K] and region_index [M] index the model's output rows [B * (T + R)] (text first),
    with mlm_targets [K] the masked tokens; itm_index [J] indexes the examples with an ITM label,
    itm_targets [J] those labels; tag_index / tag_targets likewise for tag_contrastive. Examples
    with object tags also give token_type_ids [B, T].

    Training batches (examples built from TaskBatchSampler's 4-tuple keys) also hold where they
    stand, as plain ints: "epoch" (the epoch their keys were drawn for) and "batch_in_epoch" (their
    index in it). They are for exact resume, not model inputs: the datamodule removes them in
    `on_before_batch_transfer`."""
    batch_size = len(examples)
    text_len = round_up(max(len(e["mlm_labels"]) for e in examples), pad_to_multiple_of)
    regions = round_up(max(len(e["region_masked"]) for e in examples), pad_to_multiple_of)
    cat = {"region_targets": [e["region_targets"] for e in examples]}
    for key in ("region_labels", "region_probs"):
        if all(key in e for e in examples):
            cat[key] = [e[key] for e in examples]
    text_targets = [np.flatnonzero(e["mlm_labels"] != IGNORE_INDEX) for e in examples]
    masked_regions = [np.flatnonzero(e["region_masked"]) for e in examples]
    itm_examples = [i for i, e in enumerate(examples) if e["itm_label"] != IGNORE_INDEX]
    tag_examples = [i for i, e in enumerate(examples) if e.get("tag_label", IGNORE_INDEX) != IGNORE_INDEX]
    num_text, num_regions = sum(map(len, text_targets)), sum(map(len, masked_regions))
    batch = collate_inputs(examples, pad_token_id, region_features=getattr(examples, "region_features", None),
                           pad_to_multiple_of=pad_to_multiple_of, extra={
        "mlm_labels": ((batch_size, text_len), torch.long),
        "region_masked": ((batch_size, regions), torch.bool),
        "itm_labels": ((batch_size,), torch.long),
        "mlm_index": ((num_text,), torch.long),
        "mlm_targets": ((num_text,), torch.long),
        "region_index": ((num_regions,), torch.long),
        "itm_index": ((len(itm_examples),), torch.long),
        "itm_targets": ((len(itm_examples),), torch.long),
        "tag_index": ((len(tag_examples),), torch.long),
        "tag_targets": ((len(tag_examples),), torch.long),
        **{key: ((sum(len(a) for a in arrays), *arrays[0].shape[1:]), torch_dtype(arrays[0])) for key, arrays in cat.items()},
    })
    pad_stack([e["mlm_labels"] for e in examples], IGNORE_INDEX, out=batch["mlm_labels"])
    pad_stack([e["region_masked"] for e in examples], False, out=batch["region_masked"], out_zeroed=fresh_memory_is_zeroed())
    batch["itm_labels"].numpy()[:] = [e["itm_label"] for e in examples]
    row = text_len + regions  # output rows per example
    if num_text:
        batch["mlm_index"].numpy()[:] = np.concatenate([i * row + t for i, t in enumerate(text_targets)])
        batch["mlm_targets"].numpy()[:] = np.concatenate([e["mlm_labels"][t] for e, t in zip(examples, text_targets)])
    if num_regions:
        batch["region_index"].numpy()[:] = np.concatenate([i * row + text_len + r for i, r in enumerate(masked_regions)])
    batch["itm_index"].numpy()[:] = itm_examples
    batch["itm_targets"].numpy()[:] = [examples[i]["itm_label"] for i in itm_examples]
    batch["tag_index"].numpy()[:] = tag_examples
    batch["tag_targets"].numpy()[:] = [examples[i]["tag_label"] for i in tag_examples]
    for key, arrays in cat.items():
        cat_rows(arrays, out=batch[key])
    tasks = {e["task"] for e in examples}
    batch["task"] = tasks.pop() if len(tasks) == 1 else "mix"
    put_batch_position(batch, examples)
    return batch
