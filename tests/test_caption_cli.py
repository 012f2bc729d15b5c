"""`vlbert caption fit|test|predict|evaluate` end to end on the tiny synthetic world."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlbert.cli import main as vlbert
from vlbert.featstore import FeatureStore, FeatureWriter
from vlbert.modeling.caption import VLBertForCaptioning
from vlbert.tasks.caption.cli import CaptionCLI
from vlbert.tasks.caption.datamodule import CaptionDataModule
from vlbert.tasks.caption.evaluate import evaluate_files
from vlbert.tasks.caption.module import CaptionModule

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # configs/ paths are relative to the repo root


def caption_args(world, root, **extra) -> list[str]:
    """A few CPU steps of configs/caption/tiny.yaml on `world`, from an untrained 32-wide model."""
    args = [
        "--config", "configs/caption/tiny.yaml",
        "--model.init_from", "null",
        "--model.model.hidden_size", "32",
        "--model.model.intermediate_size", "64",
        "--model.decoding.beam_size", "2",
        "--model.decoding.max_length", "6",
        "--model.test_metrics", "[BLEU, ROUGE_L, CIDEr]",
        "--model.tokenization", "simple",
        "--data.annotations", str(world.karpathy_json),
        "--data.features", str(world.features_path),
        "--data.tokenizer", str(world.tokenizer_dir),
        "--data.num_workers", "0",
        "--data.batch_size", "16",
        "--trainer.max_steps", "6",
        "--trainer.val_check_interval", "3",
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
        "--trainer.logger", "false",
        "--model.export_dir", "null",
    ]
    for key, value in extra.items():
        args += [f"--{key}", str(value)]
    return args


@pytest.fixture(scope="module")
def fitted(tiny_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("caption_fit")
    assert vlbert(["caption", "fit", *caption_args(tiny_world, root, **{"model.export_dir": root / "export"})]) == 0
    return root, root / "export", next(root.rglob("*.ckpt"))


def test_fit_exports_a_model_directory_and_a_checkpoint(fitted):
    root, export, checkpoint_path = fitted
    for name in ("config.json", "model.safetensors", "caption.json", "features.json", "tokenizer_config.json", "README.md"):
        assert (export / name).exists(), name
    assert json.loads((export / "caption.json").read_text()) == {
        "max_text_len": 24, "max_regions": 36, "objective": "next_token",
        "decoding": {"beam_size": 2, "max_length": 6, "length_penalty": 0.0}}
    model = VLBertForCaptioning.from_pretrained(export)
    assert model.objective == "next_token" and model.config.hidden_size == 32
    state = load_file(export / "model.safetensors")
    assert "mlm_head.bias" in state and not any(k.startswith("itm_head") for k in state)
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    assert checkpoint["vlbert_job"] == "caption" and checkpoint["vlbert_config"]["caption_objective"] == "next_token"
    assert "export_dir" not in checkpoint["hyper_parameters"] and "results_file" not in checkpoint["hyper_parameters"]
    assert vlbert(["export", "--checkpoint", str(checkpoint_path), "--out", str(root / "by_command")]) == 0
    again = load_file(root / "by_command" / "model.safetensors")
    assert again.keys() == state.keys() and all(torch.equal(again[k], state[k]) for k in state)


def test_predict_writes_coco_results_whose_evaluation_equals_test(fitted, tiny_world, tmp_path):
    _, export, _ = fitted
    results = tmp_path / "results.json"
    args = caption_args(tiny_world, tmp_path, **{"model.init_from": export, "model.results_file": results})
    cli = CaptionCLI(CaptionModule, CaptionDataModule, args=args, run=False)
    metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert vlbert(["caption", "predict", *args]) == 0
    written = json.loads(results.read_text())
    assert [row["image_id"] for row in written] == tiny_world.image_ids("test")
    assert all(set(row) == {"image_id", "caption"} and isinstance(row["caption"], str) for row in written)
    scores = evaluate_files(tiny_world.coco_captions("test"), results, metrics=["BLEU", "ROUGE_L", "CIDEr"], tokenization="simple")
    assert metrics["test/cider"] == pytest.approx(100 * scores.scores["CIDEr"], rel=1e-5)
    assert metrics["test/bleu4"] == pytest.approx(100 * scores.scores["Bleu_4"], rel=1e-5, abs=1e-9)
    assert metrics["test/rouge_l"] == pytest.approx(100 * scores.scores["ROUGE_L"], rel=1e-5)
    # the same file scored against the Karpathy references of the test split
    karpathy = evaluate_files(tiny_world.karpathy_json, results, ["test"], metrics=["CIDEr"], tokenization="simple")
    assert karpathy.scores["CIDEr"] == scores.scores["CIDEr"]
    assert vlbert(["caption", "predict", *args]) == 2  # never overwritten
    assert json.loads(results.read_text()) == written


def error_line(stderr: str) -> str:
    """The one line the error is, the last of stderr (info lines may come before it), no traceback."""
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("vlbert caption: error:") and "Traceback" not in stderr
    return lines[-1]


def test_an_unknown_split_is_a_one_line_error(tiny_world, tmp_path, capsys):
    args = caption_args(tiny_world, tmp_path, **{"data.test_splits": "[tset]"})
    assert vlbert(["caption", "test", *args]) == 2
    err = error_line(capsys.readouterr().err)
    assert "tset" in err and "'train'" in err


def test_images_without_features_are_a_one_line_error(tiny_world, tmp_path, capsys):
    store = FeatureStore(tiny_world.features_path)
    partial = tmp_path / "partial.h5"
    missing = str(tiny_world.image_ids("val")[0])
    with FeatureWriter(partial, store.feature_dim, store.num_classes, store.provenance) as writer:
        for image_id in tiny_world.image_ids():
            if str(image_id) != missing:
                writer.add(store[str(image_id)])
    assert vlbert(["caption", "fit", *caption_args(tiny_world, tmp_path, **{"data.features": partial})]) == 2
    err = error_line(capsys.readouterr().err)
    assert "have no features" in err and missing in err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_evaluating_with_another_objective_than_the_models_is_refused(tiny_world, tmp_path, capsys):
    """A masked-objective model decodes by appending [MASK]: testing it as a next-token model would
    score captions made by the wrong rule."""
    masked = tmp_path / "masked"
    assert vlbert(["caption", "fit", *caption_args(tiny_world, tmp_path / "fit", **{
        "model.objective": "masked", "trainer.max_steps": 2, "model.export_dir": masked})]) == 0
    assert VLBertForCaptioning.from_pretrained(masked).objective == "masked"
    args = caption_args(tiny_world, tmp_path / "test", **{"model.init_from": masked})  # tiny.yaml says next_token
    assert vlbert(["caption", "test", *args]) == 2
    assert "fine-tuned with 'masked'" in error_line(capsys.readouterr().err)
    assert vlbert(["caption", "test", *args, "--model.objective", "null"]) == 0  # the model's own
