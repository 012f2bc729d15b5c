"""`vlbert convert` between transformers VisualBERT and vlbert: random tiny VisualBERT models of
each head type are saved, converted and run on the same inputs; the round trip vlbert ->
VisualBERT -> vlbert is exact; bad inputs give clear errors."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import VisualBertConfig, VisualBertForPreTraining, VisualBertForQuestionAnswering, VisualBertModel

from vlbert.convert import main
from vlbert.convert.vqa_head import head_from_state
from vlbert.data.tokenizer import build_word_tokenizer
from vlbert.modeling.config import VLBertConfig
from vlbert.modeling.model import VLBertForPretraining, VLBertModel
from vlbert.modeling.pretrained import load_pretrained, load_submodule_state
from vlbert.training.export import write_model_directory

VOCAB, HIDDEN, FEATURE_DIM, NUM_ANSWERS = 120, 32, 12, 7
ATOL = 1e-5  # float32 round-off; measured differences are ~1e-6


def perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere (HF init leaves LayerNorms at 1/0 and biases at 0, which would hide swaps)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


def hf_config(**overrides) -> VisualBertConfig:
    values = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  visual_embedding_dim=FEATURE_DIM, max_position_embeddings=24, num_labels=NUM_ANSWERS, pad_token_id=0)
    return VisualBertConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tok")
    build_word_tokenizer(["red", "blue", "cube", "ball", "left", "of"], directory)
    return directory


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    from vlbert.data.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)


def inputs(seed: int = 0):
    """Three examples with different text and region paddings (every text has >= 3 tokens)."""
    generator = torch.Generator().manual_seed(seed)
    batch, text_len, regions = 3, 8, 5
    input_ids = torch.randint(5, VOCAB, (batch, text_len), generator=generator)
    text_mask = torch.arange(text_len)[None] < torch.tensor([[8], [5], [3]])
    input_ids[~text_mask] = 0
    region_mask = torch.arange(regions)[None] < torch.tensor([[5], [2], [4]])
    features = torch.randn(batch, regions, FEATURE_DIM, generator=generator)
    return input_ids, text_mask, features, region_mask


def hf_outputs(model, input_ids, text_mask, features, region_mask):
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=text_mask.long(), visual_embeds=features,
                     visual_attention_mask=region_mask.long(), output_hidden_states=True)


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    difference = (a - b).abs()
    return float((difference[mask] if mask is not None else difference).max())


def save_visualbert(model, directory, tokenizer=None):
    model.save_pretrained(str(directory))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
    return directory


def convert(*argv) -> int:
    return main([str(a) for a in argv])


def test_visualbert_model_encoder_outputs_match(tmp_path, tokenizer, capsys):
    hf = perturb(VisualBertModel(hf_config()), seed=1)
    src = save_visualbert(hf, tmp_path / "src", tokenizer)
    assert convert("--from", "visualbert", src, "--out", tmp_path / "dst") == 0
    assert "converted" in capsys.readouterr().out
    config, state = load_pretrained(tmp_path / "dst")
    assert (config.region_embedding, config.region_location_dim, config.region_feature_dim) == ("visualbert", 0, FEATURE_DIM)
    assert all(key.startswith("vlbert.") for key in state)
    model = VLBertModel.from_pretrained(tmp_path / "dst").eval()
    input_ids, text_mask, features, region_mask = inputs()
    expected = hf_outputs(hf, input_ids, text_mask, features, region_mask)
    with torch.no_grad():
        got = model(input_ids, text_mask, features, None, region_mask)
    valid = torch.cat([text_mask, region_mask], dim=1)
    seq, pooled = max_diff(got.last_hidden_state, expected.last_hidden_state, valid), max_diff(got.pooler_output, expected.pooler_output)
    print(f"VisualBertModel: max |diff| sequence {seq:.2e} pooled {pooled:.2e}")
    assert seq < ATOL and pooled < ATOL
    assert (tmp_path / "dst" / "tokenizer_config.json").exists()  # the tokenizer found in SRC travels along
    report = json.loads((tmp_path / "dst" / "conversion.json").read_text())
    # every tensor converted; the masked-region vector VisualBERT has no counterpart of is not
    # written (as if converted): it starts new when the directory is loaded
    assert report["unconverted"] == {} and report["num_converted"] == len(state)
    assert "vlbert.region_embeddings.mask_embedding" not in state


def test_visualbert_pretraining_heads_match(tmp_path, tokenizer, tokenizer_dir):
    hf = perturb(VisualBertForPreTraining(hf_config()), seed=2)
    src = save_visualbert(hf, tmp_path / "src")
    assert convert("--from", "visualbert", src, "--out", tmp_path / "dst", "--tokenizer", tokenizer_dir) == 0
    config, state = load_pretrained(tmp_path / "dst")
    model = VLBertForPretraining(config).eval()
    missing = load_submodule_state(model, state, "", strict=True)
    # VisualBERT has no region regression and no masked-region vector
    assert missing and all(key.startswith("mrfr_head.") or key == "vlbert.region_embeddings.mask_embedding" for key in missing)
    input_ids, text_mask, features, region_mask = inputs(1)
    expected = hf_outputs(hf, input_ids, text_mask, features, region_mask)
    with torch.no_grad():
        out = model.vlbert(input_ids, text_mask, features, None, region_mask)
        mlm = model.mlm_head(out.last_hidden_state[:, : input_ids.shape[1]])
        itm = model.itm_head(out.pooler_output)
    mlm_diff = max_diff(mlm, expected.prediction_logits[:, : input_ids.shape[1]], text_mask)
    # VisualBERT's class 0 is "matched"; vlbert's index 1 is: the converter swaps the rows.
    itm_diff = max_diff(itm, expected.seq_relationship_logits.flip(-1))
    print(f"VisualBertForPreTraining: max |diff| MLM logits {mlm_diff:.2e} ITM logits {itm_diff:.2e}")
    assert mlm_diff < ATOL and itm_diff < ATOL
    assert config.pad_token_id == tokenizer.pad_token_id
    assert (tmp_path / "dst" / "tokenizer_config.json").exists()


def test_visualbert_vqa_head_matches(tmp_path, tokenizer):
    hf = perturb(VisualBertForQuestionAnswering(hf_config()), seed=3)
    src = save_visualbert(hf, tmp_path / "src", tokenizer)
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps([f"answer{i}" for i in range(NUM_ANSWERS)]))
    assert convert("--from", "visualbert", src, "--out", tmp_path / "dst", "--answers", answers) == 0
    config, state = load_pretrained(tmp_path / "dst")
    report = json.loads((tmp_path / "dst" / "conversion.json").read_text())
    assert report["vqa_head"] == {"style": "token_linear", "num_answers": NUM_ANSWERS}
    assert json.loads((tmp_path / "dst" / "answers.json").read_text())["answers"][2] == "answer2"
    encoder = VLBertModel.from_pretrained(tmp_path / "dst").eval()
    head = head_from_state(config, state, "token_linear").eval()
    load_submodule_state(head, state, "vqa_head.", strict=True)
    input_ids, text_mask, features, region_mask = inputs(2)
    expected = hf_outputs(hf, input_ids, text_mask, features, region_mask)
    with torch.no_grad():
        out = encoder(input_ids, text_mask, features, None, region_mask)
        logits = head(out.last_hidden_state, out.pooler_output, text_mask)
    diff = max_diff(logits, expected.logits)
    print(f"VisualBertForQuestionAnswering: max |diff| answer logits {diff:.2e}")
    assert diff < ATOL


def random_vlbert(tmp_path, tokenizer, **overrides):
    config = VLBertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=24, region_feature_dim=FEATURE_DIM,
                          **{"region_embedding": "visualbert", "region_location_dim": 0, **overrides})
    model = perturb(VLBertForPretraining(config), seed=4)
    write_model_directory(tmp_path / "vlbert", model, tokenizer)
    return model, tmp_path / "vlbert"


def test_round_trip_vlbert_visualbert_vlbert(tmp_path, tokenizer, capsys):
    model, src = random_vlbert(tmp_path, tokenizer)
    assert convert("--from", "vlbert", src, "--to", "visualbert", "--out", tmp_path / "hf") == 0
    assert "mrfr_head.bias" in capsys.readouterr().out  # listed as having no place in VisualBERT
    hf = VisualBertForPreTraining.from_pretrained(str(tmp_path / "hf")).eval()
    input_ids, text_mask, features, region_mask = inputs(3)
    expected = hf_outputs(hf, input_ids, text_mask, features, region_mask)
    with torch.no_grad():
        out = model.vlbert(input_ids, text_mask, features, None, region_mask)
        itm = model.itm_head(out.pooler_output)
        mlm = model.mlm_head(out.last_hidden_state[:, : input_ids.shape[1]])
    valid = torch.cat([text_mask, region_mask], dim=1)
    diffs = (max_diff(out.last_hidden_state, expected.hidden_states[-1], valid),
             max_diff(itm, expected.seq_relationship_logits.flip(-1)),
             max_diff(mlm, expected.prediction_logits[:, : input_ids.shape[1]], text_mask))
    print("vlbert -> VisualBertForPreTraining: max |diff| sequence %.2e ITM %.2e MLM %.2e" % diffs)
    assert max(diffs) < ATOL
    assert (tmp_path / "hf" / "tokenizer_config.json").exists()

    assert convert("--from", "visualbert", tmp_path / "hf", "--out", tmp_path / "back") == 0
    _, before = load_pretrained(src)
    _, after = load_pretrained(tmp_path / "back")
    # the region regression head and the masked-region vector have no place in VisualBERT
    assert set(after) == set(before) - {k for k in before if k.startswith("mrfr_head.")} - {"vlbert.region_embeddings.mask_embedding"}
    for key, value in after.items():
        assert torch.equal(value, before[key]), key


def test_round_trip_visualbert_vqa(tmp_path):
    hf = perturb(VisualBertForQuestionAnswering(hf_config()), seed=5)
    save_visualbert(hf, tmp_path / "src")
    assert convert("--from", "visualbert", tmp_path / "src", "--out", tmp_path / "vlbert") == 0
    assert convert("--from", "vlbert", tmp_path / "vlbert", "--to", "visualbert", "--out", tmp_path / "back") == 0
    back = VisualBertForQuestionAnswering.from_pretrained(str(tmp_path / "back"))
    original = hf.state_dict()
    for key, value in back.state_dict().items():
        assert torch.equal(value, original[key]), key


def test_export_refuses_uniter_style_model(tmp_path, tokenizer, capsys):
    _, src = random_vlbert(tmp_path, tokenizer, region_embedding="uniter", region_location_dim=7)
    assert convert("--from", "vlbert", src, "--to", "visualbert", "--out", tmp_path / "hf") == 2
    error = capsys.readouterr().err
    assert "cannot be expressed as VisualBERT" in error and "region_location_dim=7" in error
    assert not (tmp_path / "hf").exists()


def test_export_refuses_vqa_without_head(tmp_path, tokenizer, capsys):
    _, src = random_vlbert(tmp_path, tokenizer)
    assert convert("--from", "vlbert", src, "--to", "visualbert", "--head", "vqa", "--out", tmp_path / "hf") == 2
    assert "no vqa_head" in capsys.readouterr().err


def test_bad_source_directories(tmp_path, tokenizer, capsys):
    assert convert("--from", "visualbert", tmp_path / "nowhere", "--out", tmp_path / "a") == 2
    assert "is not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert convert("--from", "visualbert", tmp_path / "empty", "--out", tmp_path / "a") == 2
    assert "config.json not found" in capsys.readouterr().err
    _, vlbert_dir = random_vlbert(tmp_path, tokenizer)
    assert convert("--from", "visualbert", vlbert_dir, "--out", tmp_path / "a") == 2
    assert "use --from vlbert" in capsys.readouterr().err
    assert convert("--from", "vlbert", vlbert_dir, "--out", tmp_path / "a") == 2
    assert "needs --to visualbert" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_mismatched_sizes_are_refused(tmp_path, capsys):
    src = save_visualbert(perturb(VisualBertModel(hf_config()), seed=6), tmp_path / "src")
    config = json.loads((src / "config.json").read_text())
    config["hidden_size"] = 64
    config["num_attention_heads"] = 4
    (src / "config.json").write_text(json.dumps(config))
    assert convert("--from", "visualbert", src, "--out", tmp_path / "dst") == 2
    error = capsys.readouterr().err
    assert "mismatched sizes" in error and "embeddings.word_embeddings.weight has shape (120, 32)" in error
    assert not (tmp_path / "dst").exists()


def test_tokenizer_larger_than_vocabulary_is_refused(tmp_path, tokenizer_dir, capsys):
    src = save_visualbert(perturb(VisualBertModel(hf_config(vocab_size=40)), seed=7), tmp_path / "src")
    assert convert("--from", "visualbert", src, "--out", tmp_path / "dst", "--tokenizer", tokenizer_dir) == 2
    assert "the tokenizer has" in capsys.readouterr().err


def test_existing_output_is_never_touched(tmp_path, capsys):
    src = save_visualbert(perturb(VisualBertModel(hf_config()), seed=8), tmp_path / "src")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "mine.txt").write_text("keep")
    assert convert("--from", "visualbert", src, "--out", tmp_path / "dst") == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "dst").iterdir()] == ["mine.txt"]


def test_unsupported_visualbert_variants(tmp_path, capsys):
    src = save_visualbert(perturb(VisualBertModel(hf_config(bypass_transformer=True)), seed=9), tmp_path / "bypass")
    assert convert("--from", "visualbert", src, "--out", tmp_path / "a") == 2
    assert "bypass_transformer" in capsys.readouterr().err
    from transformers import VisualBertForVisualReasoning

    src = save_visualbert(VisualBertForVisualReasoning(hf_config(num_labels=2)), tmp_path / "nlvr")
    assert convert("--from", "visualbert", src, "--out", tmp_path / "b") == 2
    assert "VisualBertForVisualReasoning" in capsys.readouterr().err


def test_legacy_pytorch_bin_with_tied_copies_and_buffers(tmp_path):
    """Hub checkpoints (uclanlp/visualbert-*) are pytorch_model.bin files that also carry the tied
    decoder tensors and the position_ids buffer; they are read with weights_only=True."""
    hf = perturb(VisualBertForPreTraining(hf_config()), seed=10)
    src = tmp_path / "src"
    src.mkdir()
    state = dict(hf.state_dict())
    state["visual_bert.embeddings.position_ids"] = torch.arange(24)[None]
    assert "cls.predictions.decoder.weight" in state
    torch.save(state, src / "pytorch_model.bin")
    hf.config.to_json_file(str(src / "config.json"))
    assert convert("--from", "visualbert", src, "--out", tmp_path / "dst") == 0
    report = json.loads((tmp_path / "dst" / "conversion.json").read_text())
    assert set(report["skipped"]) == {"cls.predictions.decoder.weight", "cls.predictions.decoder.bias",
                                      "visual_bert.embeddings.position_ids"}
    # An untied decoder cannot be expressed by vlbert's tied MLM head: refused, not silently re-tied.
    state["cls.predictions.decoder.weight"] = state["cls.predictions.decoder.weight"] + 1
    torch.save(state, src / "pytorch_model.bin")
    assert convert("--from", "visualbert", src, "--out", tmp_path / "dst2") == 2


def test_converted_visualbert_vqa_loads_as_vlbert_vqa_model(tmp_path):
    """VLBertForVQA reads a converted VisualBERT VQA directory (token_linear head, answers in its
    config) through transformers' Auto class and gives VisualBERT's answer logits."""
    from transformers import AutoModelForVisualQuestionAnswering

    from vlbert import VLBertForVQA

    hf = perturb(VisualBertForQuestionAnswering(hf_config()), seed=11)
    save_visualbert(hf, tmp_path / "src")
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps([f"a{i}" for i in range(NUM_ANSWERS)]))
    assert convert("--from", "visualbert", tmp_path / "src", "--out", tmp_path / "dst", "--answers", answers) == 0
    model = AutoModelForVisualQuestionAnswering.from_pretrained(tmp_path / "dst").eval()
    assert type(model) is VLBertForVQA and model.config.vqa_head_style == "token_linear"
    assert model.answers == [f"a{i}" for i in range(NUM_ANSWERS)]
    input_ids, text_mask, features, region_mask = inputs(2)
    expected = hf_outputs(hf, input_ids, text_mask, features, region_mask)
    with torch.no_grad():
        logits = model(input_ids, text_mask, features, None, region_mask).logits
    assert max_diff(logits, expected.logits) < ATOL
