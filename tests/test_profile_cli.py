"""`exlx-autocfg profile`, `show` and `verify`: exit codes, one-line errors, where files land."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from exlx_autocfg.cli import run
from exlx_autocfg.profile.format import machine_identity, profile_from_plan, read_profile, write_profile
from tests.support import profile_samples as samples
from tests.support.model_dirs import make_model_dir


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("m"), "llama3-8b", quant="exl2", bpw=4.0)


def test_profile_writes_out_and_show_reads_it(model, tmp_path, capsys):
    out = tmp_path / "sub" / "p.toml"
    assert run(["profile", str(model), "--gpu", "2080ti", "--context", "4096", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote {out}\n")
    profile = read_profile(out)
    assert profile.settings.max_seq_len == 4096 and profile.request["context"] == 4096
    assert profile.computed_for.model.dir == str(model) and profile.computed_for.what_if
    assert profile.computed_for.gpus[0].name == "NVIDIA GeForce RTX 2080 Ti"
    assert profile.reasons and profile.reasons[0].why
    assert run(["show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert f"profile {out}" in shown and "max_seq_len         4096" in shown
    assert f"backend             {profile.settings.backend}" in shown and "\nwhy\n" in shown


def test_profile_default_location(model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert run(["profile", str(model), "--gpu", "p40", "--context", "2048"]) == 0
    written = capsys.readouterr().out.splitlines()[0].removeprefix("wrote ")
    profile = read_profile(written)
    assert os.path.dirname(written) == str(tmp_path / "exlx-autocfg" / "profiles")
    cf = profile.computed_for
    assert written.endswith(f"-{cf.model.fingerprint[:12]}-{cf.machine}.toml")


@pytest.mark.parametrize(("edit", "message"), [
    (('backend = "', 'backend = "flash'), "settings.backend: 'flash"),
    (("max_seq_len = 4096", "max_seq_len = -4096"), "settings.max_seq_len: must be a positive integer"),
    (("cache_mode =", "cachemode ="), "settings.cachemode: unknown key (did you mean settings.cache_mode?)"),
])
def test_bad_hand_edits_are_one_line_exit_2(model, tmp_path, capsys, edit, message):
    path = tmp_path / "p.toml"
    assert run(["profile", str(model), "--gpu", "2080ti", "--context", "4096", "--out", str(path)]) == 0
    path.write_text(path.read_text().replace(*edit, 1))
    capsys.readouterr()
    for command in (["show", str(path)], ["verify", str(path)]):
        assert run(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith(f"exlx-autocfg: error: profile {path}: {message}"), err


def test_write_failure_is_one_line_and_leaves_nothing(model, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert run(["profile", str(model), "--gpu", "2080ti", "--out", str(blocker / "p.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"exlx-autocfg: error: cannot write profile {blocker / 'p.toml'}")
    assert err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_verify_current_and_stale(tmp_path, monkeypatch, capsys):
    facts = samples.facts()
    model_dir = make_model_dir(tmp_path, "tiny-llama", quant="fp16")
    from exlx_autocfg.model.load import load_model_spec

    path = write_profile(profile_from_plan(samples.plan(model=load_model_spec(model_dir).summary()), facts),
                         tmp_path / "p.toml")
    profile_from_plan_as_written = read_profile(path)
    written = path.read_bytes()
    calls = []

    def fake_detect(python=None, **kw):
        calls.append(python)
        return fresh

    monkeypatch.setattr("exlx_autocfg.facts.detect.detect", fake_detect)
    fresh = facts
    assert run(["verify", str(path)]) == 0
    assert calls == [None]  # the recorded interpreter (/opt/tabby/...) does not exist here: probe this one
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("note: the profile's interpreter /opt/tabby/venv/bin/python no longer exists: "
                      "probed this one instead")
    assert out[1].startswith(f"current: {path}")
    fresh = samples.facts(gpus=[samples.gpu_2080ti(total_mib=11264)])
    assert run(["verify", str(path), "--python", sys.executable]) == 1
    assert calls[-1] == sys.executable
    out = capsys.readouterr().out  # --python given: no note
    assert out.splitlines()[:2] == [f"stale: {path}", "  - GPU 0 (NVIDIA GeForce RTX 2080 Ti) has less VRAM: "
                                    "11.0 GiB, profile computed for 22.0 GiB"]
    fresh = facts
    shutil.rmtree(model_dir)
    assert run(["verify", str(path)]) == 1
    assert f"model directory {model_dir} no longer exists" in capsys.readouterr().out
    # verify only reads: the profile is byte for byte what was written, its machine identity the facts'
    assert read_profile(path) == profile_from_plan_as_written
    assert read_profile(path).computed_for.machine == machine_identity(facts)
    assert path.read_bytes() == written


@pytest.mark.slow
def test_console_script_end_to_end(tmp_path):
    """One real process: a hand-edited profile gives one line on stderr and exit 2, never a traceback."""
    path = tmp_path / "p.toml"
    write_profile(profile_from_plan(samples.plan(), samples.facts()), path)
    path.write_text(path.read_text().replace('cache_mode = "Q6"', 'cache_mode = "Q3"'))
    exe = Path(sys.executable).parent / "exlx-autocfg"  # the console script installed beside python
    proc = subprocess.run([str(exe), "show", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr == (f"exlx-autocfg: error: profile {path}: settings.cache_mode: 'Q3' is not one of "
                           "FP16, Q8, Q6, Q4\n")
    assert proc.stdout == ""


def test_verify_a_what_if_profile_compares_with_this_machine(tmp_path, monkeypatch, capsys):
    model_dir = make_model_dir(tmp_path, "tiny-llama", quant="fp16")
    path = tmp_path / "p.toml"
    assert run(["profile", str(model_dir), "--gpu", "3090", "--out", str(path)]) == 0
    assert read_profile(path).computed_for.what_if
    calls = []

    def fake_detect(python=None, **kw):
        calls.append(python)
        return samples.facts()  # this machine: a 2080 Ti, not the 3090 the what-if profile assumed

    monkeypatch.setattr("exlx_autocfg.facts.detect.detect", fake_detect)
    capsys.readouterr()
    assert run(["verify", str(path)]) == 1
    assert calls == [None]  # probes this interpreter: a what-if profile has no interpreter of its own
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("note: the profile is a what-if plan")
    replan = next(line for line in out if "re-plan with:" in line)
    assert "--python" not in replan and f"--out {path}" in replan


def test_out_under_a_file_names_the_file(model, tmp_path, capsys):
    blocker = tmp_path / "plain-file"
    blocker.write_text("x")
    assert run(["profile", str(model), "--gpu", "3090", "--out", str(blocker / "p.toml")]) == 2
    assert f"{blocker} is not a directory" in capsys.readouterr().err
