"""Object tags (Oscar): the tag segment, its token type, MLM over tags, the polluted-tag contrastive
objective, the token type the model grows, refusals, and pretraining -> VQA -> `vlbert answer` with tags."""
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from tiny import random_inputs, refused, tiny_config, tiny_pretrain_args
from vlbert.cli import main as vlbert
from vlbert.data.annotations import load_pairs
from vlbert.data.tags import TAG_TOKEN_TYPE, ObjectTags, with_tags
from vlbert.errors import InputError
from vlbert.featstore import FeatureStore
from vlbert.modeling.model import VLBertForPretraining, VLBertModel, word_positions
from vlbert.pretraining.cli import PretrainCLI  # Lightning imported at collection: its log handler binds the real stdout
from vlbert.pretraining.datamodule import PretrainDataModule
from vlbert.pretraining.dataset import PretrainDataset, collate_pretrain
from vlbert.pretraining.module import PretrainModule
from vlbert.pretraining.masking import IGNORE_INDEX
from vlbert.pretraining.objectives import Objectives

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_the_segment_is_the_regions_class_names_in_order_closed_by_sep(tiny_tokenizer):
    names = ["background", "red circle", "blue square"]
    tags = ObjectTags(names, tiny_tokenizer, max_tags=20)
    sep = tiny_tokenizer.sep_token_id
    segment = tags.segment(np.array([1, 0, 2, 1]))  # background gets no tag, duplicates stay
    assert segment.tolist() == ids(tiny_tokenizer, "red circle blue square red circle") + [sep]
    assert tags.words(np.array([1, 0, 2, 1])) == ["red circle", "blue square", "red circle"]
    # whole names only: 5 tokens hold two names of two tokens, not half of a third
    assert ObjectTags(names, tiny_tokenizer, max_tags=5).segment(np.array([1, 2, 1])).tolist() == \
        ids(tiny_tokenizer, "red circle blue square") + [sep]
    assert tags.segment(np.array([0, 0])).size == 0 and tags.segment(None).size == 0
    text = np.array([2, 50, 51, 3])
    joined, types = with_tags(text, segment)
    assert joined.tolist() == text.tolist() + segment.tolist()
    assert types.tolist() == [0] * 4 + [TAG_TOKEN_TYPE] * len(segment)


def test_a_store_without_class_names_refuses_tags(tiny_tokenizer):
    with pytest.raises(InputError, match=r"data.object_tags needs the detector's class names, but x.h5 has none.*--class-names"):
        ObjectTags(None, tiny_tokenizer, source="x.h5")
    with pytest.raises(InputError, match="data.max_tags must be >= 1"):
        ObjectTags(["background", "red circle"], tiny_tokenizer, max_tags=0)


def test_the_synthetic_world_names_its_classes(tiny_world):
    names = FeatureStore(tiny_world.features_path).class_names
    assert names[0] == "background" and names[1] == "red circle" and len(names) == len(set(names))


@pytest.fixture()
def parts(tiny_world, tiny_tokenizer):
    store = FeatureStore(tiny_world.features_path)
    return load_pairs(tiny_world.captions("train")), store, tiny_tokenizer, ObjectTags(store.class_names, tiny_tokenizer)


def own_segment(tags, store, image_id, max_regions=100):
    return tags.segment(store[image_id].top_labels()[:max_regions])


def test_examples_carry_their_images_tags_as_type_2(parts):
    pairs, store, tokenizer, tags = parts
    dataset = PretrainDataset(pairs, store, tokenizer, Objectives(), tags=tags)
    for index in range(5):
        example = dataset[(index, "mrfr", 0)]
        segment = own_segment(tags, store, pairs[index].image_id)
        text = tokenizer(pairs[index].caption)["input_ids"]
        assert len(segment) > 1 and example["input_ids"].tolist() == text + segment.tolist()
        assert example["token_type_ids"].tolist() == [0] * len(text) + [TAG_TOKEN_TYPE] * len(segment)
    batch = collate_pretrain([dataset[(i, "mrfr", 0)] for i in range(4)], tokenizer.pad_token_id)
    lengths = batch["text_mask"].sum(1)
    for row, length in enumerate(lengths.tolist()):
        assert (batch["token_type_ids"][row, length:] == 0).all()  # padding is type 0
        assert batch["token_type_ids"][row, :length].tolist() == dataset[(row, "mrfr", 0)]["token_type_ids"].tolist()


def test_mlm_masks_tags_as_well_as_words(parts):
    pairs, store, tokenizer, tags = parts
    dataset = PretrainDataset(pairs, store, tokenizer, Objectives(), tags=tags)
    where = {0: 0, TAG_TOKEN_TYPE: 0}
    for index in range(len(dataset)):
        example = dataset[(index, "mlm", 0)]
        for kind in where:
            where[kind] += int(((example["mlm_labels"] != IGNORE_INDEX) & (example["token_type_ids"] == kind)).sum())
    assert where[0] > 0 and where[TAG_TOKEN_TYPE] > 0


