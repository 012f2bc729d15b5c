"""Exact resume from the data side: training batches carry their (epoch, batch in epoch), the
datamodules record the last one training consumed, and a run resumed from a checkpoint sees exactly
the batches the uninterrupted run saw after it (mid-epoch, at an epoch boundary, with gradient
accumulation, with DataLoader workers prefetching ahead)."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from vlbert.data.samplers import BATCH_POSITION_KEYS
from vlbert.pretraining.datamodule import PretrainDataModule
from vlbert.tasks.retrieval.datamodule import RetrievalDataModule

# Lightning cannot tell that these datamodules resume their loaders, and every resumed run writes
# its checkpoints elsewhere.
pytestmark = [
    pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended"),
    pytest.mark.filterwarnings("ignore:The dirpath has changed"),
]

BATCHES_PER_EPOCH = 5  # 160 training captions in the tiny world, 32 a batch


def pretrain_data(world, workers: int) -> PretrainDataModule:
    return PretrainDataModule(
        features=str(world.features_path), train_annotations=str(world.captions("train")), tokenizer=str(world.tokenizer_dir),
        batch_size=32, num_workers=workers, max_regions=8, objectives={"mixing": "sample"},
    )


def retrieval_data(world, workers: int) -> RetrievalDataModule:
    return RetrievalDataModule(
        annotations=str(world.karpathy_json), features=str(world.features_path), tokenizer=str(world.tokenizer_dir),
        batch_size=32, negative_images=2, negative_captions=2, max_regions=8, num_workers=workers,
    )


DATAMODULES = {"pretrain": pretrain_data, "retrieval": retrieval_data}


class Recorder(L.LightningModule):
    """Trains nothing of interest: keeps what each training batch held."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.seen: list[list] = []

    def training_step(self, batch, batch_idx):
        assert not set(BATCH_POSITION_KEYS) & batch.keys(), "the position stays with the datamodule"
        self.seen.append(batch["input_ids"].tolist())
        return self.weight * batch["region_features"].float().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class ChecksRecordedPosition(Callback):
    """After every training batch the datamodule's state is the batches consumed so far this epoch
    (what Lightning's own progress counts), however far the loader's workers read ahead."""

    def __init__(self) -> None:
        self.checked = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        assert trainer.datamodule.state_dict() == {"epoch": trainer.current_epoch, "batches": batch_idx + 1}
        self.checked += 1


def fit(datamodule, root, ckpt_path=None, accumulate: int = 1, callbacks=()) -> Recorder:
    module = Recorder()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, accumulate_grad_batches=accumulate, limit_val_batches=0,
        num_sanity_val_steps=0, logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root, deterministic=True,
        callbacks=[
            ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}"),
            ModelCheckpoint(dirpath=root / "epochs", every_n_epochs=1, save_on_train_epoch_end=True, save_top_k=-1, filename="{epoch}"),
            *callbacks,
        ],
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return module


def saved_position(path, datamodule) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)[type(datamodule).__qualname__]


@pytest.mark.parametrize("name", sorted(DATAMODULES))
@pytest.mark.parametrize("accumulate", [1, 2])
def test_resume_sees_exactly_the_remaining_batches(tiny_world, tmp_path, name, accumulate):
    make = DATAMODULES[name]
    check = ChecksRecordedPosition()
    straight_data = make(tiny_world, workers=2)  # workers prefetch batches training has not consumed yet
    straight = fit(straight_data, tmp_path / "a", accumulate=accumulate, callbacks=[check]).seen
    assert len(straight) == check.checked == 2 * BATCHES_PER_EPOCH
    # optimizer steps (checkpoints) end after these many batches: accumulation flushes at an epoch's end
    steps_end = [b for b in range(1, BATCHES_PER_EPOCH + 1) if b % accumulate == 0 or b == BATCHES_PER_EPOCH]
    consumed = steps_end + [BATCHES_PER_EPOCH + b for b in steps_end]
    # mid-epoch 0, after the last batch of epoch 0, mid-epoch 1, and at the end of epoch 0
    resume_from = {f"step={step}": consumed[step - 1] for step in (1, len(steps_end), len(steps_end) + 1)}
    resume_from["epoch=0"] = BATCHES_PER_EPOCH
    for checkpoint, total in resume_from.items():
        path = next((tmp_path / "a").rglob(f"{checkpoint}.ckpt"))
        epoch, batches = divmod(total - 1, BATCHES_PER_EPOCH)
        assert saved_position(path, straight_data) == {"epoch": epoch, "batches": batches + 1}
        resumed = fit(make(tiny_world, workers=0), tmp_path / f"b_{checkpoint}", ckpt_path=path, accumulate=accumulate).seen
        # Lightning's epoch loop and the data agree: the rest of the epoch, then whole epochs
        assert resumed == straight[total:], f"resumed from {checkpoint} ({total} batches consumed)"


def test_hook_records_consumed_batches_not_prefetched_ones(tiny_world):
    """Driven by hand as Lightning's training loop drives it: the DataLoader's two workers have
    built batches ahead, but the recorded position counts only the batches passed to the hook."""
    data = pretrain_data(tiny_world, workers=2)
    data.setup("fit")
    assert data.state_dict() == {}
    loader = data.train_dataloader()
    batches = iter(loader)
    for consumed in range(1, 4):
        batch = data.on_before_batch_transfer(next(batches), 0)
        assert not set(BATCH_POSITION_KEYS) & batch.keys()
        assert data.state_dict() == {"epoch": 0, "batches": consumed}
    state = data.state_dict()
    rest = [b["input_ids"].tolist() for b in batches]
    assert len(rest) == BATCHES_PER_EPOCH - 3
    # a datamodule given that state skips those batches, and its record continues from it
    resumed = pretrain_data(tiny_world, workers=0)
    resumed.setup("fit")
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state  # before any batch: still where the checkpointed run was
    again = [resumed.on_before_batch_transfer(b, 0) for b in resumed.train_dataloader()]
    assert [b["input_ids"].tolist() for b in again] == rest
    assert resumed.state_dict() == {"epoch": 0, "batches": BATCHES_PER_EPOCH}


def test_validation_batches_leave_the_record_alone(tiny_world):
    data = PretrainDataModule(
        features=str(tiny_world.features_path), train_annotations=str(tiny_world.captions("train")),
        val_annotations=str(tiny_world.captions("val")), tokenizer=str(tiny_world.tokenizer_dir), batch_size=32, num_workers=0,
    )
    data.setup("fit")
    data.on_before_batch_transfer(next(iter(data.train_dataloader())), 0)
    for batch in data.val_dataloader():
        assert not set(BATCH_POSITION_KEYS) & batch.keys()
        data.on_before_batch_transfer(batch, 0)
    assert data.state_dict() == {"epoch": 0, "batches": 1}
