"""A kill -9 at any moment loses at most the images in flight; a rerun completes the same file;
a second extraction into an output another `vlbert extract` is writing is refused."""
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
from vlbert.features.extract import ExtractError, extract

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


def start_extract(images: Path, output: Path) -> subprocess.Popen:
    """`vlbert extract` in another process, a part file every 4 images."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, "-m", "vlbert.cli", "extract", "--images", str(images), "--output", str(output),
         "--config", str(TINY), "--flush-every", "4", "--no-progress"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def wait_for_parts(process: subprocess.Popen, parts: Path, count: int) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if len(list(parts.glob("part-*.h5"))) >= count:
            break
        time.sleep(0.01)


@pytest.mark.slow
def test_a_second_extraction_into_the_same_output_is_refused(images, tmp_path):
    """While another process's `vlbert extract` writes the output (paused mid-run, so it surely
    still does), an extraction into it is refused; the other run then completes undisturbed,
    and once it has ended the output is open to a rerun."""
    config = load_config(TINY, {"flush_every": 4})
    output = tmp_path / "f.h5"
    parts = tmp_path / "f.h5.parts"
    process = start_extract(images, output)
    try:
        wait_for_parts(process, parts, 1)  # it holds the output from before its first part
        os.kill(process.pid, signal.SIGSTOP)
        assert process.poll() is None, "the run ended before it could be paused; make it longer"
        before = {p.name: p.read_bytes() for p in parts.iterdir()}
        with pytest.raises(ExtractError, match="another `vlbert extract`"):
            extract(images, output, config, progress=False)
        assert not output.exists() and {p.name: p.read_bytes() for p in parts.iterdir()} == before  # untouched
        os.kill(process.pid, signal.SIGCONT)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)  # also ends a stopped process
            process.wait()
    store = FeatureStore(output)
    assert sorted(store.ids) == sorted(p.stem for p in images.glob("*.png"))
    store.close()
    assert not parts.exists()
    result = extract(images, output, config, progress=False)
    assert result.extracted == 0 and result.already_done == COUNT
    assert not parts.exists()


@pytest.mark.slow
def test_kill_9_then_rerun_equals_an_uninterrupted_run(images, tmp_path):
    config = load_config(TINY, {"flush_every": 4})
    reference = tmp_path / "reference.h5"
    extract(images, reference, config, progress=False)

    output = tmp_path / "killed.h5"
    parts = tmp_path / "killed.h5.parts"
    process = start_extract(images, output)
    wait_for_parts(process, parts, 2)
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
