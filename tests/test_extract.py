"""End-to-end extraction with the torchvision backend (random weights, tiny sizes, CPU)."""
import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from vlbert.featstore import FeatureStore, read_header
from vlbert.features import extract as extract_module
from vlbert.features.config import ConfigError, ExtractConfig, load_config
from vlbert.features.extract import ExtractError, extract, load_given_boxes, main
from vlbert.features.provenance import ProvenanceMismatch
from vlbert.tasks.demo import extract_world

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "extract" / "tiny.yaml"


@pytest.fixture(autouse=True)
def one_thread():
    """CPU tests share a small machine: one intra-op thread avoids oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides) -> ExtractConfig:
    return load_config(TINY, overrides)


def scene(seed: int, width: int = 80, height: int = 60) -> np.ndarray:
    """A synthetic scene: coloured rectangles on a gradient."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.uint8)
    image[:] = np.linspace(0, 200, width, dtype=np.uint8)[None, :, None]
    for _ in range(3):
        x, y = rng.integers(0, width - 10), rng.integers(0, height - 10)
        image[y:y + rng.integers(5, 20), x:x + rng.integers(5, 30)] = rng.integers(0, 255, 3)
    return image


def write_scenes(folder: Path, count: int, start: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + count):
        Image.fromarray(scene(i)).save(folder / f"{i}.png")
    return [str(i) for i in range(start, start + count)]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real photographs shipped with scikit-image, plus synthetic scenes in a subfolder."""
    data = pytest.importorskip("skimage.data")
    folder = tmp_path_factory.mktemp("photos")
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.jpg", quality=90)
    Image.fromarray(data.camera()).save(folder / "camera.png")  # grayscale
    write_scenes(folder / "synthetic", 2)
    return folder


def test_unknown_config_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("weights: none\nmin_boxs: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'min_boxs' \(did you mean min_boxes\?\)\. "
                                          r"Known settings: backend, model, .*max_image_pixels"):
        load_config(bad)
    with pytest.raises(ConfigError, match="command-line flags: unknown key 'min_boxs'"):
        load_config(TINY, {"min_boxs": 3})
    with pytest.raises(ConfigError, match="dtype: 'int8' is not one of"):
        load_config(TINY, {"dtype": "int8"})
    with pytest.raises(ConfigError, match="bad value for num_boxes: expected int or null, got 'many'"):
        load_config(TINY, {"num_boxes": "many"})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_load_config_types_and_normalises_values(tmp_path):
    path = tmp_path / "d2.yaml"
    path.write_text("detectron2_opts: [MODEL.RPN.NMS_THRESH, 0.7, MODEL.MASK_ON, false]\nweights: null\n")
    config = load_config(path, {"score_threshold": 0, "weights": tmp_path / "w.pth"})
    assert config.detectron2_opts == ["MODEL.RPN.NMS_THRESH", "0.7", "MODEL.MASK_ON", "False"]  # as detectron2 wants
    assert config.score_threshold == 0.0 and config.weights == str(tmp_path / "w.pth")
    assert load_config(path).weights == "none"


def run_cli(capsys, *args: str, through_vlbert: bool = False) -> tuple[int, str, str]:
    from vlbert import cli

    code = cli.main(["extract", *args]) if through_vlbert else main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vlbert extract: error: ")
    return lines[0]


@pytest.mark.parametrize("through_vlbert", [False, True])
def test_print_config_is_the_file_with_the_overrides(capsys, tmp_path, through_vlbert):
    code, out, err = run_cli(capsys, "--config", str(TINY), "--images", "imgs", "--output", "f.h5",
                             "--num_boxes", "7", "--dtype", "float32", "--print_config", through_vlbert=through_vlbert)
    assert code == 0 and err == ""
    printed = yaml.safe_load(out)
    expected = {**ExtractConfig().to_dict(), **yaml.safe_load(TINY.read_text()), "num_boxes": 7, "dtype": "float32"}
    assert {key: printed[key] for key in expected} == expected
    assert printed["images"] == "imgs" and printed["output"] == "f.h5" and printed["progress"] is True
    # what is printed is a config file the command takes back as it is
    saved = tmp_path / "resolved.yaml"
    saved.write_text(out)
    assert run_cli(capsys, "--config", str(saved), "--print_config")[1] == out


def test_print_config_shows_only_valid_settings(capsys):
    code, out, err = run_cli(capsys, "--config", str(TINY), "--images", "i", "--output", "o.h5", "--min_size", "500",
                             "--print_config")
    assert code == 2 and out == ""
    assert "min_size (500) must not exceed max_size (96)" in one_line_error(err)


@pytest.mark.parametrize("through_vlbert", [False, True])
def test_unknown_keys_are_refused_in_one_line(capsys, tmp_path, through_vlbert):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text() + "min_boxs: 3\n")
    code, out, err = run_cli(capsys, "--config", str(bad), "--images", "i", "--output", "o.h5",
                             through_vlbert=through_vlbert)
    line = one_line_error(err)
    assert code == 2 and out == ""
    assert f"--config {bad}: unknown key 'min_boxs' (did you mean min_boxes?)" in line and "Known settings" in line
    code, out, err = run_cli(capsys, "--config", str(TINY), "--images", "i", "--output", "o.h5", "--min_boxs", "3",
                             through_vlbert=through_vlbert)
    assert code == 2 and "unknown key --min_boxs (did you mean --min_boxes?)" in one_line_error(err)


@pytest.mark.parametrize("args, message", [
    (["--dtype", "int8"], "dtype: 'int8' is not one of ('float16', 'float32')"),
    (["--min_size", "500"], "min_size (500) must not exceed max_size (96)"),
    (["--backend", "detectron2"], "backend: detectron2 needs detectron2_config:"),
    (["--num_boxes", "many"], "bad value for num_boxes: expected int or null, got 'many'"),
    (["--class_probs", "maybe"], "bad value for class_probs: expected bool, got 'maybe'"),
    (["--num_shards", "2", "--shard_index", "2"], "--shard_index must be in [0, 2)"),
])
def test_bad_values_name_the_key(capsys, tmp_path, args, message):
    write_scenes(tmp_path / "imgs", 1)
    code, out, err = run_cli(capsys, "--config", str(TINY), "--images", str(tmp_path / "imgs"),
                             "--output", str(tmp_path / "f.h5"), *args)
    assert code == 2 and message in one_line_error(err)
    assert not (tmp_path / "f.h5").exists()


def test_help_documents_every_key(capsys):
    code, out, err = run_cli(capsys, "--help", through_vlbert=True)
    assert code == 0
    text = " ".join(out.split())
    assert "--score_threshold SCORE_THRESHOLD Adaptive selection: keep regions whose best class score is at least " \
           "this. (type: float, default: 0.2)" in text
    for field in dataclasses.fields(ExtractConfig):
        assert f"--{field.name} " in text
    for flag in ("--config", "--print_config", "--images", "--output", "--boxes", "--num_shards", "--shard_index",
                 "--strict", "--progress"):
        assert flag in text


def test_old_dash_flags_still_work(capsys):
    old = run_cli(capsys, "--config", str(TINY), "--images", "i", "--output", "o.h5", "--num-shards", "4",
                  "--shard-index", "1", "--no-progress", "--num-boxes", "7", "--min-size=32",
                  "--detectron2-opts", "MODEL.X", "1", "--flush-every", "4", "--print-config")
    new = run_cli(capsys, "--config", str(TINY), "--images", "i", "--output", "o.h5", "--num_shards", "4",
                  "--shard_index", "1", "--progress", "false", "--num_boxes", "7", "--min_size", "32",
                  "--detectron2_opts", "[MODEL.X, 1]", "--flush_every", "4", "--print_config")
    assert old == new and old[0] == 0
    printed = yaml.safe_load(old[1])
    assert (printed["num_shards"], printed["shard_index"], printed["progress"]) == (4, 1, False)
    assert (printed["num_boxes"], printed["min_size"], printed["detectron2_opts"]) == (7, 32, ["MODEL.X", "1"])


def test_extract_real_photos_round_trip(photos, tmp_path):
    output = tmp_path / "feats.h5"
    result = extract(photos, output, tiny(), progress=False)
    ids = {"astronaut", "chelsea", "coffee", "rocket", "camera", "synthetic/0", "synthetic/1"}
    assert (result.extracted, result.failed, result.total) == (7, 0, 7)
    assert not (tmp_path / "feats.h5.parts").exists() and not (tmp_path / "feats.h5.tmp").exists()
    store = FeatureStore(output)
    assert set(store.ids) == ids
    assert (store.feature_dim, store.num_classes) == (1024, 91)
    prov = store.provenance
    assert prov["backend"] == "torchvision" and prov["weights"]["source"] == "none"
    assert prov["weights"]["random"] is True and "RANDOM" in prov["weights"]["warning"]
    assert prov["settings"]["min_boxes"] == 3 and prov["regions"]["source"] == "detected"
    astronaut = store["astronaut"]
    assert (astronaut.image_w, astronaut.image_h) == (512, 512)
    assert (store["chelsea"].image_w, store["chelsea"].image_h) == (451, 300)
    for image_id in ids:
        record = store[image_id]
        assert 3 <= record.num_boxes <= 12
        assert record.features.shape == (record.num_boxes, 1024) and np.isfinite(record.features).all()
        assert (record.boxes[:, 0] >= 0).all() and (record.boxes[:, 2] <= record.image_w + 1e-3).all()
        assert (record.boxes[:, 1] >= 0).all() and (record.boxes[:, 3] <= record.image_h + 1e-3).all()
        assert (record.boxes[:, 2] >= record.boxes[:, 0]).all()
        np.testing.assert_allclose(record.class_probs.sum(-1), 1.0, atol=0.02)
        assert ((record.labels >= 1) & (record.labels < 91)).all()  # top foreground class
    with h5py.File(output) as f:
        assert f["images"]["astronaut"]["features"].dtype == np.float16
    store.close()


def test_fixed_k_fp32_and_no_class_probs(tmp_path):
    write_scenes(tmp_path / "imgs", 3)
    output = tmp_path / "f32.h5"
    extract(tmp_path / "imgs", output, tiny(num_boxes=5, dtype="float32", class_probs=False), progress=False)
    with h5py.File(output) as f:
        for key in f["images"]:
            group = f["images"][key]
            assert group["features"].shape == (5, 1024) and group["features"].dtype == np.float32
            assert "class_probs" not in group and group["labels"].shape == (5,)
    assert read_header(output)["dtype"] == "float32"


def test_given_boxes_pool_the_detected_regions(tmp_path):
    """Pooling on the detector's own boxes reproduces its features: both paths use one seam."""
    write_scenes(tmp_path / "imgs", 2)
    config = tiny(dtype="float32")
    extract(tmp_path / "imgs", tmp_path / "detected.h5", config, progress=False)
    detected = FeatureStore(tmp_path / "detected.h5")
    boxes = {i: detected[i].boxes.tolist() for i in detected.ids}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    result = extract(tmp_path / "imgs", tmp_path / "given.h5", config, boxes_json=tmp_path / "boxes.json",
                     progress=False)
    assert result.extracted == 2
    given = FeatureStore(tmp_path / "given.h5")
    assert given.provenance["regions"]["source"] == "given"
    for image_id in boxes:
        np.testing.assert_allclose(given[image_id].boxes, detected[image_id].boxes, atol=1e-4)
        np.testing.assert_allclose(given[image_id].features, detected[image_id].features, atol=2e-3, rtol=1e-3)
        np.testing.assert_allclose(given[image_id].class_probs, detected[image_id].class_probs, atol=2e-3)


