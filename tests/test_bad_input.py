"""Bad input to the training commands: one line on stderr naming the file, key or id and the fix,
exit status 2, no traceback, nothing of the user's changed; internal errors keep their traceback."""
import json
from pathlib import Path

import pytest

from tiny import refused, tiny_pretrain_args
from vlbert.cli import main as vlbert
from vlbert.data.tokenizer import build_word_tokenizer, load_tokenizer
from vlbert.pretraining.datamodule import PretrainDataModule
from vlbert.pretraining.module import PretrainModule

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # configs/ paths are relative to the repo root


def pretrain(world, root, **extra) -> list[str]:
    return ["pretrain", "fit", *tiny_pretrain_args(world, root, **{"trainer.max_steps": 1, "trainer.limit_val_batches": 1, **extra})]


@pytest.fixture(scope="module")
def pretrained(tiny_world, tmp_path_factory):
    """A 2-step pretraining run: its exported model directory (with the world's tokenizer) and checkpoint."""
    root = tmp_path_factory.mktemp("pretrained")
    args = pretrain(tiny_world, root, **{"trainer.max_steps": 2, "model.export_dir": root / "export"})
    assert vlbert([*args, "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps=2"]) == 0
    return root / "export", next(root.rglob("*.ckpt"))


@pytest.fixture(scope="module")
def other_tokenizer(tiny_world, tmp_path_factory):
    """A tokenizer of about the same size as the world's but other ids: one more word shifts them."""
    words = [w for w in load_tokenizer(tiny_world.tokenizer_dir).get_vocab() if w.isalpha() and len(w) > 1]
    directory = tmp_path_factory.mktemp("other_tokenizer")
    build_word_tokenizer([*words, "aardvark"], directory)
    return directory


def test_a_missing_features_file(tiny_world, tmp_path, capsys):
    refused(capsys, pretrain(tiny_world, tmp_path, **{"data.features": tmp_path / "none.h5"}),
            r"feature file .*none.h5 does not exist; run `vlbert extract`")


def test_a_features_file_that_is_not_hdf5(tiny_world, tmp_path, capsys):
    (tmp_path / "notes.h5").write_text("not an HDF5 file")
    refused(capsys, pretrain(tiny_world, tmp_path, **{"data.features": tmp_path / "notes.h5"}), r"notes.h5 is not a readable HDF5 file")


@pytest.mark.parametrize("name, content, message", [
    ("empty.jsonl", b"", r"empty.jsonl holds no caption pairs"),
    ("cut.jsonl", b'{"image_id": "1000", "caption": "a red circle"}\n{"image_id": \n', r"cut.jsonl, line 2: expected a JSON object"),
    ("latin1.jsonl", b'{"image_id": "1000", "caption": "ok"}\n{"image_id": "1001", "caption": "caf\xe9"}\n',
     r"latin1.jsonl, line 2: byte 0xe9 is not UTF-8; save the file as UTF-8"),
    ("coco.json", b'{"annotations": [{"image_id": 1000}]}', r"coco.json: annotation #0 needs image_id and caption"),
    ("broken.json", b'{"annotations": [', r"broken.json is not valid JSON \(line 1"),
])
def test_annotation_files_that_cannot_be_read(tiny_world, tmp_path, capsys, name, content, message):
    (tmp_path / name).write_bytes(content)
    refused(capsys, pretrain(tiny_world, tmp_path, **{"data.train_annotations": tmp_path / name}), message)


def test_a_missing_tokenizer_directory_says_how_to_make_it(tiny_world, tmp_path, capsys):
    """configs/*/tiny.yaml point at demo_out/world/tokenizer; without it the user needs to know what
    makes it, not that it is an invalid hub repository id."""
    refused(capsys, pretrain(tiny_world, tmp_path, **{"data.tokenizer": "demo_out/nowhere/tokenizer"}),
            r"tokenizer directory demo_out/nowhere/tokenizer does not exist", r"vlbert synth --out demo_out/world")


