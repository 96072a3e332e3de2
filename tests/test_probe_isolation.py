"""The probe survives imports that hang, segfault, os._exit, SystemExit or spew warnings, and stays on
Python 3.8 syntax. Real interpreters, real child processes; only the misbehaving packages are made up."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exlx_autocfg.data import probe_script
from tests.support.envs import child_env
from tests.support.probe_packages import BEHAVIOURS, find_python, make_package

PY38 = find_python("3.8")


def _targets(tmp_path: Path, libraries: list[str]) -> Path:
    path = tmp_path / "targets.json"
    path.write_text(json.dumps({"libraries": libraries, "xformers_import_paths": [], "env_vars": []}))
    return path


def _run_probe(python: str, args: list[str], env: dict[str, str], timeout: float) -> tuple[dict, float, str]:
    start = time.monotonic()
    proc = subprocess.run([python, str(probe_script()), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1, "the probe prints exactly one JSON document"
    return json.loads(lines[0]), took, proc.stderr


def _dead(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return any(line.startswith("State:") and "Z" in line for line in fh)
    except FileNotFoundError:
        return True


def test_hang_crash_exit_and_noise_become_facts(tmp_path: Path) -> None:
    site = tmp_path / "site"
    for name in ("hang", "segfault", "exit", "sysexit", "noisy", "ok"):
        make_package(site, f"{name}pkg", "1.0+cu121", BEHAVIOURS[name])
    libs = [f"{n}pkg" for n in ("hang", "segfault", "exit", "sysexit", "noisy", "ok")]
    pidfile = tmp_path / "grandchild.pid"
    env = child_env(site, EXLX_TEST_PIDFILE=str(pidfile))
    doc, took, stderr = _run_probe(
        sys.executable, ["--timeout", "3", "--targets", str(_targets(tmp_path, libs))], env, timeout=30
    )
    assert took < 6, "the probe keeps its own deadline"
    assert "Traceback" not in stderr
    got = doc["libraries"]
    assert got["hangpkg"]["import_status"] == "timeout"
    assert "did not finish within" in got["hangpkg"]["import_error"]
    assert got["segfaultpkg"]["import_status"] == "crashed"
    assert "SIGSEGV" in got["segfaultpkg"]["import_error"]
    assert got["exitpkg"]["import_status"] == "crashed"
    assert "exited with code 3" in got["exitpkg"]["import_error"]
    assert got["sysexitpkg"]["import_status"] == "error"
    assert got["sysexitpkg"]["import_error"] == "SystemExit: 4"
    assert got["noisypkg"]["import_status"] == "error"
    assert got["noisypkg"]["import_error"].startswith("ImportError: ")
    assert "undefined symbol: _ZN3c104cuda9SetDeviceEi" in got["noisypkg"]["import_error"]
    assert got["okpkg"]["import_status"] == "ok"
    assert got["okpkg"]["details"]["module_version"] == "1.0"
    assert got["okpkg"]["build"] == {"cuda": "12.1"}
    # The hung child's own child was killed with its process group.
    deadline = time.monotonic() + 5
    pid = int(pidfile.read_text())
    while not _dead(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _dead(pid)


def test_metadata_pass_imports_nothing(tmp_path: Path) -> None:
    site = tmp_path / "site"
    make_package(site, "flash-attn", "2.6.3+cu123torch2.4cxx11abiFALSE", BEHAVIOURS["marker"], "flash_attn")
    marker = tmp_path / "imported"
    env = child_env(site, EXLX_TEST_MARKER=str(marker))
    doc, _, _ = _run_probe(sys.executable, ["--no-import", "--libraries", "flash-attn"], env, timeout=30)
    lib = doc["libraries"]["flash-attn"]
    assert lib["installed"] and lib["version"] == "2.6.3+cu123torch2.4cxx11abiFALSE"
    assert lib["local_tag"] == "cu123torch2.4cxx11abiFALSE"
    assert lib["build"] == {"cuda": "12.3", "torch": "2.4", "cxx11_abi": "false"}
    assert lib["import_status"] == "not-tried"
    assert lib["location"] == str(site)
    assert not marker.exists()
    assert doc["schema"] == 1 and doc["no_import"] is True


@pytest.mark.skipif(PY38 is None, reason="no Python 3.8 interpreter on this machine")
def test_probe_runs_on_python_38(tmp_path: Path) -> None:
    site = tmp_path / "site"
    for name in ("exit", "noisy", "ok"):
        make_package(site, f"{name}pkg", "1.0", BEHAVIOURS[name])
    libs = ["exitpkg", "noisypkg", "okpkg", "torch"]
    env = child_env(site)
    env.pop("PYTHONHOME", None)
    args = ["--timeout", "20", "--targets", str(_targets(tmp_path, libs))]
    doc, _, _ = _run_probe(str(PY38), args, env, 40)
    assert doc["python"]["version"].startswith("3.8.")
    got = doc["libraries"]
    assert got["exitpkg"]["import_status"] == "crashed"
    assert got["noisypkg"]["import_status"] == "error"
    assert got["okpkg"]["import_status"] == "ok"
    assert got["torch"]["installed"] is False  # this interpreter has no torch: a fact, not a failure


def test_probe_source_is_python_38_syntax() -> None:
    """Every probe module parses with Python 3.8's grammar (and with a real 3.8 when there is one)."""
    import ast

    files = sorted(probe_script().parent.glob("exlx_probe*.py"))
    assert len(files) >= 2
    for path in files:
        ast.parse(path.read_text(), feature_version=(3, 8))
        if PY38 is not None:
            check = "import ast, sys; ast.parse(open(sys.argv[1]).read())"
            proc = subprocess.run([str(PY38), "-c", check, str(path)], capture_output=True)
            assert proc.returncode == 0, (path, proc.stderr)