def test_given_boxes_subset_clipping_and_errors(tmp_path):
    write_scenes(tmp_path / "imgs", 3)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({"0": [[0, 0, 40, 30], [10, 5, 500, 500]], "1": [], "2": [[100, 100, 120, 120]]}))
    result = extract(tmp_path / "imgs", tmp_path / "g.h5", tiny(), boxes_json=boxes, progress=False)
    assert result.extracted == 1 and result.total == 3
    reasons = {f.image_id: f.reason for f in result.failures}
    assert "no boxes" in reasons["1"] and "outside" in reasons["2"]
    record = FeatureStore(tmp_path / "g.h5")["0"]
    np.testing.assert_allclose(record.boxes, [[0, 0, 40, 30], [10, 5, 80, 60]])  # clipped to 80x60

    boxes.write_text(json.dumps({"0": [[0, 0, 40]]}))
    with pytest.raises(ExtractError, match=r"\[x1, y1, x2, y2\]"):
        load_given_boxes(boxes)
    boxes.write_text(json.dumps({"0": [[30, 0, 10, 10]]}))
    with pytest.raises(ExtractError, match="x1 < x2"):
        load_given_boxes(boxes)
    boxes.write_text(json.dumps({"0": [[0, 0, 10, 10]], "nope": [[0, 0, 5, 5]]}))
    with pytest.raises(ExtractError, match="nope"):
        extract(tmp_path / "imgs", tmp_path / "g2.h5", tiny(), boxes_json=boxes, progress=False)


