"""VLBertForVQA: its head, its loss and its model directories, on hand-made tensors."""
import json
import math

import pytest
import torch

from transformers import AutoModelForVisualQuestionAnswering

from tiny import tiny_config
from vlbert import VLBertForPretraining, VLBertForVQA
from vlbert.modeling.heads import VQAHead
from vlbert.modeling.losses import vqa_loss
from vlbert.modeling.pretrained import load_pretrained
from vlbert.modeling.vqa import with_answers
from vlbert.tasks.vqa.answer import AnswerError, load_vqa_model
from vlbert.tasks.vqa.answers import AnswerVocab
from vlbert.training.export import write_model_directory


def inputs(batch=3, text=5, regions=4, dim=64):
    torch.manual_seed(0)
    text_mask = torch.ones(batch, text, dtype=torch.bool)
    text_mask[0, 3:] = False
    region_mask = torch.ones(batch, regions, dtype=torch.bool)
    region_mask[1, 2:] = False
    return {
        "input_ids": torch.randint(5, 100, (batch, text)),
        "text_mask": text_mask,
        "region_features": torch.randn(batch, regions, dim),
        "region_locations": torch.rand(batch, regions, 7),
        "region_mask": region_mask,
    }


def test_head_shapes_and_parameter_names():
    config = tiny_config()
    head = VQAHead(config, num_answers=7)
    assert head(torch.randn(4, 6, config.hidden_size), torch.randn(4, config.hidden_size), torch.ones(4, 3)).shape == (4, 7)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    hidden = config.hidden_size
    assert shapes == {
        "dense.weight": (2 * hidden, hidden), "dense.bias": (2 * hidden,),
        "LayerNorm.weight": (2 * hidden,), "LayerNorm.bias": (2 * hidden,),
        "classifier.weight": (7, 2 * hidden), "classifier.bias": (7,),
    }
    with pytest.raises(ValueError, match="at least one answer"):
        VQAHead(config, 0)


def test_loss_is_bce_summed_over_answers_and_averaged_over_questions():
    logits = torch.tensor([[0.0, 2.0, -1.0], [1.0, -3.0, 0.5]])
    targets = torch.tensor([[0.0, 1.0, 0.3], [0.9, 0.0, 0.0]])

    def bce(x, t):
        p = 1 / (1 + math.exp(-x))
        return -(t * math.log(p) + (1 - t) * math.log(1 - p))

    expected = sum(bce(float(x), float(t)) for row_x, row_t in zip(logits, targets) for x, t in zip(row_x, row_t)) / 2
    assert vqa_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    # Confident and right -> near zero; the same logits against flipped targets -> large.
    sure = torch.tensor([[20.0, -20.0]])
    assert vqa_loss(sure, torch.tensor([[1.0, 0.0]])).item() < 1e-6
    assert vqa_loss(sure, torch.tensor([[0.0, 1.0]])).item() > 30
    with pytest.raises(ValueError, match="differ in shape"):
        vqa_loss(logits, targets[:, :2])


def test_loss_gradient_pushes_towards_soft_scores():
    logits = torch.zeros(1, 3, requires_grad=True)
    vqa_loss(logits, torch.tensor([[1.0, 0.3, 0.0]])).backward()
    # d/dx BCE = sigmoid(x) - t = 0.5 - t (times 1, the mean over 3 entries times 3)
    assert logits.grad[0].tolist() == pytest.approx([-0.5, 0.2, 0.5])


def vqa_config(answers=("yes", "no", "2", "red"), **overrides):
    return with_answers(tiny_config(**overrides), list(answers))


def test_model_forward_loss_and_directory_roundtrip(tmp_path, tiny_tokenizer):
    model = VLBertForVQA(vqa_config()).eval()
    batch = inputs()
    targets = torch.tensor([[1.0, 0, 0, 0], [0, 0.3, 0, 0], [0, 0, 0, 0.6]])
    output = model(**batch, targets=targets)
    assert output.logits.shape == (3, 4)
    assert output.loss.item() == pytest.approx(vqa_loss(output.logits, targets).item())
    assert model(**batch).loss is None
    write_model_directory(tmp_path / "vqa", model, tiny_tokenizer, {"feature_dim": 64, "num_classes": 0, "provenance": {}})
    _, state = load_pretrained(tmp_path / "vqa")
    assert {k.split(".")[0] for k in state} == {"vlbert", "vqa_head"}
    loaded = AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path / "vqa").eval()
    assert type(loaded) is VLBertForVQA and loaded.answers == ["yes", "no", "2", "red"]
    torch.testing.assert_close(loaded(**batch).logits, output.logits)


def test_directory_without_answers_in_its_config_reads_answers_json(tmp_path):
    """A VQA directory exported before the answers moved into config.json still loads."""
    model = VLBertForVQA(vqa_config(["a", "b", "c"])).eval()
    write_model_directory(tmp_path / "old", model, files={"answers.json": AnswerVocab(["a", "b", "c"]).to_dict()})
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["id2label"], config["label2id"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    loaded = VLBertForVQA.from_pretrained(tmp_path / "old").eval()
    assert loaded.answers == ["a", "b", "c"]
    torch.testing.assert_close(loaded(**inputs()).logits, model(**inputs()).logits)


def test_a_directory_without_a_vqa_head_is_refused_for_answering(tmp_path, tiny_tokenizer):
    write_model_directory(tmp_path / "pretrained", VLBertForPretraining(tiny_config()), tiny_tokenizer)
    with pytest.raises(AnswerError, match="no VQA head"):
        load_vqa_model(tmp_path / "pretrained")
    with pytest.raises(AnswerError, match="not a model directory"):
        load_vqa_model(tmp_path / "nothing")


def test_token_linear_head_reads_the_token_before_the_final_sep():
    """VisualBERT's VQA head style: a linear classifier on the text token before the last [SEP]."""
    config = vqa_config(["a", "b"], vqa_head_style="token_linear")
    model = VLBertForVQA(config).eval()
    assert set(model.vqa_head.state_dict()) == {"classifier.weight", "classifier.bias"}
    batch = inputs()
    output = model.vlbert(**batch)
    position = batch["text_mask"].sum(1) - 2
    token = output.last_hidden_state[torch.arange(3), position]
    torch.testing.assert_close(model(**batch).logits, model.vqa_head.classifier(token))
