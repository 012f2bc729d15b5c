"""Token-budget batches (TaskBatchSampler max_tokens; PretrainDataModule max_tokens): within the
budget, every example once per epoch, the same number of batches in every epoch, exact resume,
and a learning-rate schedule as long as the run's optimizer steps."""
from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from tests.test_resume_position import fit
from vlbert.data.samplers import EpochSampler, TaskBatchSampler, token_budget_batches
from vlbert.pretraining.datamodule import PretrainDataModule
from vlbert.training.optim import Optimization, build_optimizer

pytestmark = [
    pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended"),
    pytest.mark.filterwarnings("ignore:The dirpath has changed"),
]


def budget_sampler(lengths: list[int], max_tokens: int, **kwargs) -> TaskBatchSampler:
    return TaskBatchSampler(EpochSampler(len(lengths), seed=3), batch_size=1, drop_last=False, lengths=lengths,
                            max_tokens=max_tokens, seed=3, **kwargs)


def epoch_batches(sampler: TaskBatchSampler, epoch: int) -> list[list[int]]:
    sampler.sampler.set_epoch(epoch)
    return [[key[0] for key in batch] for batch in sampler]


def test_batches_keep_the_budget_and_cover_every_example_once():
    lengths = np.random.default_rng(0).integers(18, 141, 500).tolist()  # the 8-40 token / 10-100 region mix
    sampler = budget_sampler(lengths, max_tokens=1000)
    epochs = [epoch_batches(sampler, epoch) for epoch in range(3)]
    for batches in epochs:
        assert len(batches) == len(sampler)
        assert all(len(b) * max(lengths[i] for i in b) <= 1000 for b in batches)
        assert sorted(i for b in batches for i in b) == list(range(500))
        # nearly full: a batch ends only when the next example would not fit
        assert np.mean([len(b) * max(lengths[i] for i in b) for b in batches]) > 900
    assert epochs[0] != epochs[1]  # shuffled batch order and composition per epoch
    assert {tuple(sorted(b)) for b in epochs[0]} != {tuple(sorted(b)) for b in epochs[1]}


def test_budget_packs_sorted_lengths():
    # sorted: 2, 3, 3, 5, 9 -> [2, 3, 3] (3 x 3 = 9 <= 10), [5] (2 x 9 = 18 > 10 with the next), [9]
    assert token_budget_batches([0, 1, 2, 3, 4], [9, 3, 5, 2, 3], max_tokens=10) == [[3, 1, 4], [2], [0]]


def test_resume_skips_exactly_the_consumed_batches():
    lengths = np.random.default_rng(1).integers(18, 141, 300).tolist()
    straight = epoch_batches(budget_sampler(lengths, 800), 1)
    resumed = budget_sampler(lengths, 800, resume_epoch=1, resume_batches=7)
    assert epoch_batches(resumed, 1) == straight[7:]


def test_refuses_budgets_it_cannot_keep():
    with pytest.raises(ValueError, match="longest example"):
        budget_sampler([10, 50], max_tokens=40)
    with pytest.raises(ValueError, match="lengths"):
        TaskBatchSampler(EpochSampler(2), batch_size=1, drop_last=False, max_tokens=40)


def budget_data(world, workers: int = 0, max_tokens: int = 120) -> PretrainDataModule:
    return PretrainDataModule(
        features=str(world.features_path), train_annotations=str(world.captions("train")), tokenizer=str(world.tokenizer_dir),
        batch_size=32, num_workers=workers, max_regions=8, objectives={"mixing": "sample"}, max_tokens=max_tokens,
        pad_to_multiple_of=4,
    )


def test_datamodule_batches_hold_the_budget(tiny_world):
    data = budget_data(tiny_world)
    data.setup("fit")
    loader = data.train_dataloader()
    lengths = data.datasets["train"].token_lengths()
    seen = []
    for batch in loader:
        real = batch["text_mask"].sum(1) + batch["region_mask"].sum(1)
        assert batch["input_ids"].shape[1] % 4 == 0 and batch["region_mask"].shape[1] % 4 == 0
        seen.append(len(real))
    assert len(seen) == len(loader) and sum(seen) == len(lengths) == 160
    assert max(seen) > 1 and len(set(seen)) > 1  # examples per batch follow their lengths


def test_resume_with_token_budget_sees_the_remaining_batches(tiny_world, tmp_path):
    data = budget_data(tiny_world, workers=2)
    straight = fit(data, tmp_path / "a").seen
    per_epoch = len(straight) // 2
    assert per_epoch > 5  # more batches than 160 captions at batch_size 32
    for step in (3, per_epoch, per_epoch + 2):
        path = next((tmp_path / "a").rglob(f"step={step}.ckpt"))
        resumed = fit(budget_data(tiny_world), tmp_path / f"b{step}", ckpt_path=path).seen
        assert resumed == straight[step:]


class ScheduleRecorder(L.LightningModule):
    """build_optimizer's schedule over a run: the learning rate each optimizer step used."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.rates: list[float] = []

    def training_step(self, batch, batch_idx):
        return self.weight * batch["region_features"].float().mean()

    def on_before_optimizer_step(self, optimizer):
        self.rates.append(optimizer.param_groups[0]["lr"])

    def configure_optimizers(self):
        return build_optimizer(self, Optimization(lr=1.0, warmup=0))


@pytest.mark.parametrize("accumulate", [1, 3])
def test_schedule_counts_token_budget_batches(tiny_world, tmp_path, accumulate):
    data = budget_data(tiny_world)
    module = ScheduleRecorder()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, accumulate_grad_batches=accumulate, limit_val_batches=0,
        num_sanity_val_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    batches = len(data.train_dataloader())
    assert batches == sum(1 for _ in data.train_dataloader().batch_sampler) > 5  # len() is what an epoch yields
    steps = 2 * -(-batches // accumulate)
    assert trainer.estimated_stepping_batches == steps == len(module.rates)
    # linear decay to zero over exactly the run: the last step's rate is 1/steps
    assert module.rates[0] == 1.0 and module.rates[-1] == pytest.approx(1 / steps)
