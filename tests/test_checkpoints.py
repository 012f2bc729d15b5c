"""Checkpoints and model directories across versions: what vlbert 0.1 wrote still loads and exports."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from tiny import random_inputs, tiny_config
from vlbert import VLBertForPretraining, VLBertForVQA, VLBertModel
from vlbert.pretraining.module import PretrainModule
from vlbert.tasks.retrieval.module import RetrievalModule
from vlbert.tasks.vqa.answers import AnswerVocab
from vlbert.tasks.vqa.module import VQAModule
from vlbert.training.checkpoints import CheckpointError, read_checkpoint
from vlbert.training.export import export_checkpoint

ANSWERS = ["yes", "no", "2", "red"]


def write_v01_directory(directory, model, answers=None):
    """A model directory as vlbert 0.1 wrote it: its own config.json (model_type and the settings,
    no transformers fields), safetensors with the same keys, answers.json beside for VQA."""
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps({"model_type": "vlbert", **model.config.settings().to_dict()}, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"),
              metadata={"format": "pt", "model_type": "vlbert"})
    if answers is not None:
        (directory / "answers.json").write_text(json.dumps(AnswerVocab(answers).to_dict()))
    return directory


def test_a_v01_pretraining_directory_loads(tmp_path):
    model = VLBertForPretraining(tiny_config()).eval()
    old = write_v01_directory(tmp_path / "old", model)
    batch = random_inputs()
    with torch.no_grad():
        expected = model(**batch).pooler_output
        torch.testing.assert_close(VLBertForPretraining.from_pretrained(old).eval()(**batch).pooler_output, expected)
        torch.testing.assert_close(AutoModel.from_pretrained(old).eval()(**batch).pooler_output, expected)
    # and it initialises a task model as before
    vqa = VQAModule(init_from=str(old), answers=ANSWERS)
    torch.testing.assert_close(vqa.model.vlbert.pooler.dense.weight, model.vlbert.pooler.dense.weight)


def test_a_v01_vqa_directory_loads_with_its_answers(tmp_path):
    from vlbert.modeling.vqa import with_answers

    model = VLBertForVQA(with_answers(tiny_config(), ANSWERS)).eval()
    old = write_v01_directory(tmp_path / "old", model, ANSWERS)
    loaded = VLBertForVQA.from_pretrained(old).eval()
    assert loaded.answers == ANSWERS
    batch = random_inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
    tuned = VQAModule(init_from=str(old))  # its answers, its head
    assert tuned.vocab.answers == ANSWERS
    assert torch.equal(tuned.model.vqa_head.classifier.weight, model.vqa_head.classifier.weight)


def v01_checkpoint(job: str, module, answers=None) -> dict:
    """A Lightning checkpoint as vlbert 0.1 wrote it: no vlbert_job / vlbert_config, the
    pretraining weights under "net.", the task weights at the top level."""
    state = module.model.state_dict()
    settings = module.config.settings().to_dict()
    if job == "pretrain":
        return {"state_dict": {"net." + k: v for k, v in state.items()},
                "hyper_parameters": {"model": settings, "bert": None, "init_from": None,
                                     "objectives": {"mlm": 1.0}, "optimization": {"lr": 1e-4}}}
    if job == "vqa":
        return {"state_dict": dict(state), "vqa_answers": AnswerVocab(answers).to_dict(),
                "hyper_parameters": {"model": settings, "answers": answers, "init_from": None, "bert": None},
                "datamodule_hyper_parameters": {"max_text_len": 20, "max_regions": 10}}
    return {"state_dict": dict(state),
            "hyper_parameters": {"model": settings, "negatives": {"images": 1}, "dump_scores": "old.pt", "export_dir": "old"}}


@pytest.mark.parametrize("job", ["pretrain", "vqa", "retrieval"])
def test_a_v01_checkpoint_exports_and_loads(tmp_path, job):
    torch.manual_seed(0)
    module = {"pretrain": lambda: PretrainModule(model=tiny_config()),
              "vqa": lambda: VQAModule(model=tiny_config(), answers=ANSWERS),
              "retrieval": lambda: RetrievalModule(model=tiny_config())}[job]()
    import lightning

    path = tmp_path / "old.ckpt"
    torch.save({**v01_checkpoint(job, module, ANSWERS), "pytorch-lightning_version": lightning.__version__}, path)
    assert read_checkpoint(path)["vlbert_job"] == job
    written_by, out = export_checkpoint(path, tmp_path / "export")
    assert written_by == job
    exported = load_file(out / "model.safetensors")
    assert exported.keys() == module.model.state_dict().keys()
    assert all(torch.equal(exported[k], v) for k, v in module.model.state_dict().items())
    if job == "vqa":
        assert AnswerVocab.load(out / "answers.json").answers == ANSWERS
        assert json.loads((out / "vqa.json").read_text()) == {"max_text_len": 20, "max_regions": 10}
    # Lightning's own loading (what `fit --ckpt_path` and load_from_checkpoint do) takes it too
    restored = type(module).load_from_checkpoint(path, weights_only=True)
    assert all(torch.equal(restored.model.state_dict()[k], v) for k, v in module.model.state_dict().items())


def test_checkpoints_name_their_job_and_refuse_another(tmp_path):
    module = RetrievalModule(model=tiny_config())
    checkpoint = {"state_dict": {"model." + k: v for k, v in module.model.state_dict().items()}}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["vlbert_job"] == "retrieval" and checkpoint["vlbert_config"]["model_type"] == "vlbert"
    with pytest.raises(ValueError, match="a `vlbert retrieval` checkpoint, not a `vlbert pretrain` one"):
        PretrainModule(model=tiny_config()).on_load_checkpoint(checkpoint)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt")


def test_output_arguments_are_never_hyperparameters():
    for module in (PretrainModule(model=tiny_config(), export_dir="a"),
                   VQAModule(model=tiny_config(), answers=ANSWERS, export_dir="a", results_file="r.json"),
                   RetrievalModule(model=tiny_config(), export_dir="a", dump_scores="s.pt")):
        assert set(module.output_arguments).isdisjoint(module.hparams), type(module).__name__
        assert module.hparams["init_from"] is None and module.hparams["model"] == tiny_config().settings().to_dict()


def test_encoder_only_directories_keep_their_weights(tmp_path):
    encoder = VLBertModel(tiny_config())
    encoder.save_pretrained(tmp_path / "enc")
    module = PretrainModule(init_from=str(tmp_path / "enc"))
    assert torch.equal(module.model.vlbert.pooler.dense.weight, encoder.pooler.dense.weight)
