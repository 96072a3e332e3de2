"""Command-line entry point. Thin: parse, call the core, render.

Errors the tool expects (`ExlxError`) become one line on stderr and a stable exit code; anything else
is a bug and still gets one line (set EXLX_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from exlx_autocfg.cli.app import app
from exlx_autocfg.errors import ExlxError

try:  # recent typer carries its own copy of click; its exceptions are not click's
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer on plain click
    from click.exceptions import ClickException

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


def _fail(message: str, code: int) -> int:
    print(f"exlx-autocfg: error: {message}", file=sys.stderr)
    return code


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit code instead of exiting (used by tests and `main`)."""
    register_commands(sys.argv[1:] if argv is None else argv)
    try:
        result = app(args=argv, prog_name="exlx-autocfg", standalone_mode=False)
    except ClickException as exc:  # bad options: click's own message, exit 2
        exc.show()
        return exc.exit_code
    except typer.Abort:
        return _fail("aborted", 130)
    except typer.Exit as exc:
        return exc.exit_code
    except ExlxError as exc:
        return _fail(exc.one_line(), exc.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug: still no traceback unless asked for
        if os.environ.get("EXLX_DEBUG"):
            raise
        return _fail(f"internal error: {type(exc).__name__}: {exc} (set EXLX_DEBUG=1 for the traceback)", 70)
    return result if isinstance(result, int) else 0


def main() -> None:
    sys.exit(run())
