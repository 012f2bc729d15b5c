"""Pictures: the encoder's attention probabilities, `vlbert answer --save-image`, `vlbert
show-features` and the box-drawing helper they share."""
import numpy as np
import pytest
import torch
from PIL import Image

from tiny import random_inputs, tiny_config
from vlbert import VLBertForVQA
from vlbert.cli import main as vlbert
from vlbert.data.tokenizer import load_tokenizer
from vlbert.featstore import FeatureStore, RegionRecord, read_header
from vlbert.features.drawing import PALETTE, display_size, draw_boxes, figure_pixels, image_figure, show_image
from vlbert.features.show import class_names, draw_record, region_tags
from vlbert.modeling import VLBertModel
from vlbert.modeling.encoder import Packing
from vlbert.modeling.vqa import with_answers
from vlbert.tasks.vqa.answer import region_attention, stored_regions
from vlbert.training.export import write_model_directory

ANSWERS = ["yes", "no", "red", "2", "circle"]


def padded_inputs():
    """Three examples, the last two with padded text and regions."""
    inputs = random_inputs(batch=3, text=7, regions=5)
    inputs["text_mask"][1, 4:] = False
    inputs["text_mask"][2, 6:] = False
    inputs["region_mask"][1, 3:] = False
    inputs["region_mask"][2, 1:] = False
    return inputs


def layer_from_probs(layer, hidden, probs):
    """An encoder layer's output [B, L, H] with its attention written out from `probs`."""
    attention = layer.attention
    batch, length = hidden.shape[:2]
    v = attention.qkv(hidden).view(batch, length, 3, attention.num_heads, attention.head_dim)[:, :, 2].transpose(1, 2)
    context = torch.matmul(probs, v).transpose(1, 2).reshape(batch, length, -1)
    return layer.ffn(attention.LayerNorm(hidden + attention.out(context)))


@pytest.mark.parametrize("case", ["padded", "per_example", "unpadded"])
def test_attention_probabilities_are_what_the_layers_use(case, monkeypatch):
    torch.manual_seed(0)
    model = VLBertModel(tiny_config()).eval()
    inputs = random_inputs(batch=3, text=7, regions=5) if case == "unpadded" else padded_inputs()
    if case != "unpadded":  # both CPU attention paths of a packed batch
        monkeypatch.setattr(Packing, "attend_per_example", lambda self, width: case == "per_example")
    layer_inputs = []
    model.encoder.layers[-1].register_forward_pre_hook(lambda module, args: layer_inputs.append(args))
    with torch.no_grad():
        plain = model(**inputs)
        output = model(**inputs, output_attentions=True)
    assert plain.attentions is None
    torch.testing.assert_close(output.last_hidden_state, plain.last_hidden_state, rtol=0, atol=0)

    real = torch.cat([inputs["text_mask"], inputs["region_mask"]], dim=1)  # [B, L]
    assert len(output.attentions) == model.config.num_hidden_layers
    probs = output.attentions[-1]
    assert probs.shape == (3, model.config.num_attention_heads, 12, 12)
    sums = probs.sum(-1)  # [B, heads, L]
    torch.testing.assert_close(sums, real[:, None, :].float().expand_as(sums), rtol=0, atol=1e-6)  # 1 real, 0 padded
    assert (probs[~real[:, None, None, :].expand_as(probs)] == 0).all()  # nothing on padded keys

    hidden, _, packing = layer_inputs[-1]
    hidden = hidden if packing is None else packing.unpack(hidden)
    with torch.no_grad():
        rebuilt = layer_from_probs(model.encoder.layers[-1], hidden, probs)
    rebuilt = rebuilt * real[..., None]  # the model's output is zero at padded positions
    torch.testing.assert_close(rebuilt, output.last_hidden_state, rtol=0, atol=1e-5)