def test_half_the_contrastive_examples_carry_another_images_tags(parts):
    pairs, store, tokenizer, tags = parts
    dataset = PretrainDataset(pairs, store, tokenizer, Objectives(tag_contrastive=1.0), tags=tags)
    labels, foreign = [], 0
    for index in range(len(dataset)):
        example = dataset[(index, "tag_contrastive", 0)]
        segment = example["input_ids"][example["token_type_ids"] == TAG_TOKEN_TYPE]
        own = own_segment(tags, store, pairs[index].image_id)
        labels.append(example["tag_label"])
        if example["tag_label"] == 1:
            assert segment.tolist() == own.tolist()
        else:
            foreign += segment.tolist() != own.tolist()
        assert example["itm_label"] == IGNORE_INDEX and (example["mlm_labels"] == IGNORE_INDEX).all()
        assert not example["region_masked"].any()
    polluted = labels.count(0)
    assert 0.4 < polluted / len(labels) < 0.6, polluted / len(labels)
    assert foreign >= 0.9 * polluted  # another image's tags, which differ from the own ones but by chance
    batch = collate_pretrain([dataset[(i, "tag_contrastive", 0)] for i in range(6)], tokenizer.pad_token_id)
    assert batch["tag_index"].tolist() == list(range(6)) and batch["tag_targets"].tolist() == labels[:6]


def test_tags_off_leaves_every_example_as_it_was(parts):
    """A new task code: the examples of the existing tasks draw the same numbers as before tags existed."""
    pairs, store, tokenizer, _ = parts
    dataset = PretrainDataset(pairs, store, tokenizer, Objectives(mixing="sum"), seed=4)
    example = dataset[7]
    assert "token_type_ids" not in example and example["tag_label"] == IGNORE_INDEX
    from vlbert.pretraining.dataset import TASK_CODES

    assert TASK_CODES == {"mlm": 0, "mrfr": 1, "mrc": 2, "mrc_kl": 3, "itm": 4, "mix": 5, "tag_contrastive": 6}


def test_contrastive_needs_tags():
    parts_error = "set data.object_tags: true"
    with pytest.raises(InputError, match=parts_error):
        PretrainDataset([], None, None, Objectives(tag_contrastive=1.0))


def test_grown_token_types_start_as_the_text_type():
    model = VLBertModel(tiny_config()).eval()
    inputs = random_inputs(dim=64)
    before = model(**inputs).last_hidden_state
    assert model.grow_token_types(3) and model.config.type_vocab_size == 3
    weight = model.text_embeddings.token_type_embeddings.weight
    assert weight.shape[0] == 3 and torch.equal(weight[2], weight[0])
    assert torch.equal(model(**inputs).last_hidden_state, before)
    types = torch.full_like(inputs["input_ids"], TAG_TOKEN_TYPE)
    assert torch.allclose(model(**inputs, token_type_ids=types).last_hidden_state, before)  # type 2 == type 0, for now
    assert not model.grow_token_types(3)


def test_wra_aligns_the_caption_words_only():
    text_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    types = torch.tensor([[0, 0, 0, 0, 2, 2, 2, 0], [0, 0, 0, 0, 0, 0, 0, 0]])
    # [CLS] w w [SEP] tag tag [SEP] pad  /  [CLS] w w [SEP] pad...
    expected = [[0, 1, 1, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0, 0]]
    assert word_positions(text_mask, types).int().tolist() == expected
    assert word_positions(text_mask[1:]).int().tolist() == expected[1:]


def test_the_pretraining_model_scores_clean_against_polluted_tags():
    from vlbert.modeling.model import PretrainingTargets

    model = VLBertForPretraining(tiny_config())
    assert model.tag_head is None and "tag_head" not in {k.split(".")[0] for k in model.state_dict()}  # converted models load whole
    assert model.use_object_tags(TAG_TOKEN_TYPE) and not model.use_object_tags(TAG_TOKEN_TYPE)
    assert VLBertForPretraining(model.config).tag_head is not None  # a saved tags model rebuilds its head
    inputs = random_inputs(batch=4, dim=64)
    targets = PretrainingTargets(("tag_contrastive",), {"tag_contrastive": 2.0}, tag_index=torch.tensor([0, 2, 3]),
                                 tag_targets=torch.tensor([1, 0, 1]))
    out = model(**inputs, targets=targets, token_type_ids=torch.zeros_like(inputs["input_ids"]))
    logits = model.tag_head(out.pooler_output[[0, 2, 3]])
    expected = torch.nn.functional.cross_entropy(logits, targets.tag_targets)
    assert torch.allclose(out.losses["tag_contrastive"], expected) and torch.allclose(out.loss, 2 * expected)
    assert out.tag_logits.shape == (3, 2)


