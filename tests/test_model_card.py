"""Model cards: `model_card` on hand-made facts, and the README.md that fit and `vlbert export` write."""
import re
from pathlib import Path

import pytest
import torch
import yaml

from tiny import tiny_pretrain_args
from vlbert.cli import main as vlbert
from vlbert.pretraining.cli import PretrainCLI
from vlbert.pretraining.datamodule import PretrainDataModule
from vlbert.pretraining.module import PretrainModule
from vlbert.training.model_card import card_facts, model_card

REPO = Path(__file__).resolve().parents[1]

VQA_FACTS = {
    "job": "vqa",
    "model_class": "VLBertForVQA",
    "model": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 3072,
              "region_feature_dim": 2048, "region_embedding": "uniter", "vqa_head_style": "pooled_mlp",
              "num_parameters": 110_123_456},
    "data": {"features": "data/features/coco.h5", "train_questions": ["q_train.json", "q_val.json"],
             "train_annotations": ["a_train.json", "a_val.json"], "val_questions": "q_minival.json",
             "tokenizer": "models/my-vlbert", "train_examples": 443_757},
    "answers": {"count": 3129, "min_count": 9, "count_by": "majority"},
    "optimization": {"lr": 8e-5, "weight_decay": 0.01, "warmup": 0.1, "head_lr_multiplier": 10.0},
    "batch": {"batch_size": 32, "devices": 8, "accumulate_grad_batches": 2, "precision": "bf16-mixed"},
    "progress": {"global_step": 12000, "epochs": 6.92},
    "metrics": {"val/vqa_acc": 0.71234, "val/vqa_acc_yes_no": 0.8799},
    "metrics_step": 12000,
    "features": {"feature_dim": 2048, "num_classes": 1601, "provenance": {
        "backend": "detectron2", "model": "detectron2:faster_rcnn_R_101_C4_attr_caffemaxpool.yaml",
        "weights": {"source": "file", "file": "faster_rcnn_from_caffe_attr.pkl", "sha256": "ab12cd"},
        "regions": {"source": "detected", "selection": {"score_threshold": 0.2, "min_boxes": 10, "max_boxes": 100}},
        "settings": {"nms_iou": 0.3, "num_boxes": None},
        "run": {"host": "gpu-node-7", "vlbert": "0.1.0"},
    }},
    "initialised_from": {"init_from": "models/my-vlbert", "bert": None},
    "versions": {"vlbert": "0.1.0", "transformers": "5.24.0"},
    "date": "2025-01-31",
}


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def section(card: str, heading: str) -> str:
    """The text under `## heading...` up to the next heading."""
    match = re.search(rf"^## {re.escape(heading)}[^\n]*\n(.*?)(?=^## |\Z)", card, re.S | re.M)
    assert match, f"no section {heading!r} in\n{card}"
    return match.group(1)


def metric_table(card: str) -> dict[str, str]:
    return dict(re.findall(r"^\| (val/\S+) \| (\S+) \|$", section(card, "Validation metrics"), re.M))


def without_date(card: str) -> str:
    return "\n".join(line for line in card.splitlines() if not line.startswith("- date: "))


