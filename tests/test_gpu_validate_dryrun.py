"""bench/gpu_validate.py --dry-run (what CI can run of the GPU validation) and its device wrapper."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_validate.py"
WRAPPER = REPO / "bench" / "device_run.sh"


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_validate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_validate"] = module
    spec.loader.exec_module(module)
    return module


gv = _load_script()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One full dry run, in-process (exllamav2 is imported once per test session)."""
    out = tmp_path_factory.mktemp("out")
    work = tmp_path_factory.mktemp("work")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = gv.main(["--dry-run", "--out", str(out), "--work", str(work)])
    return rc, out, work, buf.getvalue()


def test_dry_run_completes_and_writes_its_files(dry_run):
    rc, out, _, stdout = dry_run
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["facts.json", "plans.json", "table.txt", "validate.json"]
    doc = json.loads((out / "validate.json").read_text())
    assert doc["dry_run"] is True
    assert list(doc["steps"]) == ["probe", "build", "memory", "backends"]
    # The short table is what is printed last.
    table = (out / "table.txt").read_text().strip()
    assert stdout.strip().endswith(table)
    assert table.splitlines()[0].split() == ["step", "status", "seconds", "summary"]


def test_dry_run_probe_agrees_with_this_machine(dry_run):
    _, out, _, _ = dry_run
    probe = json.loads((out / "validate.json").read_text())["steps"]["probe"]
    assert probe["status"] == "ok", probe
    names = {c["name"] for c in probe["checks"]}
    assert {"gpu count", "lib torch", "lib exllamav2"} <= names
    facts = json.loads((out / "facts.json").read_text())
    assert facts["libraries"]["exllamav2"]["version"] == "0.3.2"


def test_dry_run_writes_the_model_and_plans_every_cache_mode(dry_run):
    _, out, work, _ = dry_run
    memory = json.loads((out / "validate.json").read_text())["steps"]["memory"]
    assert memory["status"] == "ok", memory
    model_dir = work / "testmodel-tiny"
    assert memory["data"]["model"]["bytes"] == sum(f.stat().st_size for f in model_dir.iterdir())
    assert (model_dir / "model.safetensors").stat().st_size > 2 * memory["data"]["model"]["params"]
    plans = memory["data"]["plans"]
    modes, kinds = ("FP16", "Q8", "Q6", "Q4"), ("planned", "fixed")
    assert sorted(plans) == sorted(f"{m}/{k}" for m in modes for k in kinds)
    for key, row in plans.items():
        assert row["cache_mode"] == key.split("/")[0]
        assert row["weights"] > 0 and row["cache"] > 0 and row["total"] <= row["budget"]
    assert plans["FP16/fixed"]["max_seq_len"] == 4096
    # Same context, coarser cache: fewer K/V bytes (the quantized modes' FP16 staging is a part of its own).
    kv = [plans[f"{m}/fixed"]["parts"]["cache"] for m in modes]
    assert kv == sorted(kv, reverse=True) and len(set(kv)) == 4
    saved = json.loads((out / "plans.json").read_text())
    assert saved["Q4/planned"]["settings"]["cache_mode"] == "Q4"


def test_dry_run_shows_the_sdpa_causal_mask_defect_on_cpu(dry_run):
    _, out, _, _ = dry_run
    backends = json.loads((out / "validate.json").read_text())["steps"]["backends"]
    assert backends["status"] == "ok", backends
    rows = backends["data"]["rows"]
    assert {r["device"] for r in rows} == {"cpu"} and len(rows) == 4
    for row in rows:
        if row["path"] == "matmul":
            assert row["verdict"] == "causal" and row["err_vs_causal"] < 0.01
        else:  # exllamav2 0.3.2's SDPA branch passes no causal mask (compat-facts.md 6.6)
            assert row["verdict"] == "NON-CAUSAL" and row["err_vs_noncausal"] < 0.01
            assert row["err_vs_causal"] > 1.0
    assert backends["data"]["sdpa_defect_shown"] is True


def test_build_step_is_skipped_not_failed_in_dry_run(dry_run):
    _, out, _, _ = dry_run
    build = json.loads((out / "validate.json").read_text())["steps"]["build"]
    assert build["status"] == "skipped" and "dry run" in build["summary"]


def test_a_failing_step_is_recorded_and_the_others_still_run(tmp_path, monkeypatch, capsys):
    def broken_probe(ctx, result):
        raise RuntimeError("\nNVML: driver/library version mismatch\nmore detail")

    monkeypatch.setattr(gv, "step_probe", broken_probe)
    rc = gv.main(["--dry-run", "--out", str(tmp_path), "--work", str(tmp_path / "w"),
                  "--steps", "probe,memory"])
    assert rc == 0
    steps = json.loads((tmp_path / "validate.json").read_text())["steps"]
    assert steps["probe"]["status"] == "error"
    assert steps["probe"]["error"] == "RuntimeError: NVML: driver/library version mismatch"
    assert steps["memory"]["status"] == "error"  # it ran: wrote the model, then had no facts to plan with
    assert "no facts" in steps["memory"]["error"]
    assert (tmp_path / "w" / "testmodel-tiny" / "config.json").exists()
    assert steps["backends"]["status"] == "skipped"
    assert "RuntimeError: NVML" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--cache-modes", "Q5"], ["--steps", "probe,bogus"], ["--fixed-len", "0"]])
def test_usage_errors_exit_2(tmp_path, argv, capsys):
    assert gv.main(["--dry-run", "--out", str(tmp_path), *argv]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "validate.json").exists()


