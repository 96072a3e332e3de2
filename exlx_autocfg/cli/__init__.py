"""Command-line entry point. Thin: parse, call the core, render.

Errors the tool expects (`ExlxError`) become one line on stderr and a stable exit code; anything else
is a bug and still gets one line (set EXLX_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import os
import sys

import click

from exlx_autocfg.cli.app import app
from exlx_autocfg.errors import EXIT_USAGE, ExlxError

# Each module registers its commands on `app` when imported.
from exlx_autocfg.cli import detect as _detect  # noqa: F401,E402
from exlx_autocfg.cli import plan as _plan  # noqa: F401,E402
from exlx_autocfg.cli import profile as _profile  # noqa: F401,E402
from exlx_autocfg.cli import emit as _emit  # noqa: F401,E402
from exlx_autocfg.cli import check as _check  # noqa: F401,E402

__all__ = ["app", "main"]


def _fail(message: str, code: int) -> int:
    print(f"exlx-autocfg: error: {message}", file=sys.stderr)
    return code


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return the exit code instead of exiting (used by tests and `main`)."""
    try:
        result = app(args=argv, prog_name="exlx-autocfg", standalone_mode=False)
    except click.exceptions.UsageError as exc:
        exc.show()
        return EXIT_USAGE
    except click.exceptions.Abort:
        return _fail("aborted", 130)
    except click.exceptions.Exit as exc:
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
