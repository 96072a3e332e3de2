"""Coded errors (issue 14): every ExlxError subclass has a stable code of its own, registered and documented;
machine-readable runs print one JSON error document on stdout on every failure path, bugs included;
click's usage errors come out in the tool's one-line form; `-h` and `--version` exist."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from pathlib import Path

import pytest

import exlx_autocfg
from exlx_autocfg import cli
from exlx_autocfg.errors import ERROR_CODES, ExlxError, OptionError, error_document

DOC = Path(__file__).resolve().parent.parent / "docs" / "errors.md"


def all_error_classes() -> list[type[ExlxError]]:
    for module in pkgutil.walk_packages(exlx_autocfg.__path__, "exlx_autocfg."):
        if module.name.startswith(("exlx_autocfg.probe", "exlx_autocfg.profiles")):
            continue
        importlib.import_module(module.name)
    out, todo = [], [ExlxError]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def test_every_error_class_has_its_own_registered_code():
    classes = all_error_classes()
    assert len(classes) >= 15
    codes = {}
    for cls in classes:
        assert "code" in vars(cls), f"{cls.__name__} inherits its code; give it one of its own"
        assert cls.code in ERROR_CODES, f"{cls.__name__}.code {cls.code!r} is not registered"
        assert cls.code not in codes, f"{cls.__name__} and {codes.get(cls.code)} share {cls.code}"
        codes[cls.code] = cls.__name__


def test_every_code_is_documented():
    text = DOC.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(error[a-z_.]*)` \|", text, flags=re.MULTILINE))
    assert documented == set(ERROR_CODES)


def test_error_document_refuses_unregistered_codes():
    assert error_document("error.usage", "m", 2) == {
        "schema": 1, "error": {"code": "error.usage", "message": "m", "exit_code": 2, "hint": None}}
    with pytest.raises(ValueError, match="unregistered error code"):
        error_document("error.nope", "m", 2)


def test_option_errors_name_the_keyword_from_python_and_the_flag_from_the_cli():
    exc = OptionError("chunk_size", 100, "must be a multiple of 256")
    assert exc.one_line() == "chunk_size=100: must be a multiple of 256"
    assert exc.cli_line() == "--chunk-size 100: must be a multiple of 256"
    assert OptionError("gpu", "RTX 3080", "x").cli_line() == "--gpu 'RTX 3080': x"
    assert OptionError("model", "", "x", flag="MODEL").cli_line() == "MODEL '': x"


def test_an_internal_error_under_json_is_a_document_too(monkeypatch, capsys):
    from exlx_autocfg.cli import plan as plan_cli

    def boom(*args, **kwargs):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(plan_cli, "choice_from_options", boom)
    assert cli.run(["plan", "llama3-8b", "--gpu", "3090", "--json"]) == 70
    out, err = capsys.readouterr()
    assert err == ("exlx-autocfg: error: internal error: RuntimeError: a bug over two lines "
                   "(set EXLX_DEBUG=1 for the traceback)\n")
    doc = json.loads(out)
    assert doc["error"]["code"] == "error.internal" and doc["error"]["exit_code"] == 70


@pytest.mark.parametrize(("argv", "line"), [
    (["plan", "--gpu", "3090", "--context", "x", "llama3-8b"],
     "exlx-autocfg: error: plan: invalid value for '--context': "),
    (["plan"], "exlx-autocfg: error: plan: missing argument 'MODEL' (see `exlx-autocfg plan --help`)"),
    (["detect", "--frob"], "exlx-autocfg: error: detect: no such option: --frob (see `exlx-autocfg detect "),
])
def test_click_usage_errors_in_the_tools_form(argv, line, capsys):
    assert cli.run(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(line) and err.count("\n") == 1


def test_version_and_short_help(capsys):
    assert cli.run(["--version"]) == 0
    assert capsys.readouterr().out == f"exlx-autocfg {exlx_autocfg.__version__}\n"
    assert cli.run(["-h"]) == 0
    assert "Usage: exlx-autocfg" in capsys.readouterr().out
    assert cli.run(["plan", "-h"]) == 0
    assert "--gpu" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "expected"), [
    (["plan", "m", "--json"], True),
    (["emit", "-f", "json", "p.toml"], True),
    (["emit", "--format=json", "p.toml"], True),
    (["emit", "-fjson", "p.toml"], True),
    (["emit", "-f", "json", "p.toml", "--out", "x.json"], False),
    (["emit", "-f", "env", "p.toml"], False),
    (["plan", "m", "--", "--json"], False),
])
def test_which_runs_are_machine_readable(argv, expected):
    assert cli.wants_json(argv) is expected
