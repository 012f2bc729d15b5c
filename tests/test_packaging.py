"""Packaging: the wheel ships configs/ (as vlbert.configs), features/, tasks/ and LICENSE; a wheel
installed outside the repository finds its own configs; `python -m vlbert` and `--version`."""
from __future__ import annotations

import configparser
import importlib.metadata
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import vlbert
from vlbert.cli import main as vlbert_main
from vlbert.resources import config_path, configs_dir, shipped_configs
from vlbert.resources import main as configs_main

REPO = Path(__file__).resolve().parents[1]
REPO_CONFIGS = sorted(p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml"))


def package_dirs() -> dict[str, str]:
    """setup.cfg's package_dir: package -> folder in the repository."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    pairs = (line.split("=") for line in cfg["options"]["package_dir"].strip().splitlines())
    return {package.strip(): folder.strip() for package, folder in pairs}


def quiet_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


def run(args: list, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=quiet_env(**env), capture_output=True, text=True)
    assert result.returncode == 0, f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


# --- fast: the editable install / checkout ------------------------------------------------------------


def test_config_path_finds_every_shipped_config():
    assert REPO_CONFIGS and shipped_configs() == REPO_CONFIGS
    for name in REPO_CONFIGS:
        path = config_path(name)
        assert path.is_file() and path.read_bytes() == (REPO / "configs" / name).read_bytes(), name


@pytest.mark.parametrize("name", ["pretrain/tinyy.yaml", "configs/pretrain/tiny.yaml", "../setup.cfg", "pretrain"])
def test_config_path_wrong_name_lists_the_shipped_ones(name):
    with pytest.raises(FileNotFoundError) as error:
        config_path(name)
    message = str(error.value)
    assert "\n" not in message and repr(name) in message and "pretrain/tiny.yaml" in message


def test_version(capsys, monkeypatch):
    assert vlbert_main(["--version"]) == 0
    assert capsys.readouterr().out == f"vlbert {vlbert.__version__}\n"
    assert importlib.metadata.version("vlbert") == vlbert.__version__  # setup.cfg: version = attr: vlbert.__version__
    # python -m vlbert is the same command (in a subprocess in the wheel test below)
    monkeypatch.setattr(sys, "argv", ["vlbert", "--version"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("vlbert", run_name="__main__")
    assert exit_.value.code == 0 and capsys.readouterr().out == f"vlbert {vlbert.__version__}\n"


def test_configs_command(capsys):
    assert vlbert_main(["configs"]) == 0
    first, *names = capsys.readouterr().out.splitlines()
    assert Path(first) == configs_dir() and [n.strip() for n in names] == REPO_CONFIGS
    assert configs_main(["vqa/tiny.yaml"]) == 0
    assert Path(capsys.readouterr().out.strip()) == config_path("vqa/tiny.yaml")
    with pytest.raises(SystemExit) as exit_:
        configs_main(["vqa/nope.yaml"])
    assert exit_.value.code == 2 and "vqa/tiny.yaml" in capsys.readouterr().err


# --- slow: a wheel built from the repository ----------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel` builds from the repository (no network, no build isolation). It builds
    from a copy of the files setuptools reads, so the checkout gets no build/ or egg-info of it."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    folders = {folder.split("/")[0] for folder in package_dirs().values()}
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    for folder in folders:
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "-w", root / "dist", src], cwd=root)
    (built,) = (root / "dist").glob("vlbert-*.whl")
    return built


@pytest.mark.slow
def test_wheel_contents(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = f"vlbert-{vlbert.__version__}.dist-info"
        license_ = next(n for n in names if re.fullmatch(rf"{re.escape(dist_info)}/(licenses/)?LICENSE", n))
        assert archive.read(license_) == (REPO / "LICENSE").read_bytes()
        metadata = archive.read(f"{dist_info}/METADATA").decode()
    assert f"\nVersion: {vlbert.__version__}\n" in metadata
    missing = [name for name in REPO_CONFIGS if f"vlbert/configs/{name}" not in names]
    assert not missing, f"configs not in the wheel: {missing}"
    for module in ("__init__.py", "__main__.py", "cli.py", "resources.py", "configs/__init__.py",
                   "features/__init__.py", "features/extract.py", "tasks/__init__.py", "tasks/demo.py"):
        assert f"vlbert/{module}" in names, module
    # every module of every package folder (setup.cfg lists packages one by one: a new subpackage
    # must be added there)
    for package, folder in package_dirs().items():
        for module in (REPO / folder).rglob("*.py"):
            if any(part == "__pycache__" for part in module.parts):
                continue
            name = f"{package.replace('.', '/')}/{module.relative_to(REPO / folder).as_posix()}"
            assert name in names, f"{module.relative_to(REPO)} is not in the wheel (a package missing from setup.cfg?)"
    # nothing installs as a top-level package but vlbert
    assert {n.split("/")[0] for n in names} == {"vlbert", dist_info}


@pytest.mark.slow
def test_installed_wheel_finds_its_configs_outside_the_repo(wheel, tmp_path):
    site = tmp_path / "site"
    run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", site, wheel],
        cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"  # the working directory is on sys.path: not the repository
    elsewhere.mkdir()
    env = {"PYTHONPATH": str(site)}

    assert run([sys.executable, "-m", "vlbert", "--version"], cwd=elsewhere, **env).stdout == f"vlbert {vlbert.__version__}\n"

    # The editable install's finder is on sys.meta_path after the path finder: PYTHONPATH's copy wins.
    probe = """if True:
        import contextlib, io, json, sys
        import vlbert, vlbert.features, vlbert.tasks
        from vlbert.cli import main
        from vlbert.features.config import load_config
        from vlbert.resources import config_path, shipped_configs
        from vlbert.tasks import demo
        with contextlib.redirect_stdout(io.StringIO()) as command:  # what the README shows users
            assert main(["configs", "pretrain/tiny.yaml"]) == 0
        print(json.dumps({
            "modules": [vlbert.__file__, vlbert.features.__file__, vlbert.tasks.__file__],
            "editable_finder": any("editable" in repr(f) for f in sys.meta_path),
            "pretrain": str(config_path("pretrain/tiny.yaml")),
            "demo": demo.__file__,
            "retrieval": str(config_path("retrieval/tiny.yaml")),
            "shipped": shipped_configs(),
            "extract_tiny_backend": load_config(config_path("extract/tiny.yaml")).backend,
            "configs_command": command.getvalue().strip(),
        }))
    """
    found = json.loads(run([sys.executable, "-c", probe], cwd=elsewhere, **env).stdout)
    # with the .venv's editable install its finder is there too, and loses
    assert found["editable_finder"] == any("editable" in repr(f) for f in sys.meta_path)
    under_site = [Path(p).resolve().is_relative_to(site.resolve()) for p in
                  [*found["modules"], found["pretrain"], found["demo"], found["retrieval"], found["configs_command"]]]
    assert all(under_site), found
    assert found["configs_command"] == found["pretrain"]
    assert found["shipped"] == REPO_CONFIGS
    assert found["extract_tiny_backend"] == "torchvision"

    # A real command on a shipped config, as the README tells users outside the repository:
    # --config $(vlbert configs pretrain/tiny.yaml)
    printed = run([sys.executable, "-m", "vlbert", "pretrain", "fit", "--config", found["pretrain"], "--print_config"],
                  cwd=elsewhere, **env).stdout
    assert "hidden_size: 64" in printed and "num_region_classes: 36" in printed
