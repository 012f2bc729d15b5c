"""VLBertForCaptioning: the seq2seq mask, the loss, save / load, and the encoder's 3-D mask path."""
import math

import pytest
import torch

from tiny import random_inputs, tiny_config
from vlbert import VLBertForCaptioning, VLBertModel
from vlbert.modeling.caption import IGNORE_INDEX, seq2seq_mask
from vlbert.modeling.model import VLBertForPretraining
from vlbert.training.base import build_model
from vlbert.training.export import write_model_directory


def padded_inputs() -> dict:
    inputs = random_inputs(batch=3, text=6, regions=5, seed=1)
    inputs["text_mask"][1, 4:] = False
    inputs["input_ids"][1, 4:] = 0
    inputs["region_mask"][2, 3:] = False
    return inputs


def test_seq2seq_mask_by_hand():
    text_mask = torch.tensor([[True, True, True], [True, True, False]])
    region_mask = torch.tensor([[True, True], [True, False]])
    mask = seq2seq_mask(text_mask, region_mask).int()
    assert mask.shape == (2, 5, 5)
    # rows: queries t0 t1 t2 r0 r1; columns: keys t0 t1 t2 r0 r1
    assert mask[0].tolist() == [[1, 0, 0, 1, 1],
                                [1, 1, 0, 1, 1],
                                [1, 1, 1, 1, 1],
                                [0, 0, 0, 1, 1],
                                [0, 0, 0, 1, 1]]
    assert mask[1].tolist() == [[1, 0, 0, 1, 0],
                                [1, 1, 0, 1, 0],
                                [1, 1, 0, 1, 0],
                                [0, 0, 0, 1, 0],
                                [0, 0, 0, 1, 0]]


def test_a_caption_token_never_sees_later_tokens_and_regions_never_see_the_caption():
    torch.manual_seed(0)
    model = VLBertForCaptioning(tiny_config()).eval()
    inputs = padded_inputs()
    changed = {**inputs, "input_ids": inputs["input_ids"].clone()}
    changed["input_ids"][:, 3] = (changed["input_ids"][:, 3] + 7) % 150  # token 3 of every caption
    with torch.no_grad():
        before = model.vlbert(**inputs, attention_mask=seq2seq_mask(inputs["text_mask"], inputs["region_mask"])).last_hidden_state
        after = model.vlbert(**changed, attention_mask=seq2seq_mask(changed["text_mask"], changed["region_mask"])).last_hidden_state
        logits_before, logits_after = model(**inputs).logits, model(**changed).logits
    text = inputs["input_ids"].shape[1]
    assert torch.equal(before[:, :3], after[:, :3])             # earlier caption positions: unchanged
    assert torch.equal(before[:, text:], after[:, text:])       # regions: unchanged
    assert not torch.allclose(before[:, 3:4], after[:, 3:4])    # the token itself and later ones do change
    assert not torch.allclose(before[0, 4:text], after[0, 4:text])
    assert torch.equal(logits_before[:, :3], logits_after[:, :3]) and logits_before.shape == (3, text, 160)


def test_caption_positions_see_the_regions():
    torch.manual_seed(0)
    model = VLBertForCaptioning(tiny_config()).eval()
    inputs = padded_inputs()
    other = {**inputs, "region_features": inputs["region_features"] + 1.0}
    with torch.no_grad():
        assert not torch.allclose(model(**inputs).logits[:, 0], model(**other).logits[:, 0])


def test_padding_changes_nothing_at_real_positions():
    torch.manual_seed(0)
    model = VLBertForCaptioning(tiny_config()).eval()
    inputs = padded_inputs()
    with torch.no_grad():
        batched = model(**inputs).logits
        for row in range(3):
            text, regions = int(inputs["text_mask"][row].sum()), int(inputs["region_mask"][row].sum())
            alone = model(inputs["input_ids"][row:row + 1, :text], inputs["text_mask"][row:row + 1, :text],
                          inputs["region_features"][row:row + 1, :regions], inputs["region_locations"][row:row + 1, :regions],
                          inputs["region_mask"][row:row + 1, :regions]).logits
            torch.testing.assert_close(batched[row:row + 1, :text], alone, atol=1e-5, rtol=1e-5)


