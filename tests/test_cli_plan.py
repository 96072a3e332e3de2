"""`exlx-autocfg plan`: readable output, --json, and one-line errors with stable exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from exlx_autocfg.cli import run
from exlx_autocfg.cli.planopts import plan_from_options
from exlx_autocfg.errors import UsageError
from exlx_autocfg.facts.types import Facts, PythonFacts

YI = "nous-capybara-34b@4.0bpw"


def plan_cli(capsys, *args):
    code = run(["plan", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_readable_output_has_decisions_table_and_bars(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "140")
    code, out, err = plan_cli(capsys, YI, "--gpu", "2080ti-22gb", "--assume", "xformers==0.0.29.post3")
    assert code == 0, err
    assert "Plan: backend xformers, cache Q6" in out  # the most precise cache past 32k (profiles/policy.toml)
    assert "Decisions" in out and "✗ sdpa: WRONG on exllamav2 0.3.2" in out
    assert "Max context per cache mode" in out and "◀ chosen" in out
    assert "VRAM per GPU" in out and "weights" in out and "free" in out and "█" in out
    assert "what-if plan" in out


def test_json_document(capsys):
    code, out, _ = plan_cli(capsys, "llama3-70b@2.5bpw", "--gpu", "3090x2", "--context", "16384", "--json")
    assert code == 0
    doc = json.loads(out)
    assert (
        doc["schema"] == 2
        and doc["settings"]["max_seq_len"] == 16384
        and len(doc["settings"]["gpu_split"]) == 2
    )
    assert doc["model"]["layers"] == 80 and doc["model"]["kv_heads"] == 8
    assert set(doc["max_seq_len_by_cache_mode"]) == {"FP16", "Q8", "Q6", "Q4"}
    assert doc["reasons"][0]["decision"] == "backend"
    assert all(m["total_bytes"] <= m["budget_bytes"] for m in doc["memory"])


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--gpu", "RTX 3080"], 2, "unknown GPU 'RTX 3080' (close matches: rtx-3090"),
        (["--gpu", "3090", "--assume", "flash-attn>=2.6"], 2, "--assume 'flash-attn>=2.6': expected PKG=="),
        (
            ["--gpu", "t4", "--assume", "flash-attn==2.7.4", "--backend", "flash_attn"],
            2,
            "backend flash_attn is not valid here: Tesla T4 has compute capability 7.5 < 8.0",
        ),
        (["--gpu", "3090", "--backend", "cudnn"], 2, "unknown backend 'cudnn'"),
        (["--gpu", "3090", "--cache", "Q3"], 2, "choose one of FP16, Q8, Q6, Q4"),
        (["--gpu", "3060", "--context", "4096"], 0, None),
        (["--gpu", "1080ti", "--cache", "FP16"], 1, "model weights need"),
    ],
)
def test_bad_input_is_one_line_with_exit_code(capsys, args, code, needle):
    model = "llama3-8b@4.0bpw" if code == 0 else ("llama3-70b@4.0bpw" if code == 1 else YI)
    got, _, err = plan_cli(capsys, model, *args)
    assert got == code, err
    if needle:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("exlx-autocfg: error: ") and needle in lines[0]
        assert "Traceback" not in err


def test_model_errors_are_one_line(capsys, tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    code, _, err = plan_cli(capsys, str(tmp_path), "--gpu", "3090")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "config.json" in err


def test_list_gpus(capsys):
    code = run(["plan", "--list-gpus"])
    out = capsys.readouterr().out
    assert code == 0 and "rtx-2080-ti-22gb" in out and "22528 MiB" in out and "gfx942" in out


def test_plan_from_options_without_a_gpu_says_so():
    """The shared helper with facts from a machine without GPUs (what `detect()` reports here)."""
    facts = Facts(python=PythonFacts(executable=sys.executable, version="3.11"))
    facts.gpu.problems.append("NVML library not found (libnvidia-ml.so.1)")
    with pytest.raises(UsageError) as info:
        plan_from_options("llama3-8b@4.0bpw", facts=facts)
    line = info.value.one_line()
    assert "no GPU to plan for on this machine (NVML library not found" in line and "--gpu" in line


@pytest.mark.slow
def test_end_to_end_subprocess():
    exe = os.path.join(os.path.dirname(sys.executable), "exlx-autocfg")
    proc = subprocess.run(
        [exe, "plan", "yi-34b@4.0bpw", "--gpu", "p40x2", "--json"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    # A bare --gpu plan assumes the libraries recommended for the card: xformers on Pascal, not flash-attn.
    s = doc["settings"]
    assert s["backend"] == "xformers" and s["no_flash_attn"] is True and s["no_sdpa"] is True
    assert "xformers 0.0.29.post3" in " ".join(w["message"] for w in doc["warnings"])
    assert "plan.what_if" in {w["code"] for w in doc["warnings"]}
    bad = subprocess.run(
        [exe, "plan", "yi-34b@4.0bpw", "--gpu", "p4O"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_what_if_mixed_rig_plan_warns_about_the_order(capsys):
    from exlx_autocfg.cli import run

    assert run(["plan", "llama3-70b", "--gpu", "3090", "--gpu", "p40", "--json"]) == 0
    warnings = json.loads(capsys.readouterr().out)["warnings"]
    assert any(
        w["message"].startswith("what-if rig of different GPUs: taken in the --gpu order")
        and w["code"] == "plan.what_if.gpu_order"
        for w in warnings
    )
    assert run(["plan", "llama3-8b", "--gpu", "2x3090", "--json"]) == 0
    assert "plan.what_if.gpu_order" not in {
        w["code"] for w in json.loads(capsys.readouterr().out)["warnings"]
    }