def test_card_of_hand_made_facts():
    card = model_card(VQA_FACTS)
    meta = front_matter(card)
    assert meta["library_name"] == "vlbert" and meta["pipeline_tag"] == "visual-question-answering"
    assert {"vision-language", "visual-question-answering"} <= set(meta["tags"])
    for heading in ("How to load", "Model", "Training data", "Answers", "Optimisation", "Training",
                    "Validation metrics (at step 12,000)", "Region features", "Initialisation", "Versions"):
        assert f"\n## {heading}\n" in card, heading
    assert "## Objectives" not in card and "## Negatives" not in card  # not a pretraining / retrieval run
    assert 'VLBertForVQA.from_pretrained("path/to/this/directory")' in section(card, "How to load")
    assert "AutoModelForVisualQuestionAnswering" in card and "vlbert answer" in card
    model = section(card, "Model")
    assert "| layers | 12 |" in model and "| hidden size | 768 |" in model and "| attention heads | 12 |" in model
    assert "| region feature dim | 2048 |" in model and "| region embedding | uniter |" in model
    assert "| parameters | 110,123,456 |" in model
    data = section(card, "Training data")
    assert "`q_train.json`, `q_val.json`" in data and "`data/features/coco.h5`" in data and "443,757" in data
    assert "3,129 answers" in card and "at least 9 times" in card and "majority" in card
    optimisation = section(card, "Optimisation")
    assert "peak learning rate 8e-05" in optimisation and "10% of the steps" in optimisation
    assert "32 per device x 8 device(s) x 2 accumulated = 512 per step" in optimisation and "bf16-mixed" in optimisation
    assert "10 x the encoder's" in optimisation
    assert "optimiser steps: 12,000" in card and "epochs: 6.92" in card
    assert metric_table(card) == {"val/vqa_acc": "0.7123", "val/vqa_acc_yes_no": "0.8799"}
    features = section(card, "Region features")
    assert "backend: detectron2" in features and "sha256=ab12cd" in features and "score_threshold=0.2" in features
    assert "feature dim: 2048" in features and "nms_iou=0.3" in features
    assert "gpu-node-7" not in card  # how the extraction ran (host) is not the features' identity
    assert "`models/my-vlbert`" in section(card, "Initialisation")
    assert "vlbert 0.1.0, transformers 5.24.0" in card and "2025-01-31" in card


def test_unknown_facts_are_left_out_not_invented():
    card = model_card({"job": "pretrain", "model_class": "VLBertForPretraining"})
    assert front_matter(card)["library_name"] == "vlbert"
    for heading in ("Model", "Training data", "Optimisation", "Training", "Region features", "Initialisation", "Versions"):
        assert "Not recorded." in section(card, heading), heading
    assert "Not recorded" in section(card, "Validation metrics") and "(at step" not in card
    assert "## Objectives" not in card  # nothing said about them rather than the defaults
    assert "learning rate" not in card and "epochs" not in card and "From scratch" not in card
    assert not re.search(r"\d", card.split("## Model")[1])  # no number appears that was not given
    # partial facts: only what is there
    card = model_card({**VQA_FACTS, "answers": {"count": 5}, "batch": {"batch_size": 4}, "metrics": {}, "metrics_step": 3})
    assert "5 answers (answers.json)." in card and "at least" not in card
    assert "batch size: 4 per device\n" in card and "accumulated" not in card
    assert "no validation had run" in section(card, "Validation metrics")


def test_card_facts_of_a_retrieval_run():
    facts = card_facts(
        "retrieval", "VLBertForRetrieval", {"num_hidden_layers": 2, "hidden_size": 32, "vqa_head_style": "pooled_mlp"},
        {"negatives": {"images": 3, "captions": 2, "loss": "margin", "margin": 0.2, "random_steps": 0},
         "optimization": {"lr": 5e-5, "warmup": 100}, "dropout": 0.1},
        {}, {"data": {"negative_images": 15, "negative_captions": 15}}, {"bert": None, "init_from": None}, None)
    card = model_card(facts)
    assert "the hardest 3 of 15 sampled" in card and "the hardest 2 of 15 sampled" in card
    assert "loss: margin (margin 0.2)" in card and "dropout: 0.1" in card
    assert "warm-up over 100 steps" in card and "VQA head" not in card
    assert "From scratch" in card and "Not recorded." in section(card, "Region features")
    assert "AutoModelFor" not in card  # no Auto class maps to the retrieval model


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # configs/ paths are relative to the repo root