def test_cache_reuses_import_results_until_something_changes(tmp_path: Path) -> None:
    site = tmp_path / "site"
    make_package(site, "okpkg", "1.0", BEHAVIOURS["ok"])
    make_package(site, "hangpkg", "1.0", BEHAVIOURS["hang"])
    cache = tmp_path / "cache" / "probe.json"
    env = child_env(site, EXLX_TEST_PIDFILE=str(tmp_path / "pid"))
    ok_only = ["--timeout", "10", "--targets", str(_targets(tmp_path, ["okpkg"])), "--cache", str(cache)]

    first, _, _ = _run_probe(sys.executable, ok_only, env, timeout=30)
    second, _, _ = _run_probe(sys.executable, ok_only, env, timeout=30)
    assert first["cache"]["hit"] is False and second["cache"]["hit"] is True
    assert second["libraries"]["okpkg"] == first["libraries"]["okpkg"]

    make_package(site, "okpkg", "1.0", BEHAVIOURS["ok"].replace("1.0", "1.10"))  # the module file changed
    third, _, _ = _run_probe(sys.executable, ok_only, env, timeout=30)
    assert third["cache"]["hit"] is False
    assert third["libraries"]["okpkg"]["details"]["module_version"] == "1.10"

    refreshed, _, _ = _run_probe(sys.executable, [*ok_only, "--refresh"], env, timeout=30)
    assert refreshed["cache"]["hit"] is False

    # A timeout says as much about the machine's load as about the package: it is never cached.
    hang = ["--timeout", "1.5", "--targets", str(_targets(tmp_path, ["hangpkg"])), "--cache", str(cache)]
    doc, _, _ = _run_probe(sys.executable, hang, env, timeout=30)
    assert doc["cache"]["hit"] is False and doc["libraries"]["hangpkg"]["import_status"] == "timeout"
    assert "hangpkg" not in json.loads(cache.read_text())["results"]


def test_forked_checks_after_one_torch_import(tmp_path: Path) -> None:
    """Libraries that import torch are checked in children forked from one process that imported torch:
    still one process each, with its own crash and timeout."""
    site = tmp_path / "site"
    make_package(site, "torch", "2.5.1+cu121", "import os\nIMPORTED_IN = os.getpid()\n")
    make_package(site, "flash-attn", "2.6.3", "import torch\n" + BEHAVIOURS["segfault"], "flash_attn")
    make_package(site, "xformers", "0.0.28", "import torch\n" + BEHAVIOURS["hang"])
    make_package(site, "mslk", "1.0", "import torch\n" + BEHAVIOURS["noisy"])
    libs = ["torch", "flash-attn", "xformers", "mslk"]
    env = child_env(site, EXLX_TEST_PIDFILE=str(tmp_path / "pid"))
    doc, took, _ = _run_probe(sys.executable, ["--timeout", "3", "--targets", str(_targets(tmp_path, libs))],
                              env, timeout=30)
    got = doc["libraries"]
    assert took < 6
    assert got["flash-attn"]["import_status"] == "crashed" and "SIGSEGV" in got["flash-attn"]["import_error"]
    assert got["xformers"]["import_status"] == "timeout"
    assert got["mslk"]["import_status"] == "error" and "undefined symbol" in got["mslk"]["import_error"]
    assert got["torch"]["import_status"] == "error"  # this stand-in torch has no torch.version: a fact
    assert "AttributeError" in got["torch"]["import_error"]


def test_torch_that_does_not_import_falls_back_to_plain_children(tmp_path: Path) -> None:
    site = tmp_path / "site"
    broken = "raise ImportError('libc10_cuda.so: cannot open shared object')\n"
    make_package(site, "torch", "2.5.1+cu121", broken)
    make_package(site, "xformers", "0.0.28", "__version__ = '0.0.28'\n")
    libs = ["torch", "xformers"]
    doc, _, _ = _run_probe(sys.executable, ["--timeout", "10", "--targets", str(_targets(tmp_path, libs))],
                           child_env(site), timeout=30)
    got = doc["libraries"]
    assert got["torch"]["import_status"] == "error"
    assert got["torch"]["import_error"] == "ImportError: libc10_cuda.so: cannot open shared object"
    assert got["xformers"]["import_status"] == "ok"


def test_torch_import_that_hangs(tmp_path: Path) -> None:
    site = tmp_path / "site"
    make_package(site, "torch", "2.5.1+cu121", "import time\ntime.sleep(300)\n")
    make_package(site, "xformers", "0.0.28", "import torch\n")
    libs = ["torch", "xformers"]
    doc, took, _ = _run_probe(sys.executable, ["--timeout", "2", "--targets", str(_targets(tmp_path, libs))],
                              child_env(site), timeout=30)
    assert took < 5
    for name in libs:
        lib = doc["libraries"][name]
        assert lib["import_status"] == "timeout" and "import torch did not finish" in lib["import_error"]
