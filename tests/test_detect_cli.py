"""`exlx-autocfg detect` and `exlx_autocfg.detect()`: output, JSON round trip, bad --python, and an
end-to-end run where imports hang and crash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import exlx_autocfg
from exlx_autocfg.cli import run
from exlx_autocfg.facts.types import Facts
from tests.support.envs import child_env
from tests.support.fake_pynvml import fake_nvml_env, use_fake_nvml
from tests.support.probe_packages import BEHAVIOURS, find_python, make_package

EXLX = Path(sys.executable).with_name("exlx-autocfg")
TOO_OLD = "is Python 2.7.18; the probe needs Python >= 3.8"


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _python2_standin(tmp_path: Path) -> Path:
    """Answers like python2.7: prints its version for -c, fails on Python 3 syntax for a script."""
    path = tmp_path / "python2"
    path.write_text(
        "#!/bin/sh\n"
        "if [ \"$1\" = \"-c\" ]; then printf '2.7.18'; exit 0; fi\n"
        "echo \"  File \\\"$1\\\", line 40\" >&2\n"
        "echo 'SyntaxError: invalid syntax' >&2\n"
        "exit 1\n"
    )
    path.chmod(0o755)
    return path


def _bad_pythons(tmp_path: Path) -> dict[str, tuple[str, str]]:
    text = tmp_path / "notes.txt"
    text.write_text("just text\n")
    script = tmp_path / "script.txt"
    script.write_text("just text, but executable\n")
    script.chmod(0o755)
    cases = {
        "missing": (str(tmp_path / "nope" / "python"), "no such file"),
        "directory": (str(tmp_path), "is a directory"),
        "not-executable": (str(text), "is not executable"),
        "text-file": (str(script), "it is not a Python interpreter"),
        "bin-true": ("/bin/true", "is not a Python interpreter (exit code 0, no output)"),
        "python2-standin": (str(_python2_standin(tmp_path)), TOO_OLD),
    }
    real2 = find_python("2.7")
    if real2 is not None:
        cases["python2-real"] = (str(real2), TOO_OLD)
    return cases


def test_bad_python_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name, (python, expected) in _bad_pythons(tmp_path).items():
        assert run(["detect", "--python", python, "--no-import"]) == 2, name
        line = _one_error_line(capsys)
        assert line.startswith("exlx-autocfg: error: ") and expected in line, (name, line)


def test_json_is_the_facts_document(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use_fake_nvml(monkeypatch, "3090+p40")
    assert run(["detect", "--no-import", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    facts = Facts.from_dict(data)
    assert facts.to_dict() == data  # JSON round trip
    assert [g.name for g in facts.gpu.gpus] == ["Tesla P40", "NVIDIA GeForce RTX 3090"]
    assert [g.cuda_index for g in facts.gpu.gpus] == [1, 0]
    assert facts.python.executable and facts.python.version.startswith("3.")
    torch = facts.lib("torch")
    assert torch.installed and torch.version == "2.13.0+cpu" and torch.import_status == "not-tried"
    assert facts.lib("exllamav2").details["ext"] == "jit-needed"
    assert facts.schema == 1 and facts.created.endswith("+00:00")


def test_text_report(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    use_fake_nvml(monkeypatch, "2080ti-22gb")
    monkeypatch.setenv("COLUMNS", "160")
    assert run(["detect", "--no-import"]) == 0
    out = capsys.readouterr().out
    for text in ("GPUs (from nvml; driver 550.120, CUDA driver 12.4)", "NVIDIA GeForce RTX 2080 Ti",
                 "7.5 turing", "22.0 GiB", "Libraries", "exllamav2", "extension: jit-needed",
                 "not imported", "Problems found:", "JIT build needed"):
        assert text in out, text


def test_no_gpu_report(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    use_fake_nvml(monkeypatch, "no-library")
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))  # no rocm-smi/amd-smi here
    assert run(["detect", "--no-import"]) == 0
    out = capsys.readouterr().out
    assert "GPUs: none found" in out and "NVIDIA driver not found" in out


@pytest.mark.skipif(find_python("3.8") is None, reason="no Python 3.8 interpreter on this machine")
def test_another_interpreter(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """--python: the library facts are the target's (a bare 3.8 without torch), not this venv's."""
    use_fake_nvml(monkeypatch, "p40")
    python = str(find_python("3.8"))
    assert run(["detect", "--python", python, "--json"]) == 0
    facts = Facts.from_json(capsys.readouterr().out)
    assert facts.python.executable == python and facts.python.version.startswith("3.8.")
    assert not facts.lib("torch").installed and not facts.lib("exllamav2").installed
    assert any(p.startswith(f"torch is not installed in {python}") for p in facts.problems)
    assert facts.gpu.gpus[0].name == "Tesla P40"  # GPU facts come from the CLI's process


def test_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["detect", "--timeout", "0"]) == 2
    assert "--timeout 0.0: must be a positive, finite number of seconds" in _one_error_line(capsys)
    from exlx_autocfg.cli import detect as detect_cli
    from exlx_autocfg.facts import detect as detection

    assert detect_cli.DEFAULT_TIMEOUT_S == detection.DEFAULT_TIMEOUT_S  # the CLI keeps its own copy


def test_public_api_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_nvml(monkeypatch, "h100")
    facts = exlx_autocfg.detect(no_import=True)
    assert isinstance(facts, Facts)
    assert Facts.from_json(facts.to_json()) == facts
    assert facts.gpu.gpus[0].compute_capability == "9.0" and facts.gpu.cuda_driver_version == "12.8"


def test_end_to_end_with_hanging_and_crashing_imports(tmp_path: Path) -> None:
    """The console script in a child: flash-attn hangs, triton segfaults; detect finishes and says so."""
    site = tmp_path / "site"
    make_package(site, "flash-attn", "2.6.3", BEHAVIOURS["hang"], "flash_attn")
    make_package(site, "triton", "3.1.0", BEHAVIOURS["segfault"])
    env = fake_nvml_env("3090+p40", base=child_env(site, EXLX_CACHE_DIR=str(tmp_path / "cache")))
    start = time.monotonic()
    proc = subprocess.run([str(EXLX), "detect", "--json", "--timeout", "5"], capture_output=True, text=True,
                          env=env, timeout=60)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    facts = Facts.from_json(proc.stdout)
    flash, triton = facts.lib("flash-attn"), facts.lib("triton")
    assert flash.import_status == "timeout" and "did not finish within" in (flash.import_error or "")
    assert triton.import_status == "crashed" and "SIGSEGV" in (triton.import_error or "")
    assert any(p.startswith("flash-attn 2.6.3: import timeout") for p in facts.problems)
    assert [g.cuda_index for g in facts.gpu.gpus] == [1, 0]  # the fake NVML in the CLI's own process
    assert took < 15