def test_init_from_a_directory_that_is_not_a_model(tiny_world, tmp_path, capsys):
    refused(capsys, pretrain(tiny_world, tmp_path, **{"model.init_from": tmp_path}), r"model.init_from: .* is not a vlbert model directory")


def test_ckpt_path_that_is_not_a_checkpoint(tiny_world, tmp_path, capsys):
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    refused(capsys, pretrain(tiny_world, tmp_path, ckpt_path=tmp_path / "notes.ckpt"),
            r"--ckpt_path: .*notes.ckpt is not a PyTorch checkpoint \(not a torch.save zip file\)")
    refused(capsys, pretrain(tiny_world, tmp_path, ckpt_path=tmp_path / "none.ckpt"), r"--ckpt_path: checkpoint .*none.ckpt does not exist")


def test_ckpt_path_of_another_job(tiny_world, pretrained, tmp_path, capsys):
    _, checkpoint = pretrained
    args = ["--config", "configs/vqa/tiny.yaml", "--model.init_from", "null", "--data.features", str(tiny_world.features_path),
            "--data.tokenizer", str(tiny_world.tokenizer_dir), "--data.num_workers", "0",
            "--data.train_questions", str(tiny_world.vqa_questions("train")), "--data.train_annotations", str(tiny_world.vqa_annotations("train")),
            "--data.val_questions", str(tiny_world.vqa_questions("val")), "--data.val_annotations", str(tiny_world.vqa_annotations("val")),
            "--data.min_answer_count", "2", "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
            "--model.export_dir", "null", "--ckpt_path", str(checkpoint)]
    refused(capsys, ["vqa", "fit", *args], r"is a `vlbert pretrain` checkpoint, not a `vlbert vqa` one; .*\(vlbert export\)")


def test_outputs_that_cannot_be_written(tiny_world, tmp_path, capsys):
    (tmp_path / "a_file").write_text("mine")
    refused(capsys, pretrain(tiny_world, tmp_path, **{"model.export_dir": tmp_path / "a_file" / "export"}),
            r"model.export_dir: .*a_file/export cannot be created because .*a_file is a file")
    if Path("/proc/self").is_dir():  # not writable even by root
        refused(capsys, pretrain(tiny_world, "/proc/vlbert-run"), r"trainer.default_root_dir: cannot write /proc/vlbert-run: /proc is not writable")
    assert (tmp_path / "a_file").read_text() == "mine"