def without_names(world, tmp_path) -> Path:
    copy = tmp_path / "unnamed.h5"
    shutil.copy(world.features_path, copy)
    with h5py.File(copy, "a") as f:
        del f["class_names"]
    return copy


def test_refusals_before_any_work(tiny_world, tmp_path, capsys):
    base = ["pretrain", "fit", *tiny_pretrain_args(tiny_world, tmp_path)]
    refused(capsys, [*base, "--model.objectives.tag_contrastive", "1"], r"tag_contrastive > 0 .*set data.object_tags: true")
    unnamed = without_names(tiny_world, tmp_path)
    refused(capsys, [*base, "--data.object_tags", "true", "--data.features", str(unnamed)],
            r"needs the detector's class names, but the feature store data.features=.*unnamed.h5 has none")
    refused(capsys, [*base, "--data.object_tags", "true", "--data.max_tags", "30"],
            r"data.max_text_len=40 \+ 31 for the object tags .* exceed the model's max_position_embeddings=64")


def vqa_args(world, root, **extra) -> list[str]:
    args = ["--config", "configs/vqa/tiny.yaml", "--data.features", str(world.features_path),
            "--data.tokenizer", str(world.tokenizer_dir), "--data.num_workers", "0", "--data.batch_size", "16",
            "--data.min_answer_count", "2", "--trainer.max_steps", "3", "--trainer.default_root_dir", str(root),
            "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]
    for split in ("train", "val", "test"):
        args += [f"--data.{split}_questions", str(world.vqa_questions(split)),
                 f"--data.{split}_annotations", str(world.vqa_annotations(split))]
    for key, value in extra.items():
        args += [f"--{key}", str(value)]
    return args


def test_pretrain_then_vqa_then_answer_with_tags(tiny_world, tmp_path, capsys):
    pre = tmp_path / "pre"
    args = tiny_pretrain_args(tiny_world, tmp_path / "p", **{
        "data.object_tags": "true", "model.objectives.tag_contrastive": 1, "model.objectives.mixing": "sum",
        "trainer.max_steps": 3, "model.export_dir": pre})
    cli = PretrainCLI(PretrainModule, PretrainDataModule, args=args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    logged = cli.trainer.logged_metrics
    assert torch.isfinite(logged["train/tag_contrastive_loss"]) and torch.isfinite(logged["train/mlm_loss"])
    assert json.loads((pre / "config.json").read_text())["type_vocab_size"] == 3

    vqa = tmp_path / "vqa"
    argv = vqa_args(tiny_world, tmp_path / "v", **{"model.init_from": pre, "data.object_tags": "true", "model.export_dir": vqa})
    assert vlbert(["vqa", "fit", *argv]) == 0
    inputs = json.loads((vqa / "vqa.json").read_text())
    assert inputs["object_tags"] is True and inputs["max_tags"] == 20
    assert inputs["class_names"] == FeatureStore(tiny_world.features_path).class_names

    image_id = str(tiny_world.image_ids("test")[0])
    capsys.readouterr()
    assert vlbert(["answer", "--model", str(vqa), "--features", str(tiny_world.features_path), "--image-id", image_id,
                   "--question", "how many circles are there?", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["answers"][0]["top"]

    # the same answer as the fine-tuned model given the tagged input directly
    from vlbert import VLBertForVQA
    from vlbert.tasks.vqa.answer import question_batch, stored_regions

    model = VLBertForVQA.from_pretrained(vqa).eval()
    regions = stored_regions(str(tiny_world.features_path), image_id, None)
    tags = ObjectTags(inputs["class_names"], cli.datamodule.tokenizer)
    batch = question_batch(cli.datamodule.tokenizer, ["how many circles are there?"], regions, 24, 100, tags)
    assert (batch["token_type_ids"] == TAG_TOKEN_TYPE).sum() == len(tags.segment(regions[4]))
    with torch.no_grad():
        best = int(model(**batch).logits[0].argmax())
    assert top[0]["answer"] == model.answers[best]


def test_vqa_with_tags_grows_a_two_type_encoder(tiny_world, tmp_path):
    from vlbert.tasks.vqa.cli import VQACLI
    from vlbert.tasks.vqa.datamodule import VQADataModule
    from vlbert.tasks.vqa.module import VQAModule

    argv = vqa_args(tiny_world, tmp_path, **{"model.init_from": "null", "model.model.hidden_size": 32,
                                              "model.model.intermediate_size": 64, "data.object_tags": "true"})
    cli = VQACLI(VQAModule, VQADataModule, args=argv, run=False)
    assert cli.model.config.type_vocab_size == 2
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.model.config.type_vocab_size == 3
    batch = next(iter(cli.datamodule.train_dataloader()))
    assert (batch["token_type_ids"] == TAG_TOKEN_TYPE).any()
