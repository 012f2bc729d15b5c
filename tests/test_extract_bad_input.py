"""Odd but decodable images are extracted correctly; undecodable files are listed and skipped."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlbert.featstore import FeatureStore
from vlbert.features.extract import main
from vlbert.features.images import ImageFolderDataset, decode_image, list_images, ImageListError

TINY = Path(__file__).resolve().parents[1] / "configs" / "extract" / "tiny.yaml"
MIN, MAX = 64, 96


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue: shows where a rotation went."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2:] = (0, 0, 255)
    return Image.fromarray(pixels)


def jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **kwargs)
    return buffer.getvalue()


def make_odd_images(folder: Path) -> dict[str, tuple[int, int]]:
    """Decodable oddities; returns id -> true (width, height)."""
    folder.mkdir(parents=True, exist_ok=True)
    halves(40, 30).convert("L").save(folder / "gray.png")
    rgba = np.zeros((30, 40, 4), np.uint8)
    rgba[:, :20] = (255, 0, 0, 255)  # right half fully transparent
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    palette = halves(40, 30).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    palette.save(folder / "palette.png", transparency=0)
    halves(40, 30).convert("P").save(folder / "palette_gif.gif")
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    gray16 = np.full((30, 40), 65535, np.uint16)
    gray16[:, :20] = 32896
    Image.fromarray(gray16).save(folder / "gray16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    (folder / "rotated.jpg").write_bytes(jpeg_bytes(halves(40, 20), exif=exif.tobytes()))
    Image.new("RGB", (1, 1), (10, 200, 30)).save(folder / "one_pixel.png")
    (folder / "large.jpg").write_bytes(jpeg_bytes(halves(4000, 3000)))
    buffer = io.BytesIO()
    halves(40, 30).save(buffer, "PNG")
    (folder / "png_named_jpg.jpg").write_bytes(buffer.getvalue())  # wrong extension, decodable
    return {"gray": (40, 30), "rgba": (40, 30), "palette": (40, 30), "palette_gif": (40, 30), "cmyk": (40, 30), "gray16": (40, 30),
            "rotated": (20, 40), "one_pixel": (1, 1), "large": (4000, 3000), "png_named_jpg": (40, 30)}


def make_broken_files(folder: Path) -> set[str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero_bytes.jpg").write_bytes(b"")
    whole = jpeg_bytes(halves(64, 48))
    (folder / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (folder / "text.png").write_text("this is not an image\n")
    (folder / "garbage.jpeg").write_bytes(np.random.default_rng(0).integers(0, 255, 3000, dtype=np.uint8).tobytes())
    (folder / "notes.txt").write_text("ignored: not an image extension")
    return {"zero_bytes", "truncated", "text", "garbage"}


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory) -> tuple[Path, dict, set]:
    folder = tmp_path_factory.mktemp("odd")
    sizes = make_odd_images(folder)
    broken = make_broken_files(folder)
    return folder, sizes, broken


def decode(folder: Path, name: str):
    return decode_image(folder / name, MIN, MAX)


def test_listing_ignores_other_files_and_refuses_clashing_ids(odd_folder, tmp_path):
    folder, sizes, broken = odd_folder
    assert set(list_images(folder)) == set(sizes) | broken  # notes.txt is not an image extension
    clash = tmp_path / "clash"
    clash.mkdir()
    (clash / "a.jpg").write_bytes(b"x")
    (clash / "a.png").write_bytes(b"x")
    with pytest.raises(ImageListError, match="both have image id 'a'"):
        list_images(clash)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(ImageListError, match="no images"):
        list_images(empty)


def test_grayscale_palette_and_cmyk_become_rgb(odd_folder):
    folder = odd_folder[0]
    for name in ("gray.png", "palette_gif.gif", "cmyk.jpg", "png_named_jpg.jpg"):
        pixels, width, height = decode(folder, name)
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3, name
        assert (width, height) == (40, 30)
    red = decode(folder, "cmyk.jpg")[0][15, 20]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_transparency_is_composited_on_white(odd_folder):
    pixels = decode(odd_folder[0], "rgba.png")[0]
    assert tuple(pixels[15, 5]) == (255, 0, 0)
    assert tuple(pixels[15, -3]) == (255, 255, 255)
    palette = decode(odd_folder[0], "palette.png")[0]
    assert palette.shape[2] == 3


def test_sixteen_bit_is_rescaled_not_clipped(odd_folder):
    pixels = decode(odd_folder[0], "gray16.png")[0]
    assert pixels[15, -3, 0] == 255 and abs(int(pixels[15, 3, 0]) - 128) <= 1


def test_exif_orientation_is_applied(odd_folder):
    pixels, width, height = decode(odd_folder[0], "rotated.jpg")
    assert (width, height) == (20, 40)  # stored 40x20, displayed rotated
    top, bottom = pixels[2, pixels.shape[1] // 2], pixels[-3, pixels.shape[1] // 2]
    assert top[0] > 200 and top[2] < 60  # the red left half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_tiny_and_large_images(odd_folder):
    pixels, width, height = decode(odd_folder[0], "one_pixel.png")
    assert pixels.shape == (1, 1, 3) and (width, height) == (1, 1)
    pixels, width, height = decode(odd_folder[0], "large.jpg")
    assert (width, height) == (4000, 3000)  # the true size, for boxes in image pixels
    assert max(pixels.shape[:2]) <= MAX  # shrunk in the worker, not shipped at full size


def test_broken_files_become_reasons_not_exceptions(odd_folder):
    folder, _, broken = odd_folder
    items = [(image_id, path) for image_id, path in list_images(folder).items() if image_id in broken]
    dataset = ImageFolderDataset(items, MIN, MAX)
    reasons = {dataset[i].image_id: dataset[i].error for i in range(len(dataset))}
    assert set(reasons) == broken and all(reasons.values())
    assert "0 bytes" in reasons["zero_bytes"]
    assert "truncated" in reasons["truncated"].lower() or "broken" in reasons["truncated"].lower()
    assert "identify" in reasons["text"]


def test_pixel_limit(odd_folder):
    with pytest.raises(ValueError, match="max_image_pixels"):
        decode_image(odd_folder[0] / "large.jpg", MIN, MAX, max_pixels=1_000_000)


def test_extract_folder_with_every_oddity(odd_folder, tmp_path):
    folder, sizes, broken = odd_folder
    clean = tmp_path / "imgs"
    clean.mkdir()
    for path in folder.iterdir():
        (clean / path.name).write_bytes(path.read_bytes())
    output = tmp_path / "feats.h5"
    code = main(["--images", str(clean), "--output", str(output), "--config", str(TINY), "--num-workers", "1",
                 "--no-progress"])
    assert code == 0  # failures alone do not fail the run
    store = FeatureStore(output)
    assert set(store.ids) == set(sizes)
    for image_id, (width, height) in sizes.items():
        record = store[image_id]
        assert (record.image_w, record.image_h) == (width, height), image_id
        assert record.num_boxes >= 3 and np.isfinite(record.features).all()
        assert record.boxes[:, 2].max() <= width + 1e-3 and record.boxes[:, 3].max() <= height + 1e-3
    failures = json.loads((tmp_path / "feats.failures.json").read_text())
    assert failures["count"] == len(broken)
    assert {f["image_id"] for f in failures["failures"]} == broken
    assert all(f["reason"] and f["path"].startswith(str(clean)) for f in failures["failures"])
    assert main(["--images", str(clean), "--output", str(tmp_path / "strict.h5"), "--config", str(TINY),
                 "--no-progress", "--strict"]) == 1