def test_rerun_skips_done_images_and_adds_new_ones(tmp_path):
    images = tmp_path / "imgs"
    write_scenes(images, 3)
    output = tmp_path / "f.h5"
    first = extract(images, output, tiny(), progress=False)
    before = {i: FeatureStore(output)[i].features for i in ("0", "1", "2")}
    again = extract(images, output, tiny(), progress=False)
    assert (again.extracted, again.already_done) == (0, 3)
    write_scenes(images, 2, start=3)
    more = extract(images, output, tiny(), progress=False)
    assert (first.extracted, more.extracted, more.already_done) == (3, 2, 3)
    store = FeatureStore(output)
    assert sorted(store.ids) == ["0", "1", "2", "3", "4"]
    for image_id, features in before.items():
        np.testing.assert_array_equal(store[image_id].features, features)


def test_rerun_with_other_settings_is_refused(tmp_path):
    write_scenes(tmp_path / "imgs", 1)
    output = tmp_path / "f.h5"
    extract(tmp_path / "imgs", output, tiny(), progress=False)
    with pytest.raises(ProvenanceMismatch, match="max_boxes"):
        extract(tmp_path / "imgs", output, tiny(max_boxes=20), progress=False)
    # speed-only settings may change between runs
    extract(tmp_path / "imgs", output, tiny(batch_size=1, num_workers=1), progress=False)