def test_an_export_directory_that_holds_files_is_never_overwritten(tiny_world, tmp_path, capsys):
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text('{"mine": true}')
    refused(capsys, pretrain(tiny_world, tmp_path, **{"model.export_dir": export}),
            r"model.export_dir: .*export already holds files .*\(vlbert never overwrites it\)")
    assert (export / "config.json").read_text() == '{"mine": true}' and not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize("extra, message", [
    ({"model.model.hiden_size": 32}, r"unrecognized arguments: --model.model.hiden_size 32"),
    ({"data.batch_size": "many"}, r"data.batch_size"),
])
def test_a_wrong_key_or_value_is_one_line(tiny_world, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        vlbert(pretrain(tiny_world, tmp_path, **extra))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vlbert pretrain fit: error: ") and "--help" in lines[0], lines
    assert __import__("re").search(message, lines[0])


def test_a_tokenizer_other_than_the_models_is_refused_unless_allowed(tiny_world, pretrained, other_tokenizer, tmp_path, capsys):
    export, _ = pretrained
    args = pretrain(tiny_world, tmp_path, **{"model.init_from": export, "data.tokenizer": other_tokenizer})
    line = refused(capsys, args, r"data.tokenizer .*other_tokenizer.* is not the tokenizer model.init_from .*export was trained with",
                   r"--allow_tokenizer_mismatch true")
    assert "only in the first" in line  # says how they differ
    assert vlbert([*args, "--allow_tokenizer_mismatch", "true"]) == 0
    # the model directory's own tokenizer, loaded from elsewhere (another path, same vocabulary), is accepted
    assert vlbert(pretrain(tiny_world, tmp_path / "same", **{"model.init_from": export, "data.tokenizer": export})) == 0


def test_resuming_with_another_tokenizer_is_refused(tiny_world, pretrained, other_tokenizer, tmp_path, capsys):
    _, checkpoint = pretrained
    refused(capsys, pretrain(tiny_world, tmp_path, ckpt_path=checkpoint, **{"data.tokenizer": other_tokenizer, "trainer.max_steps": 3}),
            r"is not the tokenizer checkpoint .* was trained with")


def test_a_run_that_stops_on_bad_input_leaves_no_empty_log_folder(tiny_world, tmp_path, capsys, monkeypatch):
    """A check that can run only once Lightning has the trainer (and has made the run folder): the
    folder goes again, with no checkpoint in it; a folder of an earlier run stays."""
    earlier = tmp_path / "lightning_logs" / "version_0"
    earlier.mkdir(parents=True)
    (earlier / "metrics.csv").write_text("step\n")
    original = PretrainModule.check_data

    def check_needing_the_trainer(self, datamodule, stage):
        original(self, datamodule, stage)
        if self._trainer is not None:
            from vlbert.errors import InputError
            raise InputError("data.something: checked with the trainer")

    monkeypatch.setattr(PretrainModule, "check_data", check_needing_the_trainer)
    refused(capsys, pretrain(tiny_world, tmp_path, **{"trainer.logger": "null"}), "checked with the trainer")
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]
    assert (earlier / "metrics.csv").read_text() == "step\n"


def test_training_from_scratch_says_so(tiny_world, tmp_path, capsys):
    assert vlbert(pretrain(tiny_world, tmp_path)) == 0
    assert "initialised from random weights (neither model.init_from nor model.bert is set)" in capsys.readouterr().err


def test_internal_errors_keep_their_traceback(tiny_world, tmp_path, monkeypatch):
    def broken(self, stage=None):
        raise RuntimeError("a bug, not bad input")

    monkeypatch.setattr(PretrainDataModule, "setup", broken)
    with pytest.raises(RuntimeError, match="a bug, not bad input"):
        vlbert(pretrain(tiny_world, tmp_path))


def test_export_of_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    refused(capsys, ["export", "--checkpoint", str(tmp_path / "notes.ckpt"), "--out", str(tmp_path / "out")],
            r"notes.ckpt is not a PyTorch checkpoint")
    assert not (tmp_path / "out").exists()


def test_an_answer_vocabulary_that_is_not_json(tiny_world, tmp_path, capsys):
    (tmp_path / "answers.json").write_text('["red", ')
    args = ["--config", "configs/vqa/tiny.yaml", "--model.init_from", "null", "--model.answers", str(tmp_path / "answers.json"),
            "--data.features", str(tiny_world.features_path), "--data.tokenizer", str(tiny_world.tokenizer_dir),
            "--data.train_questions", str(tiny_world.vqa_questions("train")), "--data.train_annotations", str(tiny_world.vqa_annotations("train")),
            "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false", "--model.export_dir", "null"]
    refused(capsys, ["vqa", "fit", *args], r"answer vocabulary .*answers.json is not valid JSON")
    assert json.loads(json.dumps((tmp_path / "answers.json").read_text())) == '["red", '


def test_export_never_overwrites_a_directory_that_holds_files(pretrained, tmp_path, capsys):
    _, checkpoint = pretrained
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    refused(capsys, ["export", "--checkpoint", str(checkpoint), "--out", str(out)], r"--out: .*out already holds files")
    assert [p.name for p in out.iterdir()] == ["README.md"] and (out / "README.md").read_text() == "my notes"
    assert vlbert(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "new")]) == 0
