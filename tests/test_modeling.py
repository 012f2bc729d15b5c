"""Model shapes, padding masks, HF BERT weight loading, save/load round trips and the Auto classes."""
import json

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, BertConfig, BertForPreTraining, BertModel

from tiny import random_inputs, tiny_config
from vlbert import VLBertConfig, VLBertForPretraining, VLBertModel
from vlbert.modeling.pretrained import load_bert_into, load_pretrained
from vlbert.training.export import write_model_directory


@pytest.mark.parametrize("style", ["uniter", "visualbert"])
def test_output_shapes(style):
    model = VLBertModel(tiny_config(region_embedding=style)).eval()
    out = model(**random_inputs())
    assert out.last_hidden_state.shape == (3, 12, 32)
    assert out.pooler_output.shape == (3, 32)


def test_padding_does_not_change_real_positions():
    """A padded example gives the same outputs as the example alone: masks cover both paddings."""
    torch.manual_seed(0)
    model = VLBertModel(tiny_config()).eval()
    inputs = random_inputs(batch=2, text=9, regions=6)
    inputs["text_mask"][1, 5:] = False
    inputs["input_ids"][1, 5:] = 0
    inputs["region_mask"][1, 4:] = False
    inputs["region_features"][1, 4:] = 123.0  # garbage in padding must not leak
    with torch.no_grad():
        batched = model(**inputs)
        alone = model(
            input_ids=inputs["input_ids"][1:, :5],
            text_mask=inputs["text_mask"][1:, :5],
            region_features=inputs["region_features"][1:, :4],
            region_locations=inputs["region_locations"][1:, :4],
            region_mask=inputs["region_mask"][1:, :4],
        )
    real = torch.cat([batched.last_hidden_state[1, :5], batched.last_hidden_state[1, 9:13]])
    torch.testing.assert_close(real, alone.last_hidden_state[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched.pooler_output[1], alone.pooler_output[0], atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_same_outputs_and_grads():
    torch.manual_seed(0)
    plain = VLBertModel(tiny_config()).train()
    ckpt = VLBertModel(tiny_config(gradient_checkpointing=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    inputs = random_inputs()
    plain(**inputs).pooler_output.sum().backward()
    ckpt(**inputs).pooler_output.sum().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


@pytest.mark.parametrize("style", ["uniter", "visualbert"])
def test_masked_regions_take_the_learned_mask_vector(style):
    """A region masked for MRM embeds as if its feature were the learned mask vector, whatever
    its (zeroed) feature; unmasked regions are untouched."""
    torch.manual_seed(0)
    model = VLBertModel(tiny_config(region_embedding=style)).eval()
    inputs = random_inputs(batch=2, regions=4)
    masked = torch.zeros(2, 4, dtype=torch.bool)
    masked[0, 1] = masked[1, 3] = True
    zeroed = {**inputs, "region_features": inputs["region_features"].masked_fill(masked[..., None], 0.0)}
    replaced = {**inputs, "region_features": torch.where(masked[..., None], model.region_embeddings.mask_embedding.detach(), inputs["region_features"])}
    with torch.no_grad():
        got = model(**zeroed, region_masked=masked).last_hidden_state
        expected = model(**replaced).last_hidden_state
        unmasked = model(**inputs).last_hidden_state
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, unmasked)


def test_masked_regions_keep_region_gradients_finite_in_scale():
    """Zeroed features alone project to the (zero-initialised) bias, whose LayerNorm has no
    variance: gradients ~1e5 times larger on that bias (shared by every region), which wrecked
    image-text matching in pretraining. With the mask vector they stay at the unmasked scale."""
    torch.manual_seed(0)
    inputs = random_inputs(batch=4, regions=6)
    masked = torch.zeros(4, 6, dtype=torch.bool)
    masked[:, :2] = True
    zeroed = {**inputs, "region_features": inputs["region_features"].masked_fill(masked[..., None], 0.0)}
    norms = {}
    for case, kwargs in (("unmasked", inputs), ("zeroed", zeroed), ("mask vector", {**zeroed, "region_masked": masked})):
        torch.manual_seed(1)
        model = VLBertModel(tiny_config())
        out = model(**kwargs).last_hidden_state[:, 7:][masked]
        target = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        (out * target).sum().backward()  # a loss on the masked regions, as MRM has
        norms[case] = model.region_embeddings.feature_proj.bias.grad.norm().item()
    assert norms["zeroed"] > 1000 * norms["unmasked"]
    assert norms["mask vector"] < 3 * norms["unmasked"]


def test_wrong_feature_dimension_is_a_clear_error():
    model = VLBertModel(tiny_config())
    inputs = random_inputs(dim=48)
    with pytest.raises(ValueError, match="48-d but the model expects region_feature_dim=64"):
        model(**inputs)


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match=r"unknown model setting\(s\) \['hiden_layers'\]"):
        VLBertConfig.from_settings({"hidden_size": 32, "hiden_layers": 2})
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        VLBertConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="region_embedding"):
        VLBertConfig(region_embedding="lxmert")


@pytest.mark.parametrize("source", [BertModel, BertForPreTraining])
def test_hf_bert_checkpoint_loads_and_matches_text_only(tmp_path, source):
    torch.manual_seed(0)
    bert_config = BertConfig(vocab_size=160, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=64, max_position_embeddings=64)
    hf = source(bert_config).eval()
    hf.save_pretrained(tmp_path)
    config = VLBertConfig.from_bert(tmp_path, region_feature_dim=64)
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (32, 2, 160)
    model = VLBertForPretraining(config).eval()
    report = load_bert_into(model, tmp_path)
    assert all(k.startswith("region_embeddings.") for k in report["missing"])
    inputs = random_inputs(regions=0)
    inputs["text_mask"][0, 4:] = False
    with torch.no_grad():
        bert = hf.bert if source is BertForPreTraining else hf
        ref = bert(input_ids=inputs["input_ids"], attention_mask=inputs["text_mask"].long())
        ours = model.vlbert(**inputs)
        mask = inputs["text_mask"]
        torch.testing.assert_close(ours.last_hidden_state[mask], ref.last_hidden_state[mask], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.pooler_output, ref.pooler_output, atol=1e-5, rtol=1e-4)
        if source is BertForPreTraining:  # the MLM and NSP heads carry over too
            positions = torch.tensor([[0, 1], [1, 2], [2, 3]])
            hidden = ref.last_hidden_state[positions[:, 0], positions[:, 1]]
            torch.testing.assert_close(model.mlm_head(hidden), hf.cls.predictions(hidden), atol=1e-4, rtol=1e-4)
            # BERT's "is next" (class 0) becomes vlbert's "matched" (class 1)
            torch.testing.assert_close(model.itm_head(ref.pooler_output), hf.cls.seq_relationship(ref.pooler_output).flip(-1))


def test_bert_checkpoint_with_other_sizes_is_refused(tmp_path):
    BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="word embeddings"):
        load_bert_into(VLBertForPretraining(tiny_config()), tmp_path)


