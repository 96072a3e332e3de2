"""The wheel ships every subpackage and the data beside the code (probe/ and profiles/ are mapped in)."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "exlx_autocfg").rglob("__init__.py")
    }
    mapped = {f"exlx_autocfg.{name}" for name in ("probe", "profiles")}
    assert on_disk | mapped == listed
    assert {config["package-dir"][pkg] for pkg in mapped} == {"probe", "profiles"}


def test_every_data_file_matches_a_package_data_pattern():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for package, directory in (("exlx_autocfg.profiles", "profiles"), ("exlx_autocfg.probe", "probe")):
        for path in (ROOT / directory).iterdir():
            if path.is_file() and path.suffix != ".py":  # modules ship as the package itself
                assert any(path.match(pattern) for pattern in config[package]), path
