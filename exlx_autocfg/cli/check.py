"""`exlx-autocfg check`: the install-time gate for installers, Dockerfiles and CI.

Exit codes (stable, docs/check.md): 0 all checks pass (warnings allowed), 1 a check failed, 2 usage error,
3 warnings under --strict.
"""

from __future__ import annotations

from typing import Annotated

import typer

from exlx_autocfg.cli.app import app
from exlx_autocfg.cli.planopts import AssumeOpt, GpuOpt, PythonOpt
from exlx_autocfg.errors import FactsError, InputError, SpecialFileError
from exlx_autocfg.facts.types import Facts


@app.command()
def check(
    python: PythonOpt = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print the verdicts as one JSON document.")
    ] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 3 when any check warns.")] = False,
    require: Annotated[
        list[str] | None,
        typer.Option(
            "--require",
            help="A package that must be installed and importable, optionally with a "
            "version (xformers, 'flash-attn>=2.5.7'); repeatable.",
            show_default=False,
        ),
    ] = None,
    skip: Annotated[
        list[str] | None,
        typer.Option(
            "--skip", help="Do not run this check (its id, e.g. exl3); repeatable.", show_default=False
        ),
    ] = None,
    gpu: GpuOpt = None,
    assume: AssumeOpt = None,
    facts_file: Annotated[
        str | None,
        typer.Option(
            "--facts",
            help="Check a facts document saved by `detect --json` instead of probing (no import is tried).",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds allowed for the probe and for the import.")
    ] = 60.0,
    draft: Annotated[
        str | None,
        typer.Option("--draft", help="Also check that this draft model loads (and, with --model, can draft "
                     "for it).", show_default=False),
    ] = None,
    lora: Annotated[
        list[str] | None,
        typer.Option("--lora", help="Also check that this LoRA adapter directory (DIR[:SCALE]) loads with "
                     "ExLlamaV2Lora (with --model: on that model); repeatable.", show_default=False),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="The model --draft and --lora load beside (directory or catalog "
                     "reference).", show_default=False),
    ] = None,
) -> int:
    """Check that this Python environment can run ExLlamaV2 on these GPUs: verdicts, reasons and fixes."""
    from exlx_autocfg.checks import check as run_check
    from exlx_autocfg.checks.render import render_text

    facts = _read_facts(facts_file) if facts_file else None
    report = run_check(
        python,
        require=require or (),
        skip=skip or (),
        gpu=gpu,
        assume=assume,
        timeout=timeout,
        import_timeout=timeout,
        facts=facts,
        import_test=facts is None,
        model=model,
        draft=draft,
        loras=lora or (),
    )
    typer.echo(report.to_json() if json_out else render_text(report, strict=strict))
    return report.exit_code(strict)


MAX_FACTS_BYTES = 64 * 1024 * 1024  # a facts document is tens of kB


def _read_facts(path: str) -> Facts:
    """A facts document from `detect --json`: a regular file (a FIFO or device is refused unopened) of
    the schema this tool reads; every problem is one line naming the file."""
    from exlx_autocfg.atomic import read_regular

    try:
        raw = read_regular(path, limit=MAX_FACTS_BYTES)
    except FileNotFoundError:
        raise InputError(f"--facts {path}: no such file") from None
    except SpecialFileError as exc:
        raise SpecialFileError(f"--facts {exc.message}") from None
    except OSError as exc:
        raise InputError(f"--facts {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        return Facts.from_json(raw)
    except FactsError as exc:
        raise FactsError(f"--facts {path}: {exc.message}", hint=exc.hint) from None