def test_save_and_load_round_trip(tmp_path, tiny_tokenizer):
    torch.manual_seed(0)
    model = VLBertForPretraining(tiny_config()).eval()
    write_model_directory(tmp_path / "m", model, tiny_tokenizer, {"feature_dim": 64, "num_classes": 36, "provenance": {}})
    assert {p.name for p in (tmp_path / "m").iterdir()} >= {"config.json", "model.safetensors", "features.json", "tokenizer_config.json"}
    loaded = VLBertForPretraining.from_pretrained(tmp_path / "m").eval()
    encoder = VLBertModel.from_pretrained(tmp_path / "m").eval()
    inputs = random_inputs()
    with torch.no_grad():
        expected = model.vlbert(**inputs)
        torch.testing.assert_close(loaded.vlbert(**inputs).last_hidden_state, expected.last_hidden_state)
        torch.testing.assert_close(encoder(**inputs).pooler_output, expected.pooler_output)
    # the MLM decoder really is the word embedding after loading (stored once): change one, the other follows
    assert not any("decoder" in key for key in load_pretrained(tmp_path / "m")[1])
    hidden = torch.randn(3, loaded.config.hidden_size)
    with torch.no_grad():
        before = loaded.mlm_head(hidden)
        loaded.get_input_embeddings().weight[7] += 1.0
        after = loaded.mlm_head(hidden)
    changed = (after - before).abs().amax(0) > 0
    assert changed[7] and int(changed.sum()) == 1
    # an embedding put in its place (transformers' set_input_embeddings) is the decoder from then on
    replacement = torch.nn.Embedding(loaded.config.vocab_size, loaded.config.hidden_size)
    loaded.set_input_embeddings(replacement)
    with torch.no_grad():
        expected = torch.nn.functional.linear(loaded.mlm_head.transform(hidden), replacement.weight, loaded.mlm_head.bias)
        torch.testing.assert_close(loaded.mlm_head(hidden), expected)


def test_transformers_auto_classes_read_vlbert_directories(tmp_path):
    """After `import vlbert`, AutoConfig / AutoModel / AutoModelForPreTraining know model_type "vlbert"."""
    torch.manual_seed(0)
    model = VLBertForPretraining(tiny_config()).eval()
    model.save_pretrained(tmp_path / "m")
    config = AutoConfig.from_pretrained(tmp_path / "m")
    assert type(config) is VLBertConfig and config.settings() == tiny_config().settings()
    assert json.loads((tmp_path / "m" / "config.json").read_text())["architectures"] == ["VLBertForPretraining"]
    encoder = AutoModel.from_pretrained(tmp_path / "m").eval()
    pretraining = AutoModelForPreTraining.from_pretrained(tmp_path / "m").eval()
    assert type(encoder) is VLBertModel and type(pretraining) is VLBertForPretraining
    inputs = random_inputs()
    with torch.no_grad():
        torch.testing.assert_close(encoder(**inputs).last_hidden_state, model.vlbert(**inputs).last_hidden_state)
        torch.testing.assert_close(pretraining(**inputs).pooler_output, model(**inputs).pooler_output)


def test_gradient_checkpointing_is_a_setting_that_survives_save_and_load(tmp_path):
    model = VLBertModel(tiny_config(gradient_checkpointing=True))
    assert model.encoder.gradient_checkpointing and model.config.gradient_checkpointing
    model.save_pretrained(tmp_path)
    assert VLBertModel.from_pretrained(tmp_path).encoder.gradient_checkpointing
    model.gradient_checkpointing_disable()
    assert not model.encoder.gradient_checkpointing and not model.config.gradient_checkpointing


def test_load_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_pretrained(tmp_path / "missing")
    tmp_path.joinpath("config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_pretrained(tmp_path)