def test_a_foreign_output_file_is_never_touched(tmp_path):
    write_scenes(tmp_path / "imgs", 1)
    mine = tmp_path / "notes.h5"
    mine.write_bytes(b"my own data")
    assert main(["--images", str(tmp_path / "imgs"), "--output", str(mine), "--config", str(TINY),
                 "--no-progress"]) == 2
    assert mine.read_bytes() == b"my own data"


def test_exit_status(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"")
    (bad / "b.png").write_text("not an image")
    args = ["--config", str(TINY), "--progress", "false"]
    assert main(["--images", str(bad), "--output", str(tmp_path / "bad.h5"), *args]) == 1
    failures = json.loads((tmp_path / "bad.failures.json").read_text())
    assert {f["image_id"] for f in failures["failures"]} == {"a", "b"}
    write_scenes(bad, 1)
    assert main(["--images", str(bad), "--output", str(tmp_path / "ok.h5"), *args]) == 0
    assert main(["--images", str(bad), "--output", str(tmp_path / "strict.h5"), *args, "--strict"]) == 1
    assert main(["--images", str(tmp_path / "missing"), "--output", str(tmp_path / "x.h5"), *args]) == 2


def test_local_weights_file_and_published_weights_identity(tmp_path):
    from vlbert.features.backends import model_identity
    from vlbert.features.backends.torchvision import build_model

    identity = model_identity(ExtractConfig())  # published weights: named, never downloaded here
    assert identity["weights"]["source"] == "torchvision"
    assert identity["weights"]["url"].startswith("https://download.pytorch.org/models/fasterrcnn_resnet50_fpn")
    assert "v2" in model_identity(ExtractConfig(model="fasterrcnn_resnet50_fpn_v2"))["weights"]["name"].lower()

    weights = tmp_path / "detector.pth"
    torch.save(build_model(tiny()).state_dict(), weights)
    write_scenes(tmp_path / "imgs", 2)
    extract(tmp_path / "imgs", tmp_path / "random.h5", tiny(), progress=False)
    extract(tmp_path / "imgs", tmp_path / "file.h5", tiny(weights=str(weights)), progress=False)
    from_file = FeatureStore(tmp_path / "file.h5")
    assert from_file.provenance["weights"]["source"] == "file" and len(from_file.provenance["weights"]["sha256"]) == 64
    np.testing.assert_array_equal(from_file["1"].features, FeatureStore(tmp_path / "random.h5")["1"].features)
    with pytest.raises(ConfigError, match="neither a weights file"):
        model_identity(tiny(weights=str(tmp_path / "missing.pth")))


def test_sharded_output_names():
    assert extract_module.shard_output_path("f.h5", 1, 0) == Path("f.h5")
    assert extract_module.shard_output_path("f.h5", 4, 2) == Path("f.shard00002-of-00004.h5")
    assert extract_module.shard_output_path("out/f-{shard}.h5", 4, 3) == Path("out/f-3.h5")
    shards = [extract_module.shard_of(str(i), 4) for i in range(400)]
    assert set(shards) == {0, 1, 2, 3} and min(shards.count(s) for s in range(4)) > 60


