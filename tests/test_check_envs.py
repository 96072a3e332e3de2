"""`check` on REAL broken environments built here: the real probe in the real interpreter, real xformers
releases on PYTHONPATH, the real exllamav2 0.3.2 wheel (with and without the stand-in extension), a
flash-attn package whose import raises the ABI error, and a real child `import exllamav2`.

Only the hardware boundary is faked (NVML, through tests/support/fake_pynvml.py). Each environment is
probed once per module (a probe with xformers costs seconds); the tests read the shared reports.

Golden files (tests/golden/check/<check id>.json): one verdict per check, paths and timings normalised.
Regenerate with `EXLX_UPDATE_GOLDEN=1 python -m pytest tests/test_check_envs.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exlx_autocfg import cli
from exlx_autocfg.checks import CHECKS, check, import_plan, run_checks
from exlx_autocfg.checks.importer import try_import
from exlx_autocfg.checks.render import render_text
from exlx_autocfg.facts.detect import detect
from exlx_autocfg.facts.what_if import what_if_facts
from exlx_autocfg.findings import CODES
from exlx_autocfg.serde import to_data
from tests.support.envs import xformers_site
from tests.support.fake_pynvml import use_fake_nvml
from tests.support.standin import STANDIN_SITE

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden" / "check"
FLASH_ABI_ERROR = (
    "/venv/lib/python3.11/site-packages/flash_attn_2_cuda.cpython-311-x86_64-linux-gnu.so: "
    "undefined symbol: _ZN3c104cuda9SetDeviceEi"
)


def _path_without_nvcc() -> str:
    """PATH minus every directory holding nvcc (the venv's ninja and the system compiler stay)."""
    keep = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "nvcc").exists()]
    return os.pathsep.join(keep)


def _flash_attn_standin(root: Path, version: str = "2.6.3") -> Path:
    """A flash-attn distribution whose import fails as a build for another torch does (exllamav2#522)."""
    pkg = root / "flash_attn"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        f"__version__ = {version!r}\n"
        "# flash_attn/__init__.py imports its CUDA module first thing; built for another torch it fails so:\n"
        f"raise ImportError({FLASH_ABI_ERROR!r})\n"
    )
    dist = root / f"flash_attn-{version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: flash_attn\nVersion: {version}\n")
    (dist / "RECORD").write_text("")
    return root


@pytest.fixture(scope="module")
def cpu_xformers_026():
    """CPU torch 2.13 + real xformers 0.0.26.post1 (built for torch 2.3.0) + the exllamav2 wheel without a
    prebuilt extension, nvcc off PATH and CUDA_HOME unset. Returns (report, facts)."""
    site = xformers_site("0.0.26.post1")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", str(site))
        mp.setenv("PATH", _path_without_nvcc())
        mp.delenv("CUDA_HOME", raising=False)
        mp.delenv("CUDA_PATH", raising=False)
        use_fake_nvml(mp, "none")
        facts = detect(timeout=60)
        report = check(facts=facts)  # the child import runs in this environment too
    return report, facts


@pytest.fixture(scope="module")
def flash_broken_h100(tmp_path_factory):
    """An H100 (fake NVML) machine whose flash-attn 2.6.3 was built for another torch, and exllamav2 with
    the stand-in extension. Returns (report, facts, environment)."""
    flash = _flash_attn_standin(tmp_path_factory.mktemp("flash-site"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYTHONPATH", os.pathsep.join([str(STANDIN_SITE), str(flash)]))
        use_fake_nvml(mp, "h100")
        facts = detect(timeout=60)
        report = check(facts=facts)
        env = dict(os.environ)
    return report, facts, env


# --------------------------------------------------------------------------------- xformers for another torch


def test_xformers_built_for_another_torch_fails_naming_both_versions(cpu_xformers_026):
    report, _ = cpu_xformers_026
    v = report.verdict("xformers")
    assert v.status == "fail"
    assert "0.0.26.post1" in v.reason and "2.3.0" in v.reason and "2.13.0" in v.reason
    # The release for THIS torch, pinned, with --no-deps and why.
    assert "pip install --no-deps xformers==0.0.35" in v.fix and "replaces torch" in v.fix
    assert v.switches == {"EXLLAMA_NO_XFORMERS": "1"}


def test_cpu_torch_fails_and_the_backend_check_catches_the_sdpa_fallback(cpu_xformers_026):
    report, _ = cpu_xformers_026
    torch = report.verdict("torch")
    assert torch.status == "fail" and "CPU-only" in torch.reason and "2.13.0+cpu" in torch.reason
    assert "pip install --force-reinstall torch==2.13.0" in torch.fix
    # With xformers switched off (its fix), exllamav2 0.3.2 would fall through to SDPA: wrong output.
    backend = report.verdict("backend")
    assert backend.status == "fail" and "sdpa" in backend.reason and "EXLLAMA_NO_SDPA=1" in backend.fix
    assert report.exit_code() == 1 and report.exit_code(strict=True) == 1


def test_exllamav2_without_prebuilt_extension_reports_the_jit_prerequisites(cpu_xformers_026):
    report, facts = cpu_xformers_026
    ext = report.verdict("exllamav2-ext")
    assert facts.lib("exllamav2").details["ext"] == "jit-needed"
    assert ext.status == "fail" and "JIT-compile" in ext.reason and "CUDA build of torch" in ext.reason
    # The real child import hit the JIT build and failed on its prerequisite, in torch's own words.
    imp = report.verdict("exllamav2-import")
    assert imp.status == "fail" and "CUDA_HOME" in imp.reason
    assert "EXLLAMA_NO_XFORMERS=1" in imp.reason and "JIT build lacks" in imp.fix


def test_no_nvcc_anywhere_is_named(cpu_xformers_026):
    """This machine has /usr/local/cuda, which the probe (like torch) finds without PATH; a machine without
    it reports nvcc=None. Same real facts with only that fact changed."""
    _, facts = cpu_xformers_026
    facts = facts.from_dict(facts.to_dict())
    facts.lib("exllamav2").details["jit"]["nvcc"] = None
    v = run_checks(facts).verdict("exllamav2-ext")
    assert v.status == "fail" and "nvcc" in v.reason and "CUDA_HOME" in v.reason
    assert "CUDA toolkit" in v.fix


# ------------------------------------------------------------------------------------ broken flash-attn


def test_flash_attn_with_undefined_symbol_fails_with_the_fix(flash_broken_h100):
    report, facts, _ = flash_broken_h100
    assert facts.lib("flash-attn").version == "2.6.3"
    v = report.verdict("flash-attn")
    assert v.status == "fail"
    assert "2.6.3" in v.reason and "undefined symbol" in v.reason and "import exllamav2" in v.reason
    assert "EXLLAMA_NO_FLASH_ATTN=1" in v.fix and "pip uninstall -y flash-attn" in v.fix
    assert v.switches == {"EXLLAMA_NO_FLASH_ATTN": "1"}


def test_import_with_the_plan_switches_succeeds_and_fails_without_them(flash_broken_h100):
    report, facts, env = flash_broken_h100
    v = report.verdict("exllamav2-import")
    assert v.status == "pass", v.reason
    assert v.details["env"].get("EXLLAMA_NO_FLASH_ATTN") == "1"
    assert report.verdict("exllamav2-ext").status == "pass"  # the stand-in extension is "prebuilt"
    # Without the switch, the same interpreter crashes in `import flash_attn` (exllamav2 only catches
    # ModuleNotFoundError): the switch is what makes the import work.
    switches, _ = import_plan(facts)
    switches.pop("EXLLAMA_NO_FLASH_ATTN")
    bare = try_import(facts.python.executable, switches, base_env=env)
    assert not bare.ok and "undefined symbol" in bare.error


def test_exl3_advice_on_h100(flash_broken_h100):
    report, _, _ = flash_broken_h100
    v = report.verdict("exl3")
    assert v.status == "warn" and "EXL3" in v.reason and "--skip exl3" in v.fix


# ------------------------------------------------------------------------------- what-if on a probed base


def test_what_if_v100_with_xformers_031(cpu_xformers_026):
    _, facts = cpu_xformers_026
    report = check(facts=facts, gpu=["v100-16gb"], assume=["xformers==0.0.31.post1"])
    assert report.what_if and report.verdict("exllamav2-import").details.get("skipped")
    v = report.verdict("xformers")
    assert v.status == "fail"
    assert any("V100" in s and "7.5" in s for s in [v.reason, *(f.message for f in v.also)])


def test_what_if_p40_with_flash_attn(flash_broken_h100):
    _, facts, _ = flash_broken_h100
    v = check(facts=facts, gpu=["p40"], import_test=False).verdict("flash-attn")
    assert v.status == "fail"
    assert any("P40" in s and "8.0" in s for s in [v.reason, *(f.message for f in v.also)])


# ------------------------------------------------------------------------------------------ CLI and JSON


def test_cli_json_and_exit_codes(cpu_xformers_026, tmp_path, capsys):
    _, facts = cpu_xformers_026
    path = tmp_path / "facts.json"
    path.write_text(facts.to_json())
    assert cli.run(["check", "--facts", str(path), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == 2 and [v["id"] for v in doc["verdicts"]] == list(CHECKS)
    assert all(v["code"] in CODES for v in doc["verdicts"])
    assert doc["summary"]["fail"] >= 1
    # Usage errors exit 2 with one line.
    assert cli.run(["check", "--facts", str(path), "--require", "numpy"]) == 2
    assert cli.run(["check", "--facts", str(path), "--skip", "bogus"]) == 2
    (tmp_path / "bad.json").write_text("{not json")
    assert cli.run(["check", "--facts", str(tmp_path / "bad.json")]) == 2
    assert "not a facts document" in capsys.readouterr().err


def test_strict_turns_warnings_into_exit_3(tmp_path, capsys):
    facts = what_if_facts(["3090x2"], ["torch==2.6.0+cu124", "xformers==0.0.29.post3"])
    path = tmp_path / "facts.json"
    path.write_text(facts.to_json())
    assert cli.run(["check", "--facts", str(path)]) == 0
    out = capsys.readouterr().out
    assert "WARN  exl3" in out and "-> exit 0" in out
    assert cli.run(["check", "--facts", str(path), "--strict"]) == 3
    assert (
        cli.run(
            [
                "check",
                "--facts",
                str(path),
                "--strict",
                "--skip",
                "exl3",
                "--skip",
                "torch-arch",
                "--skip",
                "exllamav2-ext",
            ]
        )
        == 0
    )


def test_console_script_end_to_end(cpu_xformers_026, tmp_path):
    _, facts = cpu_xformers_026
    path = tmp_path / "facts.json"
    path.write_text(facts.to_json())
    exe = Path(sys.executable).with_name("exlx-autocfg")
    proc = subprocess.run(
        [str(exe), "check", "--facts", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1, proc.stderr
    assert "FAIL  xformers" in proc.stdout and "fix: " in proc.stdout and proc.stderr == ""


def test_text_rendering_shows_every_check_once(cpu_xformers_026):
    report, _ = cpu_xformers_026
    text = render_text(report)
    for cid in CHECKS:
        assert sum(line.split()[1:2] == [cid] for line in text.splitlines() if line.startswith("  ")) == 1


# ------------------------------------------------------------------------------------------------ golden


def _normalise(data, replacements):
    """Drop timings; the JIT toolchain facts (nvcc/compiler paths and versions) are this machine's own."""
    if isinstance(data, dict):
        return {
            k: "<toolchain>" if k == "jit" else _normalise(v, replacements)
            for k, v in data.items()
            if k != "seconds"
        }
    if isinstance(data, list):
        return [_normalise(v, replacements) for v in data]
    if isinstance(data, str):
        for old, new in replacements:
            data = data.replace(old, new)
    return data


def test_golden_one_case_per_check(cpu_xformers_026, flash_broken_h100):
    cpu, _ = cpu_xformers_026
    flash, facts, _ = flash_broken_h100
    sources = {
        "torch": cpu,
        "torch-arch": run_checks(what_if_facts(["p40"], ["torch==2.8.0+cu128"])),
        "xformers": cpu,
        "flash-attn": flash,
        "exllamav2-ext": cpu,
        "exllamav2-import": cpu,
        "backend": cpu,
        "exl3": flash,
    }
    replacements = sorted(
        [
            (str(ROOT), "<repo>"),
            (str(Path.home()), "<home>"),
            (sys.executable, "<python>"),
            (str(Path(facts.python.executable).parent), "<venv-bin>"),
        ],
        key=lambda kv: -len(kv[0]),
    )
    update = os.environ.get("EXLX_UPDATE_GOLDEN") == "1"
    written = []
    for cid, report in sources.items():
        got = _normalise(to_data(report.verdict(cid)), replacements)
        path = GOLDEN / f"{cid}.json"
        if update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
            written.append(path.name)
            continue
        assert path.exists(), f"{path} missing: run with EXLX_UPDATE_GOLDEN=1"
        assert got == json.loads(path.read_text()), (
            f"{cid} differs from {path} (EXLX_UPDATE_GOLDEN=1 to accept)"
        )
    # Rewriting the golden files proves nothing: never let that run pass (review `git diff`, re-run).
    assert not update, f"rewrote {', '.join(written)}; review `git diff tests/golden` and re-run without it"
