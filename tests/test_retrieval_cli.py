"""`vlbert retrieval` end to end on the synthetic world: fit, test, score dumps, DDP sharding, bad input."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny import refused, tiny_config
from vlbert.cli import main as vlbert
from vlbert.featstore import FeatureStore, FeatureStoreError, FeatureWriter
from vlbert import VLBertForPretraining, VLBertModel
from vlbert.tasks.retrieval.datamodule import RetrievalDataModule
from vlbert.tasks.retrieval.metric import retrieval_recall
from vlbert.tasks.retrieval.module import RetrievalModule

REPO = Path(__file__).resolve().parents[1]


def retrieval_args(world, root, **extra) -> list[str]:
    """A few CPU steps of the tiny retrieval config on `world` (40 images: 32 train, 4 val, 4 test)."""
    args = [
        "--config", str(REPO / "configs/retrieval/tiny.yaml"),
        "--data.annotations", str(world.karpathy_json),
        "--data.features", str(world.features_path),
        "--data.tokenizer", str(world.tokenizer_dir),
        "--data.num_workers", "0",
        "--data.batch_size", "4",
        "--data.negative_images", "5",
        "--data.negative_captions", "5",
        "--model.model.hidden_size", "32",
        "--model.model.intermediate_size", "64",
        "--model.negatives.images", "2",
        "--model.negatives.captions", "2",
        "--model.negatives.random_steps", "0",
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false",
        "--trainer.enable_checkpointing", "false",
        "--model.export_dir", "null",
    ]
    for key, value in extra.items():
        args += [f"--{key}", str(value)]
    return args


@pytest.fixture(scope="module")
def fitted(tiny_world, tmp_path_factory):
    """A retrieval model fitted for 3 steps and exported."""
    root = tmp_path_factory.mktemp("fit")
    args = retrieval_args(tiny_world, root, **{"trainer.max_steps": 3, "trainer.max_epochs": -1, "model.export_dir": root / "export",
                                               "trainer.enable_checkpointing": "true", "trainer.val_check_interval": 3})
    assert vlbert(["retrieval", "fit", *args]) == 0
    return root / "export"


def test_fit_exports_a_model_directory_with_the_itm_head(fitted):
    from safetensors.torch import load_file

    weights = load_file(fitted / "model.safetensors")
    assert any(k.startswith("itm_head.") for k in weights) and any(k.startswith("vlbert.") for k in weights)
    assert (fitted / "tokenizer_config.json").exists() and (fitted / "features.json").exists()


def test_export_of_a_checkpoint_equals_the_export_at_the_end_of_fit(fitted, tmp_path, capsys):
    from safetensors.torch import load_file

    (checkpoint,) = (fitted.parent / "checkpoints").glob("*.ckpt")
    assert vlbert(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "exported")]) == 0
    assert "(retrieval)" in capsys.readouterr().out
    exported, at_end = load_file(tmp_path / "exported" / "model.safetensors"), load_file(fitted / "model.safetensors")
    assert exported.keys() == at_end.keys() and all(torch.equal(exported[k], at_end[k]) for k in at_end)
    assert (tmp_path / "exported" / "tokenizer_config.json").exists() and (tmp_path / "exported" / "features.json").exists()
    RetrievalModule(init_from=str(tmp_path / "exported"))  # loads as a retrieval model again


def test_export_names_the_weights_a_checkpoint_lacks(fitted, tmp_path, capsys):
    (checkpoint_path,) = (fitted.parent / "checkpoints").glob("*.ckpt")
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    del checkpoint["state_dict"]["model.itm_head.classifier.weight"]
    torch.save(checkpoint, tmp_path / "damaged.ckpt")
    assert vlbert(["export", "--checkpoint", str(tmp_path / "damaged.ckpt"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"damaged\.ckpt lacks weights \['itm_head\.classifier\.weight'\]", err) and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_checkpoint_no_vlbert_command_wrote(tmp_path, capsys):
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"linear.weight": torch.zeros(2, 2)}, "hyper_parameters": {"lr": 0.1}}, path)
    assert vlbert(["export", "--checkpoint", str(path), "--out", str(tmp_path / "out")]) == 2
    assert re.search(r"other\.ckpt.*`vlbert pretrain`, `vlbert vqa` or `vlbert retrieval`", capsys.readouterr().err)
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    assert vlbert(["export", "--checkpoint", str(tmp_path / "text.ckpt"), "--out", str(tmp_path / "out")]) == 2
    assert "text.ckpt is not a PyTorch checkpoint (not a torch.save zip file)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_dump_scores_is_never_taken_from_a_checkpoint(tiny_world, tmp_path):
    """The reproduced defect: `retrieval test --ckpt_path C --model.dump_scores new.pt` wrote to the
    fit run's dump_scores (LightningCLI re-applies a checkpoint's hyperparameters)."""
    old, new = tmp_path / "old.pt", tmp_path / "new.pt"
    args = retrieval_args(tiny_world, tmp_path / "fit", **{"trainer.max_steps": 2, "trainer.max_epochs": -1,
                                                           "trainer.val_check_interval": 2, "trainer.enable_checkpointing": "true",
                                                           "model.dump_scores": old, "model.export_dir": tmp_path / "export"})
    assert vlbert(["retrieval", "fit", *args]) == 0
    (checkpoint,) = (tmp_path / "fit").rglob("*.ckpt")
    assert {"dump_scores", "export_dir"}.isdisjoint(torch.load(checkpoint, weights_only=True)["hyper_parameters"])
    args = retrieval_args(tiny_world, tmp_path / "test", **{"model.dump_scores": new})
    assert vlbert(["retrieval", "test", *args, f"--ckpt_path={checkpoint}"]) == 0
    assert new.is_file() and not old.exists()


def test_test_reports_recall_and_dumps_the_score_matrix(tiny_world, fitted, tmp_path, capsys):
    dump = tmp_path / "scores.pt"
    args = retrieval_args(tiny_world, tmp_path, **{"model.init_from": fitted, "model.dump_scores": dump})
    assert vlbert(["retrieval", "test", *args]) == 0
    out = capsys.readouterr().out
    for metric in ("test/i2t_r1", "test/t2i_r1", "test/r_mean"):
        assert metric in out
    saved = torch.load(dump, weights_only=False)
    test_ids = [str(i) for i in tiny_world.image_ids("test")]
    assert saved["image_ids"] == test_ids
    assert saved["scores"].shape == (len(test_ids), len(saved["captions"])) == (4, 20)
    recomputed = retrieval_recall(saved["scores"], torch.tensor(saved["caption_image"]))
    assert recomputed == pytest.approx(saved["metrics"])
    # the user's file is never overwritten
    before = dump.read_bytes()
    refused(capsys, ["retrieval", "test", *args], "scores.pt already exists")
    assert dump.read_bytes() == before


@pytest.mark.slow
def test_sharded_ddp_evaluation_equals_single_process(tiny_world, fitted, tmp_path):
    """2 CPU processes (gloo) each score half of the test images' rows against every caption;
    the gathered matrix, its recall and the dump are the single-process ones."""
    single, sharded = tmp_path / "single.pt", tmp_path / "ddp.pt"
    common = {"model.init_from": fitted, "data.eval_images_per_batch": 1, "model.eval_pairs_per_batch": 7}
    assert vlbert(["retrieval", "test", *retrieval_args(tiny_world, tmp_path / "a", **common, **{"model.dump_scores": single})]) == 0
    args = retrieval_args(tiny_world, tmp_path / "b", **common, **{
        "model.dump_scores": sharded, "trainer.devices": 2, "trainer.strategy": "ddp"})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = subprocess.run([sys.executable, "-m", "vlbert.tasks.retrieval.cli", "test", *args],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "MEMBER: 2/2" in run.stderr + run.stdout
    a, b = torch.load(single, weights_only=False), torch.load(sharded, weights_only=False)
    torch.testing.assert_close(b["scores"], a["scores"], atol=1e-5, rtol=1e-5)
    assert b["metrics"] == pytest.approx(a["metrics"])


def test_missing_features_fail_before_training(tiny_world, tmp_path, capsys):
    store = FeatureStore(tiny_world.features_path)
    with FeatureWriter(tmp_path / "partial.h5", store.feature_dim, store.num_classes) as writer:
        for image_id in store.ids[:30]:
            writer.add(store[image_id])
    args = retrieval_args(tiny_world, tmp_path, **{"data.features": tmp_path / "partial.h5", "trainer.max_steps": 2})
    refused(capsys, ["retrieval", "fit", *args], r"image id\(s\) used by .*dataset_synth.json \[train\] have no features")


def test_more_hard_negatives_than_sampled_is_refused(tiny_world, tmp_path, capsys):
    args = retrieval_args(tiny_world, tmp_path, **{"model.negatives.images": 6, "trainer.max_steps": 2})
    refused(capsys, ["retrieval", "fit", *args], "model.negatives.images=6 .* data.negative_images=5")


def test_partial_evaluation_is_an_error_not_a_wrong_recall(tiny_world, tmp_path, capsys):
    args = retrieval_args(tiny_world, tmp_path, **{"data.eval_images_per_batch": 1, "trainer.limit_test_batches": 2})
    refused(capsys, ["retrieval", "test", *args], "trainer.limit_test_batches: 2: .* evaluation needs every batch")


def test_init_from_pretraining_export_keeps_its_itm_head(tmp_path):
    config = tiny_config()
    torch.manual_seed(0)
    pretrained = VLBertForPretraining(config)
    pretrained.save_pretrained(tmp_path / "pre")
    module = RetrievalModule(init_from=str(tmp_path / "pre"))
    torch.testing.assert_close(module.model.itm_head.classifier.weight, pretrained.itm_head.classifier.weight)
    torch.testing.assert_close(module.model.vlbert.pooler.dense.weight, pretrained.vlbert.pooler.dense.weight)
    # an encoder-only directory: the ITM head starts new instead of failing
    encoder = VLBertModel(config)
    encoder.save_pretrained(tmp_path / "enc")
    module = RetrievalModule(init_from=str(tmp_path / "enc"))
    assert module.model.itm_head.classifier.weight.shape == (2, config.hidden_size)
    torch.testing.assert_close(module.model.vlbert.pooler.dense.weight, encoder.pooler.dense.weight)


def test_training_keeps_the_hardest_sampled_negatives(tiny_world):
    """With a scorer whose ranking is known, the kept negatives are the top-scoring ones."""
    dm = RetrievalDataModule(str(tiny_world.karpathy_json), str(tiny_world.features_path), str(tiny_world.tokenizer_dir),
                             train_splits=["train"], batch_size=3, negative_images=6, negative_captions=5, num_workers=0)
    dm.setup("fit")
    dataset = dm.train_dataset
    batch = dataset.collate([dataset[i] for i in (0, 7, 20)])
    module = RetrievalModule(model=tiny_config(), negatives={"images": 2, "captions": 3})
    # score of a pair = 10 * (image slot) + (text slot): hardest images have the largest image slots
    module.pair_scores = lambda input_ids, text_mask, region_features, **_: region_features[:, 0, 0] * 10 + input_ids[:, 1]
    batch["region_features"][:, 0, 0] = torch.arange(len(batch["region_features"]), dtype=torch.float)
    batch["input_ids"][:, 1] = torch.arange(len(batch["input_ids"]))
    hard_images, hard_texts = module.select_hard_negatives(batch)
    expected_images = batch["negative_images"].sort(1, descending=True).values[:, :2]
    expected_texts = batch["negative_texts"].sort(1, descending=True).values[:, :3]
    assert torch.equal(hard_images, expected_images) and torch.equal(hard_texts, expected_texts)
    # no right answer is ever among the negatives
    captions = [dataset[i]["caption"] for i in (0, 7, 20)]
    for row, caption in enumerate(captions):
        image = dataset.split.caption_image[caption]
        negatives = dataset[(0, 7, 20)[row]]
        assert image not in negatives["negative_images"].tolist()
        assert not set(negatives["negative_captions"].tolist()) & set(dataset.split.image_captions[image])


@pytest.mark.parametrize("loss,images,captions", [("itm", 2, 3), ("margin", 0, 3), ("softmax", 4, 0)])
def test_training_step_trains_every_parameter(tiny_world, loss, images, captions):
    dm = RetrievalDataModule(str(tiny_world.karpathy_json), str(tiny_world.features_path), str(tiny_world.tokenizer_dir),
                             train_splits=["train"], batch_size=3, negative_images=images and 5, negative_captions=captions and 5,
                             num_workers=0)
    dm.setup("fit")
    batch = dm.train_dataset.collate([dm.train_dataset[i] for i in (1, 2, 3)])
    module = RetrievalModule(model=tiny_config(), negatives={"images": images, "captions": captions, "loss": loss})
    module.log = lambda *args, **kwargs: None
    module.train()
    loss_value = module.training_step(batch, 0)
    assert torch.isfinite(loss_value)
    loss_value.backward()
    assert module.training  # the no-gradient scoring of the sampled negatives restored train mode
    no_grad = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == []
