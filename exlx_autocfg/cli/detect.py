"""`exlx-autocfg detect`: what this machine and the target interpreter offer ExLlamaV2.

Thin: parse options, call `detect()`, render. Rendering is a pure function of the facts.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from exlx_autocfg.cli.app import app

DEFAULT_TIMEOUT_S = 60.0  # = exlx_autocfg.facts.detect.DEFAULT_TIMEOUT_S, imported lazily with detect()


@app.command("detect")
def detect_command(
    json_out: Annotated[bool, typer.Option("--json", help="Print the full facts document as JSON.")] = False,
    no_import: Annotated[
        bool, typer.Option("--no-import", help="Package metadata only: no import checks (fast).")
    ] = False,
    python: Annotated[
        str | None,
        typer.Option("--python", help="Interpreter that will run the model (a venv's bin/python). "
                     "Default: this one."),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds the import checks may take in all.")
    ] = DEFAULT_TIMEOUT_S,
    refresh: Annotated[
        bool, typer.Option("--refresh", help="Re-run import checks even if nothing changed.")
    ] = False,
) -> None:
    """Report GPUs, driver, and the GPU stack (torch, xformers, flash-attn, exllamav2) of an interpreter."""
    from exlx_autocfg.options import seconds

    seconds("timeout", timeout)  # before the probe machinery is even imported
    from exlx_autocfg.facts.detect import detect  # only this command pays for the probe machinery

    facts = detect(python=python, timeout=timeout, no_import=no_import, refresh=refresh)
    if json_out:
        sys.stdout.write(facts.to_json() + "\n")
        return
    from exlx_autocfg.cli.detect_view import print_facts  # rich only for the human report

    print_facts(facts)
