"""Run the stdlib-only probe (`probe/exlx_probe.py`) in a target interpreter and return its JSON document.

The target is `--python PATH` (a TabbyAPI venv, a conda env) or this interpreter. Whatever is wrong with
it (missing, not executable, not Python, Python 2, too old, hangs at start-up) becomes ONE `ProbeError`
with a sentence that says which.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from exlx_autocfg.data import probe_script
from exlx_autocfg.errors import OptionError, ProbeError
from exlx_autocfg.probe.exlx_probe_common import SCHEMA, first_useful_line

MIN_PYTHON = (3, 8)
# Extra seconds past the probe's own deadline (its --timeout) before we give up on the interpreter itself:
# the whole probe, start-up and diagnosis included, is bounded by timeout + STARTUP_GRACE_S, so a hanging
# --python costs the user the timeout they asked for and a few seconds, not a multiple of it.
STARTUP_GRACE_S = 3.0
_VERSION_SNIPPET = "import sys; sys.stdout.write('%d.%d.%d' % tuple(sys.version_info[:3]))"


def resolve_python(python: str | None) -> str:
    """An absolute path to the interpreter to probe; OptionError (`python`) when the path cannot be one."""
    if python is None:
        return sys.executable
    if not python.strip():
        raise OptionError("python", python, "is empty; give the interpreter (a venv's bin/python)")
    candidate = Path(python).expanduser()
    if os.sep not in python and not candidate.exists():
        found = shutil.which(python)
        if found is None:
            raise OptionError("python", python, "not found on PATH")
        candidate = Path(found)
    if not candidate.exists():
        raise OptionError("python", python, "no such file")
    if candidate.is_dir():
        hint = candidate / "bin" / "python"
        raise OptionError("python", python, "is a directory, not an interpreter"
                          + (f" (did you mean {hint}?)" if hint.exists() else ""))
    if not os.access(candidate, os.X_OK):
        raise OptionError("python", python, "is not executable")
    return str(candidate.absolute())


def cache_file(
    exe: str, env: dict[str, str] | None = None, libraries: list[str] | None = None
) -> Path | None:
    """Where the probe keeps import results for `exe` with this PYTHONPATH and library subset
    ($EXLX_CACHE_DIR or the user cache dir); None when EXLX_NO_CACHE is set."""
    if os.environ.get("EXLX_NO_CACHE", "") not in ("", "0"):
        return None
    base = os.environ.get("EXLX_CACHE_DIR")
    if not base:
        import platformdirs

        base = platformdirs.user_cache_dir("exlx-autocfg")
    pythonpath = (os.environ if env is None else env).get("PYTHONPATH", "")
    digest = hashlib.sha256(repr((exe, pythonpath, sorted(libraries or []))).encode()).hexdigest()[:16]
    return Path(base) / f"probe-{digest}.json"


def run_probe(
    python: str | None = None,
    timeout: float = 60.0,
    no_import: bool = False,
    libraries: list[str] | None = None,
    env: dict[str, str] | None = None,
    refresh: bool = False,
) -> dict[str, Any]:
    """The probe's JSON document from `python` (default: this interpreter). Import results are reused
    from the cache while nothing they depend on changed, unless `refresh`."""
    exe = resolve_python(python)
    cmd = [exe, str(probe_script()), "--timeout", f"{timeout:g}"]
    if no_import:
        cmd.append("--no-import")
    if libraries:
        cmd += ["--libraries", ",".join(libraries)]
    cache = None if no_import else cache_file(exe, env, libraries)  # metadata alone is never cached
    if cache is not None:
        cmd += ["--cache", str(cache)] + (["--refresh"] if refresh else [])
    deadline = time.monotonic() + timeout + STARTUP_GRACE_S
    code, stdout, stderr, timed_out = _run(cmd, timeout + STARTUP_GRACE_S, env)
    if timed_out:
        raise ProbeError(f"{exe}: the probe did not finish within {timeout + STARTUP_GRACE_S:g}s "
                         f"(the {timeout:g}s timeout + {STARTUP_GRACE_S:g}s to start the interpreter)")
    doc = _find_document(stdout)
    if doc is not None:
        if doc.get("schema") != SCHEMA:
            raise ProbeError(f"{exe}: probe answered schema {doc.get('schema')!r}, expected {SCHEMA}")
        return doc
    raise _diagnose(exe, code, stdout, stderr, env, max(deadline - time.monotonic(), 0.5))


def _run(cmd: list[str], timeout: float, env: dict[str, str] | None) -> tuple[int | None, str, str, bool]:
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ProbeError(f"{cmd[0]} cannot be run ({reason}): it is not a Python interpreter") from None
    try:
        out, err = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        timed_out = True
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), timed_out


def _find_document(stdout: str) -> dict[str, Any] | None:
    """The probe's JSON line (the last one: a sitecustomize may print before it)."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("probe") == "exlx_probe":
            return doc
    return None


def _diagnose(exe: str, code: int | None, stdout: str, stderr: str, env: dict[str, str] | None,
              budget: float = STARTUP_GRACE_S) -> ProbeError:
    """Why the probe printed no document: not Python, Python 2 / too old, or a broken interpreter.
    `budget`: the seconds left of the probe's bound for asking the interpreter its version."""
    version = _python_version(exe, env, min(budget, STARTUP_GRACE_S))
    if version is None:
        said = first_useful_line(stderr) or first_useful_line(stdout)
        detail = f"exit code {code}" + (f", output: {said}" if said else ", no output")
        return ProbeError(f"{exe} is not a Python interpreter ({detail})")
    if version < MIN_PYTHON:
        shown = ".".join(map(str, version))
        return ProbeError(f"{exe} is Python {shown}; the probe needs Python >= 3.8")
    line = first_useful_line(stderr) or "no output"
    return ProbeError(f"the probe failed in {exe} (exit code {code}): {line}")


def _python_version(exe: str, env: dict[str, str] | None, timeout: float) -> tuple[int, ...] | None:
    try:
        proc = subprocess.run(
            [exe, "-c", _VERSION_SNIPPET], capture_output=True, text=True, timeout=timeout, env=env,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", proc.stdout.strip())
    return tuple(int(x) for x in match.groups()) if match else None
