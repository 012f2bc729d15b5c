"""The YAML configs shipped with vlbert, and `vlbert configs` (where they are, which there are).

The repository's top-level `configs/` folder installs as the package `vlbert.configs` (setup.cfg),
so the same names work in a checkout, an editable install and a wheel, from any directory:

    from vlbert.resources import config_path
    config_path("pretrain/tiny.yaml")   # -> .../vlbert/configs/pretrain/tiny.yaml (or .../configs/... in a checkout)
"""
from __future__ import annotations

import argparse
from importlib.resources import files
from pathlib import Path


def configs_dir() -> Path:
    """The folder of the shipped configs."""
    root = files("vlbert.configs")
    if not isinstance(root, Path):  # e.g. imported from a zip file
        raise RuntimeError(f"vlbert's configs are not on the file system ({root}): install vlbert unzipped")
    return root


def shipped_configs() -> list[str]:
    """Every shipped config, as names for `config_path` ("pretrain/tiny.yaml", ...)."""
    root = configs_dir()
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.yaml"))


def config_path(relative: str) -> Path:
    """The path of a shipped config by its name under configs/, e.g. "pretrain/tiny.yaml"."""
    names = shipped_configs()
    if relative not in names:
        raise FileNotFoundError(f"vlbert ships no config {relative!r}; shipped configs: {', '.join(names)}")
    return configs_dir() / relative


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vlbert configs",
        description="Print the folder of the configs vlbert ships, then each config's name; or, given a name, "
                    "that config's path (e.g. `vlbert pretrain fit --config $(vlbert configs pretrain/base.yaml)`).",
    )
    parser.add_argument("name", nargs="?", help="a shipped config, e.g. pretrain/tiny.yaml")
    args = parser.parse_args(argv)
    if args.name is not None:
        try:
            print(config_path(args.name))
        except FileNotFoundError as error:
            parser.exit(2, f"vlbert configs: {error}\n")
        return 0
    print(configs_dir())
    for name in shipped_configs():
        print(f"  {name}")
    return 0
