"""Start-up: `detect` pays for what it does, not for imports it does not need (issue 10).

typer >= 0.29 would import pydantic to convert any option value; exlx_autocfg/cli/coercion.py converts the
plain options this CLI declares itself. These tests fail when that hook stops applying to the installed
typer, and compare its conversions with click's own (the conversion typer <= 0.28 used).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from exlx_autocfg.cli import coercion, run

ROOT = Path(__file__).resolve().parent.parent

_MODULES_AFTER = """
import io, json, sys, contextlib
from exlx_autocfg.cli import run
with contextlib.redirect_stdout(io.StringIO()):
    code = run({argv!r})
print(json.dumps({{"code": code, "modules": sorted(sys.modules)}}))
"""


def _modules_after(argv: list[str]) -> tuple[int, set[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", _MODULES_AFTER.format(argv=argv)],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=True,
    )
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    return doc["code"], set(doc["modules"])


def _has(modules: set[str], package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in modules)


@pytest.mark.parametrize(
    "argv", [["detect", "--json", "--no-import"], ["detect", "--json", "--no-import", "--timeout", "30"]]
)
def test_detect_json_imports_no_pydantic_rich_or_planner(argv):
    code, modules = _modules_after(argv)
    assert code == 0
    assert "typer" in modules  # the CLI is typer's
    for package in ("pydantic", "rich", "exlx_autocfg.planner", "exlx_autocfg.model", "huggingface_hub"):
        assert not _has(modules, package), package


def test_the_human_report_still_draws_with_rich():
    code, modules = _modules_after(["detect", "--no-import"])
    assert code == 0 and _has(modules, "rich")
    assert not _has(modules, "pydantic")


def test_the_hook_applies_to_the_installed_typer():
    import typer

    major_minor = tuple(int(x) for x in typer.__version__.split(".")[:2])
    installed = coercion.install()
    if major_minor >= (0, 29):
        assert installed, f"typer {typer.__version__}: the pydantic-free conversion no longer hooks in"


click = pytest.importorskip("click")  # huggingface_hub's dependency; the conversion typer <= 0.28 used


@pytest.mark.parametrize(
    ("kind", "click_type", "values"),
    [
        (int, "INT", ["12", "-3", "+5", " 7 ", "1_000", "12.0", "0x10", "1e3", "abc", ""]),
        (float, "FLOAT", ["1.5", "1e3", " 2 ", "inf", "nan", "0x10", "abc", "", "1,5"]),
    ],
)
def test_numbers_convert_as_click_converts_them(kind, click_type, values):
    convert = coercion.plain_converter(kind, None)
    for value in values:
        try:
            expected: object = getattr(click, click_type).convert(value, None, None)
        except click.BadParameter as exc:
            expected = exc.message
        try:
            got: object = convert(value)
        except ValueError as exc:
            got = str(exc)
        if isinstance(expected, float) and expected != expected:  # nan
            assert got != got
        else:
            assert got == expected, value


def test_only_plain_options_are_taken_over():
    from typing import Literal

    from typer.models import OptionInfo

    assert coercion.plain_converter(int | None, OptionInfo()) is not None
    assert coercion.plain_converter(Path, OptionInfo()) is not None
    assert coercion.plain_converter(int, OptionInfo(min=1)) is None  # ranges stay typer's
    assert coercion.plain_converter(Path, OptionInfo(exists=True)) is None  # so do path checks
    assert coercion.plain_converter(Path, OptionInfo(resolve_path=True)) is None
    assert coercion.plain_converter(list[str], OptionInfo()) is None
    assert coercion.plain_converter(Literal["a", "b"], OptionInfo()) is None
    assert coercion.plain_converter(int | str, OptionInfo()) is None


def test_a_bad_value_is_one_line_in_clicks_words(capsys):
    assert run(["detect", "--timeout", "abc"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "exlx-autocfg: error: detect: invalid value for '--timeout': 'abc' is not a valid float "
        "(see `exlx-autocfg detect --help`)\n"
    )
    assert run(["plan", "--gpu", "3090", "--context", "12.5", "llama3-8b@4.0bpw"]) == 2
    assert "'12.5' is not a valid integer" in capsys.readouterr().err
