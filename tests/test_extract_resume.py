"""A kill -9 at any moment loses at most the images in flight; a rerun completes the same file."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from vlbert.featstore import FeatureStore
from vlbert.features.config import load_config
from vlbert.features.extract import extract

TINY = Path(__file__).resolve().parents[1] / "configs" / "extract" / "tiny.yaml"
COUNT = 30


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(COUNT):
        pixels = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
    return folder


def read_all(path: Path) -> dict[str, tuple]:
    store = FeatureStore(path)
    out = {i: (store[i].features, store[i].boxes, store[i].class_probs, store[i].labels) for i in store.ids}
    with h5py.File(path) as f:
        assert len(f["images"]) == len(out)  # one group per image: nothing twice
    store.close()
    return out


def assert_same_content(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for image_id in a:
        for left, right in zip(a[image_id], b[image_id]):
            np.testing.assert_array_equal(left, right, err_msg=image_id)


def test_kill_9_then_rerun_equals_an_uninterrupted_run(images, tmp_path):
    config = load_config(TINY, {"flush_every": 4})
    reference = tmp_path / "reference.h5"
    extract(images, reference, config, progress=False)

    output = tmp_path / "killed.h5"
    parts = tmp_path / "killed.h5.parts"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        [sys.executable, "-m", "vlbert.cli", "extract", "--images", str(images), "--output", str(output),
         "--config", str(TINY), "--flush-every", "4", "--no-progress"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if len(list(parts.glob("part-*.h5"))) >= 2:
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed; make it longer"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL

    assert not output.exists()  # the user-visible file appears only complete
    finished = list(parts.glob("part-*.h5"))
    assert finished
    for part in finished:  # every finished part opens and is complete
        with h5py.File(part) as f:
            assert f.attrs["num_images"] == len(f["images"]) > 0

    result = extract(images, output, config, progress=False)
    assert result.already_done >= 8 and result.extracted + result.already_done == COUNT
    assert not parts.exists()
    assert_same_content(read_all(output), read_all(reference))


def test_leftovers_of_a_crash_during_the_final_merge_are_recovered(images, tmp_path):
    config = load_config(TINY, {"flush_every": 4})
    output = tmp_path / "f.h5"
    few = tmp_path / "few"
    few.mkdir()
    for name in sorted(os.listdir(images))[:6]:
        (few / name).write_bytes((images / name).read_bytes())
    reference = read_all(Path(extract(few, tmp_path / "ref.h5", config, progress=False).output))
    extract(few, output, config, progress=False)
    parts = tmp_path / "f.h5.parts"
    parts.mkdir()
    # crash between the final rename and the removal of parts: the records are in both places
    (parts / "part-old-000000.h5").write_bytes((tmp_path / "ref.h5").read_bytes())
    (parts / "part-old-000001.h5.tmp").write_bytes(b"half a part")  # died while writing a part
    (tmp_path / "f.h5.tmp").write_bytes(b"half a merge")  # died while merging
    result = extract(few, output, config, progress=False)
    assert result.extracted == 0 and result.already_done == 6
    assert_same_content(read_all(output), reference)
    assert not parts.exists() and not (tmp_path / "f.h5.tmp").exists()
