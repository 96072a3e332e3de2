"""The edge: `import exllamav2` in a child process of the target interpreter, with the plan's switches.

A child, because the import can crash (a flash-attn built for another torch), hang, or start a long JIT
build, and because the switches must be in the environment before exllamav2 is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from exlx_autocfg.checks.exllama import ImportResult

MARK = "EXLX-IMPORT-RESULT "
# Reads exllamav2's own module-level flags (attn.py), set at import from what it could import.
_CHILD = (
    "import json, exllamav2, exllamav2.attn as a\n"
    "names = ('has_flash_attn', 'has_xformers', 'has_lower_right_sdpa')\n"
    "flags = {k: bool(getattr(a, k, False)) for k in names}\n"
    f"print({MARK!r} + json.dumps({{'version': exllamav2.__version__, 'backends': flags}}))\n"
)


def try_import(
    python: str | None,
    switches: dict[str, str],
    timeout: float = 60.0,
    base_env: dict[str, str] | None = None,
) -> ImportResult:
    """Run the import; never raises for what the child does (crash, hang, error all become a result).

    The child gets `base_env` (default: this process's environment) plus the switches."""
    env = dict(os.environ if base_env is None else base_env)
    env.update(switches)
    env.setdefault("PYTHONUNBUFFERED", "1")
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [python or sys.executable, "-c", _CHILD],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return ImportResult(
            attempted=True,
            timed_out=True,
            seconds=time.monotonic() - start,
            env=switches,
            error=f"timed out after {timeout:.0f} s",
        )
    except OSError as exc:
        return ImportResult(
            attempted=True,
            seconds=time.monotonic() - start,
            env=switches,
            error=f"cannot run {python}: {exc}",
        )
    seconds = time.monotonic() - start
    for line in proc.stdout.splitlines():
        if line.startswith(MARK) and proc.returncode == 0:
            data = json.loads(line[len(MARK) :])
            return ImportResult(
                attempted=True, ok=True, seconds=seconds, env=switches, backends=data["backends"]
            )
    return ImportResult(attempted=True, seconds=seconds, env=switches, error=last_error_line(proc))


def last_error_line(proc: subprocess.CompletedProcess) -> str:
    """The exception line of a child's traceback (or its exit status when it died without one)."""
    lines = [ln.strip() for ln in (proc.stderr or "").splitlines() if ln.strip()]
    for line in reversed(lines):
        if not line.startswith(("File ", "^", "~")) and (":" in line or "Error" in line):
            return line
    if proc.returncode < 0:
        return f"killed by signal {-proc.returncode}"
    return lines[-1] if lines else f"exit status {proc.returncode}"