def test_every_shipped_config_loads():
    names = sorted(p.name for p in (REPO / "configs" / "extract").glob("*.yaml"))
    assert {"torchvision.yaml", "torchvision_v2.yaml", "detectron2_vg.yaml", "tiny.yaml", "clip_patches.yaml",
            "resnet_grid.yaml"} <= set(names)
    for name in names:
        config = load_config(REPO / "configs" / "extract" / name)
        assert config.selection.score_threshold > 0
    assert load_config(REPO / "configs" / "extract" / "torchvision.yaml").weights == "default"
    assert load_config(REPO / "configs" / "extract" / "detectron2_vg.yaml").backend == "detectron2"
    patches = load_config(REPO / "configs" / "extract" / "clip_patches.yaml")
    assert (patches.backend, patches.layer, patches.cls_token) == ("patches", -2, False)
    grid = load_config(REPO / "configs" / "extract" / "resnet_grid.yaml")
    assert (grid.backend, grid.model, grid.grid_size) == ("grid", "resnet50", 7)


def test_synthetic_world_without_weights_uses_ground_truth_boxes(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached weights here
    assert torch.hub.get_dir() == str(tmp_path / "torch" / "hub")
    world = tmp_path / "world"
    (world / "images").mkdir(parents=True)
    boxes = {}
    for i in range(3):
        Image.fromarray(scene(i, 64, 48)).save(world / "images" / f"{i}.png")
        boxes[str(i)] = [[2, 2, 30, 20], [10, 12, 60, 44]]
    (world / "boxes.json").write_text(json.dumps(boxes))
    result = extract_world(world, tmp_path / "world.h5", device="cpu", overrides={"min_size": 64, "max_size": 96})
    assert result.extracted == 3
    store = FeatureStore(tmp_path / "world.h5")
    assert store.provenance["regions"]["source"] == "given" and store.provenance["weights"]["random"]
    np.testing.assert_array_equal(store["2"].boxes, boxes["2"])




def test_scores_are_the_top_class_probability(tmp_path):
    write_scenes(tmp_path / "imgs", 2)
    store = FeatureStore(extract(tmp_path / "imgs", tmp_path / "f.h5", tiny(dtype="float32"), progress=False).output)
    for image_id in store.ids:
        record = store[image_id]
        assert record.scores.shape == (record.num_boxes,) and record.attributes is None
        np.testing.assert_allclose(record.scores, record.class_probs[np.arange(record.num_boxes), record.labels],
                                   atol=1e-3)  # class_probs are stored in float16


def test_coco_class_names_from_the_published_weights(tmp_path, monkeypatch):
    from vlbert.features.backends import torchvision as backend

    names = backend.class_names(ExtractConfig())  # from the weights' meta: nothing is downloaded
    assert len(names) == len(set(names)) == 91 and names[:2] == ["__background__", "person"] and names[12] == "N/A 12"
    assert backend.class_names(tiny()) is None  # random weights: the ids name nothing
    monkeypatch.setattr(backend, "class_names", lambda config: names)  # as published weights would
    write_scenes(tmp_path / "imgs", 3)
    store = FeatureStore(extract(tmp_path / "imgs", tmp_path / "f.h5", tiny(flush_every=1, batch_size=1),
                                 progress=False).output)
    assert store.class_names == names  # through the part files and their merge


def test_an_image_without_regions_is_a_failure(tmp_path, monkeypatch, capsys):
    from vlbert.features.backends.torchvision import TorchvisionBackend

    detect = TorchvisionBackend.detect

    def none_for_image_1(self, images):
        regions = detect(self, images)
        for image, region in zip(images, regions):
            if image.image_id == "1":
                region.features, region.boxes = region.features[:0], region.boxes[:0]
        return regions

    monkeypatch.setattr(TorchvisionBackend, "detect", none_for_image_1)
    write_scenes(tmp_path / "imgs", 3)
    result = extract(tmp_path / "imgs", tmp_path / "f.h5", tiny(), progress=False)
    assert (result.extracted, [f.image_id for f in result.failures]) == (2, ["1"])
    assert "no regions" in result.failures[0].reason
    assert sorted(FeatureStore(tmp_path / "f.h5").ids) == ["0", "2"]
    args = ["--config", str(TINY), "--images", str(tmp_path / "imgs"), "--progress", "false"]
    assert main([*args, "--output", str(tmp_path / "strict.h5"), "--strict"]) == 1
    assert "failures under --strict" in capsys.readouterr().err
