"""The VQA head, its loss and VQA model directories, on hand-made tensors."""
import json
import math

import pytest
import torch

from tiny import tiny_config
from vlbert.modeling.model import VLBertForPretraining
from vlbert.tasks.vqa.answers import AnswerVocab
from vlbert.tasks.vqa.model import VLBertForVQA, VQAHead, head_state_of, vqa_loss
from vlbert.modeling.pretrained import load_pretrained


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
    assert head(torch.randn(4, config.hidden_size)).shape == (4, 7)
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


def test_model_forward_and_directory_roundtrip(tmp_path, tiny_tokenizer):
    vocab = AnswerVocab(["yes", "no", "2", "red"])
    model = VLBertForVQA(tiny_config(), vocab).eval()
    batch = inputs()
    logits = model(**batch)
    assert logits.shape == (3, 4)
    model.save_pretrained(tmp_path / "vqa", tiny_tokenizer, {"feature_dim": 64, "num_classes": 0, "provenance": {}}, {"max_regions": 36, "max_text_len": 20, "other": 1})
    assert json.loads((tmp_path / "vqa" / "vqa.json").read_text()) == {"max_text_len": 20, "max_regions": 36}
    _, state = load_pretrained(tmp_path / "vqa")
    assert {k.split(".")[0] for k in state} == {"vlbert", "vqa_head"}
    loaded = VLBertForVQA.from_pretrained(tmp_path / "vqa").eval()
    assert loaded.vocab == vocab
    torch.testing.assert_close(loaded(**batch), logits)


def test_from_pretrained_errors(tmp_path, tiny_tokenizer):
    config = tiny_config()
    VLBertForPretraining(config).save_pretrained(tmp_path / "pretrained", tiny_tokenizer)
    with pytest.raises(ValueError, match="no VQA head"):
        VLBertForVQA.from_pretrained(tmp_path / "pretrained")
    VLBertForVQA(config, AnswerVocab(["a", "b"])).save_pretrained(tmp_path / "vqa")
    (tmp_path / "vqa" / "answers.json").unlink()
    with pytest.raises(FileNotFoundError, match="answers.json not found"):
        VLBertForVQA.from_pretrained(tmp_path / "vqa")


def test_converted_visualbert_head_is_refused(tmp_path):
    config = tiny_config()
    VLBertForVQA(config, AnswerVocab(["a", "b"])).save_pretrained(tmp_path / "vb")
    (tmp_path / "vb" / "conversion.json").write_text(json.dumps({"vqa_head": {"style": "token_linear", "num_answers": 2}}))
    with pytest.raises(ValueError, match="token_linear"):
        VLBertForVQA.from_pretrained(tmp_path / "vb")
    _, state = load_pretrained(tmp_path / "vb")
    assert head_state_of(tmp_path / "vb", state) == (None, {})   # fine-tuning starts a new head
