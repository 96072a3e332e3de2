"""Probe, parent side: run the import checks in child processes under one deadline (stdlib only).

Plain children (`exlx_probe.py --child NAME`) each get a new session; on Linux the torch-dependent
checks are forked from one process that imported torch once (`--zygote`). At the deadline the whole
process group is killed. `interpret` turns what a child printed and how it ended into a status.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

try:  # imported as exlx_autocfg.probe.exlx_probe_checks
    from .exlx_probe_checks import (
        _WarningCapture,
        run_child,
    )
except ImportError:  # run as a script: probe/ is sys.path[0]
    from exlx_probe_checks import (  # type: ignore[no-redef]
        _WarningCapture,
        run_child,
    )
try:  # imported as exlx_autocfg.probe.exlx_probe_common
    from .exlx_probe_common import (
        PROBE_SCRIPT,
        RESULT_MARKER,
        _condense,
        _read_json,
        _write_json,
        exc_line,
        first_useful_line,
    )
except ImportError:  # run as a script: probe/ is sys.path[0]
    from exlx_probe_common import (  # type: ignore[no-redef]
        PROBE_SCRIPT,
        RESULT_MARKER,
        _condense,
        _read_json,
        _write_json,
        exc_line,
        first_useful_line,
    )


class _Child(object):
    def __init__(self, library, cmd):
        self.library = library
        self.out = tempfile.TemporaryFile()
        self.err = tempfile.TemporaryFile()
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
        else:
            kwargs["start_new_session"] = True
        self.start = time.time()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err, **kwargs)
        self.seconds = None
        self.timed_out = False

    def wait(self, deadline):
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            self.timed_out = True
        self.seconds = round(time.time() - self.start, 3)
        self.kill_group()

    def kill_group(self):
        """Kill the child and anything it started (a stuck compiler, a helper process)."""
        if os.name == "nt":
            if self.proc.poll() is None:
                self.proc.kill()
        else:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, OSError):
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def output(self):
        texts = []
        for fh in (self.out, self.err):
            fh.seek(0)
            texts.append(fh.read().decode("utf-8", "replace"))
            fh.close()
        return texts


def _zygote_possible():
    """Fork after `import torch` is what every Linux DataLoader does; elsewhere use plain children."""
    return (sys.platform.startswith("linux") and hasattr(os, "fork")
            and os.environ.get("EXLX_PROBE_NO_FORK", "") in ("", "0"))


def run_zygote(jobs, targets_path, outdir):
    """Import torch once, then fork one child per job: each library still gets its own process (own
    crash, own timeout), but the libraries that import torch anyway do not pay for it again.

    Writes zygote.json (torch import time, warnings, or the error), <job>.out (the child's stdout and
    stderr) and <job>.status ({returncode, seconds}) as each child ends. The parent enforces the deadline
    by killing this process group."""
    started = time.time()
    capture = _WarningCapture()
    try:
        import torch  # noqa: F401
    except BaseException as exc:
        _write_json(os.path.join(outdir, "zygote.json"), {"error": exc_line(exc)})
        os._exit(0)
    import_seconds = round(time.time() - started, 3)
    _write_json(os.path.join(outdir, "zygote.json"), {
        "torch_import_seconds": import_seconds, "warnings": [_condense(m) for m in capture.collected()][:10]})
    running = {}
    for name, ext_path in jobs:
        with open(os.path.join(outdir, name + ".out"), "wb") as out:
            pid = os.fork()
            if pid == 0:
                try:
                    os.dup2(out.fileno(), 1)
                    os.dup2(out.fileno(), 2)
                    run_child(name, targets_path, ext_path)  # ends with os._exit(0)
                finally:
                    os._exit(70)
        running[pid] = (name, time.time())
    while running:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid not in running:
            continue
        name, forked = running.pop(pid)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        _write_json(os.path.join(outdir, name + ".status"),
                    {"returncode": code, "seconds": round(time.time() - forked, 3)})
    os._exit(0)


class _Zygote(object):
    """The parent's handle on run_zygote: one process group holding every forked import check."""

    def __init__(self, jobs, targets_path):
        self.jobs = jobs
        self.outdir = tempfile.mkdtemp(prefix="exlx-probe-")
        cmd = [sys.executable, PROBE_SCRIPT, "--zygote", json.dumps(jobs), "--targets", targets_path,
               "--outdir", self.outdir]
        self.err = tempfile.TemporaryFile()
        self.start = time.time()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.err, stderr=self.err,
                                     start_new_session=True)
        self.timed_out = False

    def wait(self, deadline):
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            self.timed_out = True
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the forked children share this group
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def results(self, deadline):
        """{job: result} for the jobs it ran, or None when torch itself failed or crashed on import (the
        caller then runs plain children, which report the failure per library)."""
        import shutil as _shutil

        try:
            info = _read_json(os.path.join(self.outdir, "zygote.json"))
            if info is None and self.timed_out:  # `import torch` itself hung: every check waited on it
                msg = "import did not finish within %.3gs (import torch did not finish)" % (deadline - self.start)
                return {name: {"status": "timeout", "error": msg, "details": {},
                               "seconds": round(deadline - self.start, 3)} for name, _ in self.jobs}
            if not info or info.get("error"):
                return None
            results = {}
            for name, _ in self.jobs:
                try:
                    with open(os.path.join(self.outdir, name + ".out"), "rb") as fh:
                        text = fh.read().decode("utf-8", "replace")
                except OSError:
                    text = ""
                status = _read_json(os.path.join(self.outdir, name + ".status"))
                noise = "\n".join(ln for ln in text.splitlines() if not ln.startswith(RESULT_MARKER))
                timed_out = status is None
                code = status.get("returncode") if status else None
                outcome, error, details = interpret(text, noise, code, timed_out, max(deadline - self.start, 0))
                seconds = (status or {}).get("seconds", round(deadline - self.start, 3))
                results[name] = {"status": outcome, "error": error, "details": details,
                                 "seconds": round(info["torch_import_seconds"] + seconds, 3)}
            torch = results.get("torch")
            if torch is not None and info.get("warnings"):
                torch["details"]["warnings"] = (info["warnings"] + torch["details"].get("warnings", []))[:10]
            return results
        finally:
            self.err.close()
            _shutil.rmtree(self.outdir, ignore_errors=True)


def _signal_name(code):
    try:
        return signal.Signals(-code).name
    except (ValueError, AttributeError):
        return "signal %d" % -code


def interpret_child(child, timeout):
    """Status, error line and details from a finished (or killed) child."""
    stdout, stderr = child.output()
    return interpret(stdout, stderr, child.proc.returncode, child.timed_out, timeout)


def interpret(stdout, stderr, code, timed_out, timeout):
    """Status, error line and details from what a child printed and how it ended."""
    result = None
    for line in stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            try:
                result = json.loads(line[len(RESULT_MARKER):])
            except ValueError:
                pass
    details = (result or {}).get("details") or {}
    if timed_out:
        msg = "import did not finish within %.3gs" % timeout
        hint = first_useful_line(stderr)
        return "timeout", msg + (" (last output: %s)" % hint if hint else ""), details
    if result is not None and result.get("final") and code == 0:
        if result.get("status") == "ok":
            return "ok", None, details
        return "error", result.get("error"), details
    if code is not None and code < 0:
        why = "killed by %s" % _signal_name(code)
    else:
        why = "exited with code %s" % code
    line = first_useful_line(stderr)
    return "crashed", "import crashed the interpreter (%s)%s" % (why, ": " + line if line else ""), details