def test_box_edges_take_the_box_colour():
    grey = np.full((480, 640, 3), 40, dtype=np.uint8)
    figure, ax = image_figure(640, 480)  # already of display size: one picture pixel per image pixel
    show_image(ax, grey, 640, 480)
    draw_boxes(ax, np.array([[100, 100, 300, 200]]), ["#ff0000"], linewidth=3.0)
    pixels = figure_pixels(figure)
    assert pixels.shape == (480, 640, 3)
    for y, x in [(100, 200), (199, 200), (150, 100), (150, 299)]:  # on each edge
        assert tuple(pixels[y, x]) == (255, 0, 0), (y, x)
    for y, x in [(150, 200), (20, 20), (300, 400)]:  # inside, outside
        assert tuple(pixels[y, x]) == (40, 40, 40), (y, x)


def test_display_size_enlarges_small_images_and_shrinks_large_ones():
    assert display_size(128, 128) == (640, 640)
    assert display_size(300, 100) == (640, 213)
    assert display_size(1000, 700) == (1000, 700)
    assert display_size(4000, 3000) == (1600, 1200)


def test_region_tags_and_names():
    probs = np.full((2, 36), 0.1 / 35, dtype=np.float32)
    probs[0, 1], probs[1, 7] = 0.9, 0.9
    record = RegionRecord("x", np.zeros((2, 4), np.float32), np.array([[0, 0, 10, 10], [5, 5, 20, 20]], np.float32),
                          300, 100, class_probs=probs)
    names = class_names({"backend": "synthetic"})
    assert region_tags(record, names) == ["#0 red circle 0.90", "#1 green square 0.90"]
    assert region_tags(record, None) == ["#0 class 1 0.90", "#1 class 7 0.90"]
    record.class_probs = None
    assert region_tags(record, None) == ["#0", "#1"]
    assert class_names({"backend": "torchvision", "weights": {"source": "file"}}) is None
    assert figure_pixels(draw_record(record, top=1)).shape == (213, 640, 3)  # blank canvas of the stored aspect


def colour_pixels(path, colour) -> int:
    """How many pixels of a picture are (nearly) `colour` ("#rrggbb")."""
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
    target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - target).max(-1) <= 8).sum())