def test_a_full_3d_mask_is_the_default_attention():
    """The 3-D mask path (padded SDPA) gives what the key-mask path (packed) gives when it allows everything."""
    torch.manual_seed(0)
    encoder = VLBertModel(tiny_config()).eval()
    inputs = padded_inputs()
    length = inputs["input_ids"].shape[1] + inputs["region_features"].shape[1]
    with torch.no_grad():
        default = encoder(**inputs).last_hidden_state
        full = encoder(**inputs, attention_mask=torch.ones(3, length, length, dtype=torch.bool)).last_hidden_state
    torch.testing.assert_close(full, default, atol=1e-5, rtol=1e-5)
    valid = torch.cat([inputs["text_mask"], inputs["region_mask"]], 1)
    assert bool((full[~valid] == 0).all())
    with pytest.raises(ValueError, match="expected"):
        encoder(**inputs, attention_mask=torch.ones(3, length, length - 1, dtype=torch.bool))


def test_loss_by_hand():
    """Word embeddings at zero: every position's logits are the head's bias, so the loss is known."""
    model = VLBertForCaptioning(tiny_config())
    with torch.no_grad():
        model.vlbert.text_embeddings.word_embeddings.weight.zero_()
        model.mlm_head.bias.fill_(-1e4)
        model.mlm_head.bias[7] = 0.0
        model.mlm_head.bias[9] = math.log(3.0)  # p(7) = 1/4, p(9) = 3/4
    inputs = random_inputs(batch=2, text=5, regions=3)
    labels = torch.full((2, 5), IGNORE_INDEX)
    labels[0, 2], labels[1, 4] = 7, 9
    output = model(**inputs, labels=labels)
    assert output.logits.shape == (2, 160)
    assert output.loss.item() == pytest.approx((math.log(4) + math.log(4 / 3)) / 2, rel=1e-5)
    assert output.accuracy.item() == 0.5
    output.loss.backward()
    assert model.mlm_head.bias.grad is not None


def test_positions_pick_one_text_position_per_row():
    torch.manual_seed(0)
    model = VLBertForCaptioning(tiny_config()).eval()
    inputs = random_inputs(batch=3, text=6, regions=4)
    with torch.no_grad():
        every = model(**inputs).logits
        some = model(**inputs, positions=torch.tensor([0, 5, 2])).logits
    torch.testing.assert_close(some, every[torch.arange(3), torch.tensor([0, 5, 2])])


def test_save_and_load_keep_the_weights_and_the_objective(tmp_path):
    torch.manual_seed(0)
    model = VLBertForCaptioning(tiny_config(caption_objective="next_token")).eval()
    model.save_pretrained(tmp_path / "caption")
    assert (tmp_path / "caption" / "model.safetensors").is_file()
    again = VLBertForCaptioning.from_pretrained(tmp_path / "caption").eval()
    assert again.objective == "next_token"
    inputs = random_inputs()
    with torch.no_grad():
        torch.testing.assert_close(again(**inputs).logits, model(**inputs).logits)
    with pytest.raises(ValueError, match="caption_objective"):
        VLBertForCaptioning(tiny_config(caption_objective="sideways"))


def test_init_from_a_pretraining_export_keeps_the_mlm_head(tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    pretrained = VLBertForPretraining(tiny_config())
    with torch.no_grad():
        pretrained.mlm_head.bias.normal_()
    write_model_directory(tmp_path / "pretrained", pretrained, tiny_tokenizer)
    model = build_model(VLBertForCaptioning, tiny_config().settings(), init_from=str(tmp_path / "pretrained"),
                        caption_objective="masked")
    assert torch.equal(model.mlm_head.bias, pretrained.mlm_head.bias)
    assert torch.equal(model.mlm_head.transform.dense.weight, pretrained.mlm_head.transform.dense.weight)
    for key, value in pretrained.vlbert.state_dict().items():
        assert torch.equal(model.vlbert.state_dict()[key], value), key
    fresh = build_model(VLBertForCaptioning, tiny_config().settings(), init_from=str(tmp_path / "pretrained"),
                        keep_heads=False, caption_objective="masked")
    assert not torch.equal(fresh.mlm_head.bias, pretrained.mlm_head.bias)