def test_no_results_folder_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.delenv("OUT", raising=False)
    assert gv.main(["--dry-run"]) == 2
    assert "--out" in capsys.readouterr().err


def test_first_compiler_error_finds_the_nvcc_line():
    log = (
        "[1/47] c++ -MMD -MF ext_bindings.o.d ...\n"
        "[2/47] /usr/local/cuda/bin/nvcc ... -c q_gemm.cu -o q_gemm.cuda.o\n"
        "FAILED: q_gemm.cuda.o\n"
        "/tmp/exllamav2/exllamav2_ext/cuda/q_gemm.cu(12): error: identifier \"half2\" is undefined\n"
        "1 error detected in the compilation of \"q_gemm.cu\".\n"
        "ninja: build stopped: subcommand failed.\n"
    )
    assert gv.first_compiler_error(log).endswith('error: identifier "half2" is undefined')
    assert gv.first_compiler_error("FAILED: a.o\nninja: build stopped") == "FAILED: a.o"
    assert gv.first_compiler_error("all good") is None


def test_classify_needs_a_clear_winner():
    assert gv.classify(0.001, 3.0, 3.0) == "causal"
    assert gv.classify(3.0, 0.0, 3.0) == "NON-CAUSAL"
    assert gv.classify(1.0, 1.2, 2.0) == "matches neither"


def _wheel(dest: Path, name: str, version: str) -> Path:
    """A minimal valid pure-Python wheel (what the device gets for exllamav2 and friends)."""
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{name}-{version}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                            "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    files[f"{name}-{version}.dist-info/RECORD"] = "\n".join(record) + "\n"
    wheel = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)
    return wheel


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash")
def test_device_wrapper_installs_carried_wheels_and_runs_the_dry_run(tmp_path):
    whl = tmp_path / "whl"
    whl.mkdir()
    _wheel(whl, "exlx_carried_probe", "1.2.3")
    site, out = tmp_path / "site", tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "EXLX_WHL_DIR": str(whl), "EXLX_SITE": str(site),
           "EXLX_WORK": str(tmp_path / "work"), "EXLX_PYTHON": sys.executable, "EXLX_VALIDATE_LIMIT": "120"}
    proc = subprocess.run(["bash", str(WRAPPER), "--dry-run", "--steps", "backends"], env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    log = (out / "run.log").read_text()
    assert "carried wheels: 1 installed" in log and "exlx_carried_probe-1.2.3" in log
    assert (site / "exlx_carried_probe" / "__init__.py").exists()
    # The package runs as its wheel lays it out: probe/ and profiles/ inside it.
    assert (site / "exlx_autocfg" / "probe" / "exlx_probe.py").exists()
    assert (site / "exlx_autocfg" / "profiles").is_dir()
    doc = json.loads((out / "validate.json").read_text())
    assert doc["machine"]["exlx_autocfg"] == str(site / "exlx_autocfg")
    assert doc["steps"]["backends"]["status"] == "ok"
    assert sorted(p.name for p in out.iterdir()) == ["run.log", "table.txt", "validate.json"]
    assert log.rstrip().endswith("== device_run.sh exit 0")


def test_device_wrapper_refuses_without_out(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run(["bash", str(WRAPPER), "--dry-run"], env=env, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2
    assert "OUT is not set" in proc.stderr


def test_gpu_result_table_renders_predicted_vs_measured():
    """The table a GPU run prints, from results shaped as the GPU path records them."""
    gib = 1024**3
    predicted = {"weights": 2 * gib, "cache": gib, "scratch": gib // 4, "total": 4 * gib,
                 "max_seq_len": 131072}
    measured = {"parts": {"weights": 2 * gib + 10 * 2**20, "cache": gib, "scratch": 2**20},
                "peak_allocated": 3 * gib + gib // 5, "nvml_used": 3 * gib + gib // 2}
    rows = gv.compare(predicted, measured)
    by_part = {r["part"]: r for r in rows}
    assert by_part["cache"]["error_pct"] == 0.0
    assert by_part["weights"]["error_pct"] == pytest.approx(0.49, abs=0.01)
    assert by_part["scratch"]["measured"] == gib // 5 - 10 * 2**20
    assert by_part["NVML total"]["error_pct"] == -12.5
    memory = gv.StepResult("memory", status="ok", data={
        "plans": {"Q4/planned": predicted},
        "loads": {"Q4/planned": {**measured, "rows": rows}, "Q4/fixed": {"error": "LoaderError: boom"}}})
    backends = gv.StepResult("backends", status="ok", data={"rows": [
        {"level": "model", "device": "cuda", "path": "sdpa", "q_len": 97, "err_vs_causal": 4.2,
         "err_vs_noncausal": 0.01, "verdict": "NON-CAUSAL"}]})
    table = gv.render_table({"memory": memory, "backends": backends})
    assert "Q4/planned" in table and "131072" in table and "+0.49" in table and "-12.50" in table
    assert "LoaderError: boom" in table
    assert "model      cuda   sdpa       97" in table


def test_a_build_past_its_limit_is_killed_with_its_children(tmp_path):
    """A timed-out JIT build must not leave ninja/nvcc running (they hold the CPUs and torch's lock)."""
    pidfile = tmp_path / "grandchild.pid"
    script = f"echo started; sleep 30 & echo $! > {pidfile}; wait"
    out, rc = gv.run_in_own_group(["bash", "-c", script], dict(os.environ), 1.0)
    assert rc is None and out.startswith("started")
    pid = int(pidfile.read_text())
    for _ in range(100):  # killed at once; reaping by init may take a moment
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"the build's child {pid} survived the timeout")