def test_fit_and_export_of_its_checkpoint_write_the_same_card(tiny_world, tmp_path):
    args = tiny_pretrain_args(tiny_world, tmp_path, **{"trainer.max_steps": 4, "trainer.val_check_interval": 2,
                                                       "model.export_dir": tmp_path / "export"})
    cli = PretrainCLI(PretrainModule, PretrainDataModule, args=args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    card = (tmp_path / "export" / "README.md").read_text()
    final = {k: f"{float(v):.4f}" for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    assert final and metric_table(card) == final
    assert "\n## Validation metrics (at step 4)\n" in card and "optimiser steps: 4" in card
    assert "epochs: 0.20" in card  # 4 of the 20 batches of 8 of the 160 training captions
    assert f"`{tiny_world.captions('train')}`" in card and f"`{tiny_world.features_path}`" in card
    assert "training examples: 160" in card and "| layers | 2 |" in card and "| hidden size | 32 |" in card
    assert "| mlm (masked language modelling) | 2 |" in card and "| mrc (masked-region classification) | off |" in card
    assert "peak learning rate 0.002" in card and "batch size: 8 per device" in card
    assert "backend: synthetic" in card and "From scratch" in card
    # the default checkpoint is saved after the last validation: the same state as the model at fit end
    checkpoint_path = next(tmp_path.rglob("*.ckpt"))
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    assert checkpoint["vlbert_card"]["metrics_step"] == 4
    assert vlbert(["export", "--checkpoint", str(checkpoint_path), "--out", str(tmp_path / "exported")]) == 0
    assert without_date(card) == without_date((tmp_path / "exported" / "README.md").read_text())


def test_export_of_a_checkpoint_before_the_last_validation_says_when_its_metrics_were_measured(tiny_world, tmp_path):
    args = tiny_pretrain_args(tiny_world, tmp_path, **{"trainer.max_steps": 3, "trainer.val_check_interval": 2})
    args += ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps=1",
             "--trainer.callbacks.save_top_k=-1", "--trainer.callbacks.filename={step}"]
    assert vlbert(["pretrain", "fit", *args]) == 0
    cards = {}
    for step in (1, 3):
        out = tmp_path / f"exported_{step}"
        assert vlbert(["export", "--checkpoint", str(next(tmp_path.rglob(f"step={step}.ckpt"))), "--out", str(out)]) == 0
        cards[step] = (out / "README.md").read_text()
    assert "no validation had run" in section(cards[1], "Validation metrics") and "optimiser steps: 1" in cards[1]
    assert "\n## Validation metrics (at step 2)\n" in cards[3] and "optimiser steps: 3" in cards[3]
    assert metric_table(cards[3])


def test_vqa_fit_and_export_write_the_same_card(tiny_world, tmp_path):
    from test_vqa_cli import vqa_args
    from vlbert.tasks.vqa.answers import AnswerVocab
    from vlbert.tasks.vqa.cli import VQACLI
    from vlbert.tasks.vqa.datamodule import VQADataModule
    from vlbert.tasks.vqa.module import VQAModule

    cli = VQACLI(VQAModule, VQADataModule, args=vqa_args(tiny_world, tmp_path, **{"model.export_dir": tmp_path / "export"}),
                 run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    card = (tmp_path / "export" / "README.md").read_text()
    assert front_matter(card)["pipeline_tag"] == "visual-question-answering"
    vocab = AnswerVocab.load(tmp_path / "export" / "answers.json")
    assert f"{len(vocab)} answers (answers.json): those counted at least 2 times" in card
    final = {k: f"{float(v):.4f}" for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
    assert "val/vqa_acc" in final and metric_table(card) == final
    assert "epochs: 1.00" in card and "task head learning rate" in card
    checkpoint_path = next(tmp_path.rglob("*.ckpt"))
    assert vlbert(["export", "--checkpoint", str(checkpoint_path), "--out", str(tmp_path / "exported")]) == 0
    assert without_date(card) == without_date((tmp_path / "exported" / "README.md").read_text())
