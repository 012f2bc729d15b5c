"""`vlbert vqa fit|validate|test|predict` on the tiny synthetic world, and the data module."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny import refused, tiny_config
from vlbert.cli import main as vlbert
from vlbert.featstore import FeatureStore, FeatureStoreError, FeatureWriter
from vlbert.modeling.model import VLBertForPretraining
from vlbert.tasks.vqa.answers import AnswerVocab
from vlbert.tasks.vqa.cli import VQACLI
from vlbert.tasks.vqa.datamodule import VQADataModule, vocab_from_annotations
from vlbert.tasks.vqa.evaluate import evaluate_files
from vlbert.tasks.vqa.module import VQAModule
from vlbert.training.export import export_checkpoint, write_model_directory

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # configs/ paths are relative to the repo root


def vqa_args(world, root, **extra) -> list[str]:
    """A few CPU steps of configs/vqa/tiny.yaml on `world`, from an untrained 32-wide encoder."""
    args = [
        "--config", "configs/vqa/tiny.yaml",
        "--model.init_from", "null",
        "--model.model.hidden_size", "32",
        "--model.model.intermediate_size", "64",
        "--data.features", str(world.features_path),
        "--data.tokenizer", str(world.tokenizer_dir),
        "--data.num_workers", "0",
        "--data.batch_size", "16",
        "--data.min_answer_count", "2",
        "--trainer.max_epochs", "1",
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false",
        "--model.export_dir", "null",
    ]
    for split in ("train", "val", "test"):
        args += [f"--data.{split}_questions", str(world.vqa_questions(split)),
                 f"--data.{split}_annotations", str(world.vqa_annotations(split))]
    args += ["--data.predict_questions", str(world.vqa_questions("test"))]
    for key, value in extra.items():
        args += [f"--{key}", str(value)]
    return args


@pytest.fixture(scope="module")
def fitted(tiny_world, tmp_path_factory):
    """One short fine-tuning run: its root, export directory and checkpoint."""
    root = tmp_path_factory.mktemp("vqa_fit")
    assert vlbert(["vqa", "fit", *vqa_args(tiny_world, root, **{"model.export_dir": root / "export"})]) == 0
    return root, root / "export", next(root.rglob("*.ckpt"))


def test_fit_exports_a_model_directory_and_a_self_contained_checkpoint(fitted):
    root, export, checkpoint_path = fitted
    for name in ("config.json", "model.safetensors", "answers.json", "vqa.json", "features.json", "tokenizer_config.json"):
        assert (export / name).exists(), name
    vocab = AnswerVocab.load(export / "answers.json")
    assert {"yes", "no"} <= set(vocab) and vocab.min_count == 2 and vocab.count_by == "human"
    assert json.loads((export / "vqa.json").read_text()) == {"max_text_len": 24, "max_regions": 36}
    state = load_file(export / "model.safetensors")
    assert state["vqa_head.classifier.weight"].shape == (len(vocab), 64)
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    assert checkpoint["vlbert_job"] == "vqa" and checkpoint["vlbert_files"]["answers.json"]["answers"] == vocab.answers
    assert list(checkpoint["vlbert_config"]["id2label"].values()) == vocab.answers
    hparams = checkpoint["hyper_parameters"]
    assert hparams["answers"] == vocab.answers and hparams["init_from"] is None and hparams["model"]["hidden_size"] == 32
    assert "export_dir" not in hparams and "results_file" not in hparams
    job, exported = export_checkpoint(checkpoint_path, root / "from_checkpoint")
    assert job == "vqa"
    assert json.loads((exported / "vqa.json").read_text()) == {"max_text_len": 24, "max_regions": 36}
    again = load_file(exported / "model.safetensors")
    assert all(torch.equal(again[k], state[k]) for k in state)
    # the `vlbert export` command tells a VQA checkpoint from a pretraining one
    assert vlbert(["export", "--checkpoint", str(checkpoint_path), "--out", str(root / "by_command")]) == 0
    by_command = load_file(root / "by_command" / "model.safetensors")
    assert by_command.keys() == state.keys() and all(torch.equal(by_command[k], state[k]) for k in state)
    assert AnswerVocab.load(root / "by_command" / "answers.json").answers == vocab.answers


def test_validate_a_checkpoint_without_training_data(fitted, tiny_world, tmp_path, capsys):
    _, _, checkpoint_path = fitted
    args = vqa_args(tiny_world, tmp_path, **{"data.train_questions": "null", "data.train_annotations": "null"})
    assert vlbert(["vqa", "validate", *args, f"--ckpt_path={checkpoint_path}"]) == 0
    out = capsys.readouterr().out
    for metric in ("val/vqa_acc", "val/vqa_acc_yes_no", "val/vqa_acc_number", "val/vqa_acc_other", "val/loss"):
        assert metric in out


def test_test_accuracy_equals_vqa_eval_of_the_predicted_results(fitted, tiny_world, tmp_path, capsys):
    _, export, _ = fitted
    results = tmp_path / "results.json"
    args = vqa_args(tiny_world, tmp_path, **{"model.init_from": export, "model.results_file": results,
                                             "data.train_questions": "null", "data.train_annotations": "null"})
    cli = VQACLI(VQAModule, VQADataModule, args=args, run=False)
    metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert vlbert(["vqa", "predict", *args]) == 0
    written = json.loads(results.read_text())
    questions = json.loads(tiny_world.vqa_questions("test").read_text())["questions"]
    assert sorted(r["question_id"] for r in written) == sorted(q["question_id"] for q in questions)
    vocab = AnswerVocab.load(export / "answers.json")
    assert all(set(r) == {"question_id", "answer"} and isinstance(r["question_id"], int) and r["answer"] in vocab for r in written)
    official = evaluate_files(tiny_world.vqa_questions("test"), tiny_world.vqa_annotations("test"), results)
    assert round(metrics["test/vqa_acc"], 2) == official.overall
    for answer_type, value in official.per_answer_type.items():
        assert round(metrics[f"test/vqa_acc_{answer_type.replace('/', '_')}"], 2) == value
    refused(capsys, ["vqa", "predict", *args], "never overwritten")
    assert json.loads(results.read_text()) == written


def test_init_from_a_pretrained_or_a_fine_tuned_directory(fitted, tiny_world, tiny_tokenizer, tmp_path):
    _, export, _ = fitted
    pretrained = VLBertForPretraining(tiny_config(hidden_size=32, intermediate_size=64))
    write_model_directory(tmp_path / "pretrained", pretrained, tiny_tokenizer)
    module = VQAModule(init_from=str(tmp_path / "pretrained"), answers=["yes", "no"])
    for key, value in pretrained.vlbert.state_dict().items():
        assert torch.equal(module.model.vlbert.state_dict()[key], value), key
    assert module.model.vqa_head.classifier.out_features == 2
    state = load_file(export / "model.safetensors")
    tuned = VQAModule(init_from=str(export))
    assert tuned.vocab == AnswerVocab.load(export / "answers.json")
    assert torch.equal(tuned.model.vqa_head.classifier.weight, state["vqa_head.classifier.weight"])
    # other answers: the encoder is kept, the head starts new
    other = VQAModule(init_from=str(export), answers=["yes", "no", "zebra"])
    assert other.model.vqa_head.classifier.out_features == 3
    assert torch.equal(other.model.vlbert.pooler.dense.weight, state["vlbert.pooler.dense.weight"])
    assert not torch.equal(other.model.vqa_head.dense.weight, state["vqa_head.dense.weight"])
    with pytest.raises(ValueError, match="no answer vocabulary"):
        VQAModule(init_from=str(export), load_head=False)   # `vlbert vqa fit` builds one from the annotations


def test_output_paths_are_never_taken_from_a_checkpoint(tiny_world, tmp_path):
    """Where a run writes comes from its own command line (LightningCLI re-applies a checkpoint's
    hyperparameters): predict from the checkpoint of a run that named a results file and an export
    directory writes where the predict command says."""
    first, export = tmp_path / "first.json", tmp_path / "export"
    assert vlbert(["vqa", "fit", *vqa_args(tiny_world, tmp_path / "fit", **{
        "model.results_file": first, "model.export_dir": export, "trainer.max_steps": 2})]) == 0
    checkpoint_path = next((tmp_path / "fit").rglob("*.ckpt"))
    hparams = torch.load(checkpoint_path, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert "results_file" not in hparams and "export_dir" not in hparams
    second = tmp_path / "second.json"
    args = vqa_args(tiny_world, tmp_path / "predict", **{"model.results_file": second, "data.train_questions": "null",
                                                         "data.train_annotations": "null"})
    assert vlbert(["vqa", "predict", *args, f"--ckpt_path={checkpoint_path}"]) == 0
    assert second.is_file() and not first.exists()


def test_questions_whose_image_has_no_features_fail_before_training(tiny_world, tmp_path, capsys):
    store = FeatureStore(tiny_world.features_path)
    keep = set(store.ids) - {str(i) for i in tiny_world.image_ids("train")[:3]}
    with FeatureWriter(tmp_path / "partial.h5", store.feature_dim, store.num_classes, store.provenance) as writer:
        for image_id in sorted(keep):
            writer.add(store[image_id])
    args = vqa_args(tiny_world, tmp_path, **{"data.features": tmp_path / "partial.h5"})
    line = refused(capsys, ["vqa", "fit", *args], "3 image id\\(s\\) used by the train questions")
    assert str(tiny_world.image_ids("train")[0]) in line
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_vocabulary_that_answers_no_training_question(tiny_world, tmp_path, capsys):
    (tmp_path / "answers.json").write_text(json.dumps(["zebra"]))
    refused(capsys, ["vqa", "fit", *vqa_args(tiny_world, tmp_path, **{"model.answers": tmp_path / "answers.json"})],
            "no training question has an answer in the vocabulary of 1 answers")


def datamodule(world, **overrides):
    values = dict(
        features=str(world.features_path), tokenizer=str(world.tokenizer_dir),
        train_questions=str(world.vqa_questions("train")), train_annotations=str(world.vqa_annotations("train")),
        feature_id_format="{image_id}", num_workers=0, min_answer_count=2,
    )
    values.update(overrides)
    return VQADataModule(**values)


def test_train_fraction_and_unanswerable_questions(tiny_world):
    vocab = vocab_from_annotations(str(tiny_world.vqa_questions("train")), str(tiny_world.vqa_annotations("train")),
                                   "{image_id}", min_count=2)
    full = datamodule(tiny_world, answers=vocab)
    full.setup("fit")
    everything = len(full.examples["train"])
    answerable = len(full.dataset("train"))
    part = datamodule(tiny_world, train_fraction=0.1, answers=vocab)
    part.setup("fit")
    assert len(part.dataset("train")) <= round(0.1 * everything) < answerable
    narrow = datamodule(tiny_world, answers=AnswerVocab(["yes", "no"]))
    narrow.setup("fit")
    assert 0 < len(narrow.dataset("train")) < everything
    kept = datamodule(tiny_world, keep_unanswerable=True, answers=AnswerVocab(["yes", "no"]))
    kept.setup("fit")
    assert len(kept.dataset("train")) == everything
    batch = next(iter(kept.train_dataloader()))
    assert batch["targets"].shape == (32, 2) and set(batch) >= {"input_ids", "region_features", "index", "examples"}
    assert [e.question_id for e in batch["examples"]] == [kept.dataset("train").examples[i].question_id for i in batch["index"]]


def test_data_module_argument_errors(tiny_world):
    with pytest.raises(ValueError, match="one annotation file per question file"):
        datamodule(tiny_world, train_annotations=None)
    with pytest.raises(ValueError, match="train_fraction"):
        datamodule(tiny_world, train_fraction=0)
    dm = datamodule(tiny_world, val_questions=str(tiny_world.vqa_questions("val")))
    with pytest.raises(ValueError, match="data.val_annotations is not"):
        dm.setup("validate")


def test_one_datamodule_serves_fit_then_test(tmp_path):
    """The demo fits and then tests with the same datamodule: test must load the test split then."""
    from vlbert.synth import generate_world
    from vlbert.tasks.vqa.datamodule import VQADataModule

    world = generate_world(tmp_path / "w", seed=1, num_images=20)
    data = VQADataModule(
        features=str(world.features_path), tokenizer=str(world.tokenizer_dir),
        train_questions=str(world.vqa_questions("train")), train_annotations=str(world.vqa_annotations("train")),
        test_questions=str(world.vqa_questions("test")), test_annotations=str(world.vqa_annotations("test")),
        feature_id_format="{image_id}", min_answer_count=1,
    )
    data.setup("fit")
    assert data.examples["train"] and "test" not in data.examples
    data.setup("test")
    assert len(data.examples["test"]) > 0