def test_show_features_draws_a_record(tiny_world, tmp_path, capsys):
    image_id = str(tiny_world.image_ids("test")[0])
    features, image = str(tiny_world.features_path), str(tiny_world.image_path(image_id))
    out = tmp_path / "pictures" / "boxes.png"
    assert vlbert(["show-features", features, "--image-id", image_id, "--out", str(out), "--image", image]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    record = FeatureStore(features)[image_id]
    picture = Image.open(out)
    assert picture.size == display_size(record.image_w, record.image_h)
    assert np.asarray(picture.convert("L")).std() > 10  # not blank
    assert colour_pixels(out, PALETTE[0]) > 50  # the first region's outline
    # on a blank canvas, first region only
    blank = tmp_path / "blank.png"
    assert vlbert(["show-features", features, "--image-id", image_id, "--out", str(blank), "--top", "1"]) == 0
    assert Image.open(blank).size == picture.size
    assert colour_pixels(blank, PALETTE[0]) > 50 and colour_pixels(blank, PALETTE[1]) == 0


def test_show_features_errors_are_one_line(tiny_world, tmp_path, capsys):
    image_id = str(tiny_world.image_ids("test")[0])
    features, out = str(tiny_world.features_path), str(tmp_path / "x.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    other = tmp_path / "wide.png"
    Image.new("RGB", (300, 100)).save(other)
    cases = [
        ([str(tmp_path / "missing.h5"), "--image-id", image_id], "does not exist"),
        ([str(broken), "--image-id", image_id], "is not a readable HDF5 file"),
        ([features, "--image-id", "nope"], "image 'nope' has no regions in"),
        ([features, "--image-id", image_id, "--image", str(tmp_path / "none.png")], "does not exist"),
        ([features, "--image-id", image_id, "--image", str(broken)], "cannot read image"),
        ([features, "--image-id", image_id, "--image", str(other)], "is 300x100 but the regions were found in a 128x128 image"),
    ]
    for args, message in cases:
        assert vlbert(["show-features", *args, "--out", out]) == 2, args
        err = capsys.readouterr().err
        assert message in err and err.startswith("vlbert show-features: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "x.png").exists()


@pytest.fixture(scope="module")
def vqa_model(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("vqa") / "model"
    header = read_header(tiny_world.features_path)
    torch.manual_seed(0)
    model = VLBertForVQA(with_answers(tiny_config(region_feature_dim=64), ANSWERS))
    write_model_directory(out, model, load_tokenizer(tiny_world.tokenizer_dir),
                          {k: header[k] for k in ("feature_dim", "num_classes", "provenance")},
                          {"vqa.json": {"max_regions": 10, "max_text_len": 20}})
    return out


def test_region_attention_is_cls_to_regions(tiny_world, vqa_model):
    from vlbert.tasks.vqa.answer import load_vqa_model, question_batch

    model, tokenizer = load_vqa_model(vqa_model), load_tokenizer(vqa_model)
    image_id = str(tiny_world.image_ids("test")[0])
    regions = stored_regions(str(tiny_world.features_path), image_id, None)
    questions = ["is there a red circle?", "how many squares are there?"]
    attention = region_attention(model, tokenizer, questions, regions, 20, 10)
    assert attention.shape == (2, min(10, len(regions[0])))
    batch = question_batch(tokenizer, questions, regions, 20, 10)
    with torch.no_grad():
        probs = model.vlbert(**batch, output_attentions=True).attentions[-1].mean(1)[:, 0]  # [Q, L] from [CLS]
    text = batch["text_mask"].float()
    # region shares plus the share on the question's tokens are all of [CLS]'s attention
    np.testing.assert_allclose(attention.sum(1) + (probs[:, :text.shape[1]] * text).sum(1).numpy(), 1, atol=1e-5)
    assert (attention > 0).all()


def test_answer_save_image(tiny_world, vqa_model, tmp_path, capsys):
    image_id = str(tiny_world.image_ids("test")[0])
    ask = ["answer", "--model", str(vqa_model), "--features", str(tiny_world.features_path), "--image-id", image_id,
           "--question", "is there a red circle?"]
    one = tmp_path / "one.png"
    assert vlbert([*ask, "--save-image", str(one), "--image", str(tiny_world.image_path(image_id)), "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith('{"answers"') and f"wrote {one}" in captured.err
    picture = Image.open(one)
    assert 800 <= picture.size[0] <= 1200 and 400 <= picture.size[1] <= 900, picture.size
    assert np.asarray(picture.convert("L")).std() > 10  # not blank
    assert colour_pixels(one, PALETTE[0]) > 50  # the most attended region's outline
    # no image: a blank canvas of the stored size; one panel per question
    two = tmp_path / "two.png"
    assert vlbert([*ask, "--question", "how many squares are there?", "--save-image", str(two)]) == 0
    assert Image.open(two).size[0] == picture.size[0] and Image.open(two).size[1] > 1.6 * picture.size[1]
    assert colour_pixels(two, PALETTE[0]) > 100


def test_answer_save_image_refusals(tiny_world, vqa_model, tmp_path, capsys):
    image_id = str(tiny_world.image_ids("test")[0])
    ask = ["answer", "--model", str(vqa_model), "--features", str(tiny_world.features_path), "--image-id", image_id,
           "--question", "what?"]
    with pytest.raises(SystemExit):  # an image given with stored regions is only for drawing
        vlbert([*ask, "--image", str(tiny_world.image_path(image_id))])
    assert "only drawn on, with --save-image" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"")
    assert vlbert([*ask, "--image", str(broken), "--save-image", str(tmp_path / "x.png")]) == 1
    assert "cannot read image" in capsys.readouterr().err
    wrong = tmp_path / "wrong.png"
    Image.new("RGB", (200, 100)).save(wrong)
    assert vlbert([*ask, "--image", str(wrong), "--save-image", str(tmp_path / "x.png")]) == 1
    assert "is 200x100 but the regions were found in a 128x128 image" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
