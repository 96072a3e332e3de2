"""Command-line entry point. Thin: parse, call the core, render.

Every failure is one line on stderr, `exlx-autocfg: error: ...`, and a stable exit code: errors the tool
expects (`ExlxError`), click's usage errors (a bad option value, a missing argument) and bugs alike (set
EXLX_DEBUG=1 for a bug's traceback). A machine-readable run (`--json`, or `emit --format json` to stdout)
also prints one JSON error document on stdout (`errors.error_document`, docs/errors.md), so a program
reading stdout always gets a document.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

import typer

from exlx_autocfg.cli.app import app
from exlx_autocfg.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ExlxError,
    error_document,
)

try:  # recent typer carries its own copy of click; its exceptions are not click's
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - older typer on plain click
    from click.exceptions import ClickException

    try:
        from click.exceptions import NoArgsIsHelpError
    except ImportError:  # click < 8.2 prints the help itself

        class NoArgsIsHelpError(ClickException):  # type: ignore[no-redef]
            pass

# Each command module registers its commands on `app` when imported; this order is the order in --help.
# Only the module of the command being run is imported: `detect` should not pay for the planner.
COMMAND_MODULES = {
    "detect": "detect",
    "plan": "plan",
    "profile": "profile",
    "show": "profile",
    "verify": "profile",
    "prepare": "profile",
    "emit": "emit",
    "check": "check",
}


def register_commands(argv: list[str] | None = None) -> None:
    """Import the command module for the command in `argv`, or every module (for --help, a typo, None)."""
    first = next((arg for arg in argv or [] if not arg.startswith("-")), None)
    wanted = [COMMAND_MODULES[first]] if first in COMMAND_MODULES else COMMAND_MODULES.values()
    for module in dict.fromkeys(wanted):
        importlib.import_module(f"exlx_autocfg.cli.{module}")

__all__ = ["app", "main"]


def wants_json(argv: list[str]) -> bool:
    """Whether this run's stdout is for a program: `--json`, or `emit --format json` without `--out`."""
    args = argv[: argv.index("--")] if "--" in argv else argv
    if "--json" in args:
        return True
    fmt = None
    for i, arg in enumerate(args):
        if arg in ("-f", "--format") and i + 1 < len(args):
            fmt = args[i + 1]
        elif arg.startswith("--format="):
            fmt = arg.split("=", 1)[1]
        elif arg.startswith("-f") and len(arg) > 2 and not arg.startswith("--"):
            fmt = arg[2:]
    out = any(a in ("-o", "--out") or a.startswith(("--out=", "-o")) for a in args)
    return fmt == "json" and not out and "emit" in args


def _fail(message: str, exit_code: int, code: str, *, as_json: bool, hint: str | None = None) -> int:
    print(f"exlx-autocfg: error: {message}", file=sys.stderr)
    if as_json:
        try:
            sys.stdout.write(json.dumps(error_document(code, message, exit_code, hint)) + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):  # nobody reads stdout any more, or it is closed
            pass
    return exit_code


def _usage_line(exc: ClickException) -> str:
    """click's message in the tool's one-line form, with where to look for help."""
    text = " ".join(exc.format_message().split()).rstrip(".")
    ctx = getattr(exc, "ctx", None)
    if ctx is not None and getattr(ctx, "command_path", None):
        command = ctx.command_path.removeprefix("exlx-autocfg").strip()
        where = f"{command}: " if command else ""
        return f"{where}{text[:1].lower() + text[1:]} (see `{ctx.command_path} --help`)"
    return text


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit code instead of exiting (used by tests and `main`)."""
    args = sys.argv[1:] if argv is None else list(argv)
    register_commands(args)
    as_json = wants_json(args)
    try:
        result = app(args=args, prog_name="exlx-autocfg", standalone_mode=False)
    except NoArgsIsHelpError as exc:  # bare `exlx-autocfg` or `exlx-autocfg emit`: the help, exit 2
        exc.show()
        return exc.exit_code
    except ClickException as exc:  # bad options: click's message in the tool's form, exit 2
        return _fail(_usage_line(exc), exc.exit_code or EXIT_USAGE, "error.usage", as_json=as_json)
    except typer.Abort:
        return _fail("aborted", EXIT_INTERRUPTED, "error.interrupted", as_json=as_json)
    except typer.Exit as exc:
        return exc.exit_code
    except ExlxError as exc:
        return _fail(exc.cli_line(), exc.exit_code, exc.code, as_json=as_json, hint=exc.hint)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED, "error.interrupted", as_json=as_json)
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: still no traceback unless asked for
        if os.environ.get("EXLX_DEBUG"):
            raise
        message = f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}"
        return _fail(f"{message} (set EXLX_DEBUG=1 for the traceback)", EXIT_INTERNAL, "error.internal",
                     as_json=as_json)
    return result if isinstance(result, int) else 0


def main() -> None:
    sys.exit(run())
