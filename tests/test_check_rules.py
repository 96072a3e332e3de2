"""The pure side of `check`: rules lookups and verdicts on what-if facts (GPU table + assumed versions).

The real broken environments (probe + child imports) are in test_check_envs.py; these tests cover the
combinations no machine here can host (CUDA torch, old GPUs, driver mismatches) through C's what-if facts.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exlx_autocfg.checks import CHECKS, parse_requirements, run_checks
from exlx_autocfg.checks import rules as R
from exlx_autocfg.checks.stack import kernel_coverage
from exlx_autocfg.checks.verdict import STATUSES, CheckReport, Verdict
from exlx_autocfg.errors import UsageError
from exlx_autocfg.facts.what_if import gpu_table, what_if_facts


def verdicts(gpus, assume=(), **kw):
    return run_checks(what_if_facts(list(gpus), list(assume)), **kw)


# ------------------------------------------------------------------------------------------- rules data


def test_exllamav2_wheel_for_torch_cuda_and_python():
    w = R.exllamav2_wheel("0.3.2", "2.9.1+cu128", "12.8", None, "3.11.7")
    assert w.file == "exllamav2-0.3.2+cu128.torch2.9.0-cp311-cp311-linux_x86_64.whl"
    assert w.url == ("https://github.com/turboderp-org/exllamav2/releases/download/v0.3.2/" + w.file)
    # Same CUDA major when the exact variant was not built (torch 2.6 cu126 -> the cu124 wheel).
    assert R.exllamav2_wheel("0.3.2", "2.6.0+cu126", "12.6", None, "3.12").tag == "cu124"
    assert R.exllamav2_wheel("0.3.2", "2.8.0+rocm6.4", None, "6.4", "3.11").tag == "rocm6.4"
    assert R.exllamav2_wheel("0.3.2", "2.13.0+cu130", "13.0", None, "3.11") is None  # no wheel for 2.13
    assert R.exllamav2_wheel("0.3.2", "2.2.2+cu121", "12.1", None, "3.11") is None  # 2.2.2: py3.10 only
    assert R.exllamav2_wheel("0.3.2", "2.5.0+cu121", "12.1", None, "3.13", windows=True) is None


def test_flash_attn_wheel_name_and_window():
    w = R.flash_attn_wheel("2.8.0+cu128", "12.8", "3.11.7", True)
    assert w.file == "flash_attn-2.8.3+cu12torch2.8cxx11abiTRUE-cp311-cp311-linux_x86_64.whl"
    assert R.flash_attn_wheel("2.3.1+cu118", "11.8", "3.10", False).file.startswith(
        "flash_attn-2.6.3+cu11torch2.3cxx11abiFALSE"
    )
    # Inside xformers 0.0.31's window (<= 2.8.0) there is no official wheel for torch 2.7.
    assert R.flash_attn_wheel("2.7.1+cu128", "12.8", "3.11", True, ["2.7.1", "2.8.0"]) is None
    assert R.flash_attn_wheel("2.13.0", None, "3.11", True) is None


@given(
    cc=st.tuples(st.integers(5, 12), st.integers(0, 9)),
    extra=st.lists(
        st.sampled_from(
            [
                "sm_50",
                "sm_60",
                "sm_70",
                "sm_75",
                "sm_80",
                "sm_86",
                "sm_90",
                "sm_90a",
                "sm_100",
                "sm_120",
                "compute_80",
                "compute_120",
            ]
        ),
        max_size=6,
    ),
)
def test_kernel_coverage_properties(cc, extra):
    own = f"sm_{cc[0]}{cc[1]}"
    assert kernel_coverage([own, *extra], cc) == "sass"  # a cubin for the exact CC always runs
    base = kernel_coverage(extra, cc)
    more = kernel_coverage([*extra, "compute_50"], cc)
    rank = {None: 0, "ptx": 1, "sass": 2}
    assert rank[more] >= rank[base]  # adding entries never loses coverage
    if base == "sass":  # a cubin runs only within its major
        assert any(e.startswith(f"sm_{cc[0]}") for e in extra)


def test_kernel_coverage_arch_specific_variants_only_on_their_cc():
    assert kernel_coverage(["sm_90a"], (9, 0)) == "sass"
    assert kernel_coverage(["sm_90a"], (9, 2)) is None
    assert kernel_coverage(["sm_80", "compute_80"], (8, 9)) == "sass"
    assert kernel_coverage(["sm_80", "compute_80"], (9, 0)) == "ptx"
    assert kernel_coverage(["sm_70", "sm_75"], (6, 1)) is None


# -------------------------------------------------------------------------------------------- verdicts


def test_v100_with_xformers_031_fails_and_names_the_gpu_floor():
    report = verdicts(["v100-16gb"], ["torch==2.7.1+cu126", "xformers==0.0.31.post1"])
    v = report.verdict("xformers")
    assert v.status == "fail"
    assert "V100" in v.reason and "7.0" in v.reason and "7.5" in v.reason
    # No release is built for torch 2.7.1 and still supports CC 7.0: the fix switches xformers off and
    # names the last release for Volta.
    assert "EXLLAMA_NO_XFORMERS=1" in v.fix and "0.0.30" in v.fix and "2.7.0" in v.fix
    assert v.switches == {"EXLLAMA_NO_XFORMERS": "1"}


def test_v100_with_xformers_030_on_its_torch_passes():
    v = verdicts(["v100-16gb"], ["torch==2.7.0+cu126", "xformers==0.0.30"]).verdict("xformers")
    assert v.status == "pass", v.reason


def test_p40_with_flash_attn_fails_with_the_switch():
    report = verdicts(["p40"], ["torch==2.6.0+cu124", "flash-attn==2.7.4.post1"])
    v = report.verdict("flash-attn")
    assert v.status == "fail"
    assert "P40" in v.reason and "8.0" in v.reason and "Ampere" in v.reason
    assert "EXLLAMA_NO_FLASH_ATTN=1" in v.fix
    assert report.switches["EXLLAMA_NO_FLASH_ATTN"] == "1"


def test_mixed_3090_p40_still_fails_flash_attn():
    v = verdicts(["3090", "p40"], ["flash-attn==2.7.4.post1"]).verdict("flash-attn")
    assert v.status == "fail" and "P40" in v.reason and "3090" not in v.reason


def test_flash_attn_thresholds_warn():
    old = verdicts(["3090"], ["flash-attn==2.1.0"]).verdict("flash-attn")
    assert old.status == "warn" and "2.2.1" in old.reason
    unpaged = verdicts(["3090"], ["flash-attn==2.5.6"]).verdict("flash-attn")
    assert unpaged.status == "warn" and "2.5.7" in unpaged.reason and "batch size 1" in unpaged.reason
    ok = verdicts(["3090"], ["flash-attn==2.7.4.post1"]).verdict("flash-attn")
    assert ok.status == "pass" and "paged" in ok.reason


def test_xformers_flash_window_fails_with_both_ways_out():
    v = verdicts(
        ["3090"], ["torch==2.7.1+cu128", "xformers==0.0.31.post1", "flash-attn==2.8.0.post2"]
    ).verdict("xformers")
    assert v.status == "fail" and "2.8.0.post2" in v.reason and "2.7.1..2.8.0" in v.reason
    assert "XFORMERS_IGNORE_FLASH_VERSION_CHECK=1" in v.fix
    assert "flash-attn==2.8.0 " in v.fix  # a build inside the window, not the installed post-release


def test_xformers_built_for_other_torch_pins_the_release_for_this_torch():
    v = verdicts(["3090"], ["torch==2.9.0+cu126", "xformers==0.0.30"]).verdict("xformers")
    assert v.status == "fail" and "2.7.0" in v.reason and "2.9.0" in v.reason
    assert v.fix.startswith(
        "pip install --no-deps xformers==0.0.33.post1 --index-url https://download.pytorch.org/whl/cu126"
    )
    assert "replaces torch" in v.fix  # says why --no-deps


def test_blackwell_xformers_warns_about_cutlass():
    v = verdicts(["rtx-5090"], ["torch==2.9.0+cu128", "xformers==0.0.33.post1"]).verdict("xformers")
    assert v.status == "warn" and "cutlass" in v.reason


def test_torch_wheel_without_kernels_for_the_gpu():
    v = verdicts(["p40"], ["torch==2.8.0+cu128"]).verdict("torch-arch")
    assert v.status == "fail" and "P40" in v.reason and "sm_70" in v.reason
    assert "whl/cu126" in v.fix


def _with_driver(facts, driver_cuda, driver="550.54.14"):
    facts = copy.deepcopy(facts)
    facts.what_if = False
    facts.gpu.cuda_driver_version = driver_cuda
    facts.gpu.driver_version = driver
    return facts


def test_driver_older_than_torch_cuda():
    base = what_if_facts(["3090"], ["torch==2.8.0+cu128"])
    major = run_checks(_with_driver(base, "11.8", "520.61.05")).verdict("torch")
    assert major.status == "fail" and "520.61.05" in major.reason and "11.8" in major.reason
    assert ">= 570.26" in major.fix and "whl/cu1" not in major.fix  # no torch 2.8 build for CUDA 11
    minor = run_checks(_with_driver(base, "12.6", "560.28.03")).verdict("torch")
    assert minor.status == "warn" and "minor-version" in minor.reason
    assert "whl/cu126" in minor.fix  # the newest torch 2.8 variant this driver runs
    assert run_checks(_with_driver(base, "12.9", "575.51.03")).verdict("torch").status == "pass"


def test_rocm_torch_on_nvidia_fails():
    nv = verdicts(["3090"], ["torch==2.6.0+rocm6.2.4"]).verdict("torch")
    assert nv.status == "fail" and "NVIDIA" in nv.reason


def test_backend_sdpa_regression_and_versions_before_it():
    bad = verdicts(["2080-ti"], ["torch==2.6.0+cu124"]).verdict("backend")
    assert bad.status == "fail" and "sdpa" in bad.reason and "causal mask" in bad.reason
    assert "EXLLAMA_NO_SDPA=1" in bad.fix
    old = verdicts(["2080-ti"], ["torch==2.6.0+cu124", "exllamav2==0.2.8"]).verdict("backend")
    assert old.status == "pass" and "sdpa" in old.reason
    xf = verdicts(["2080-ti"], ["torch==2.6.0+cu124", "xformers==0.0.29.post3"]).verdict("backend")
    assert xf.status == "pass" and "picks xformers" in xf.reason and "EXLLAMA_NO_SDPA=1" in xf.reason


def test_exl3_advice():
    assert verdicts(["3090", "4090"]).verdict("exl3").status == "warn"
    mixed = verdicts(["3090", "p40"]).verdict("exl3")
    assert mixed.status == "pass" and "P40" in mixed.reason
    assert "ROCm" in verdicts(["mi100"]).verdict("exl3").reason


def test_required_packages_and_usage_errors():
    report = verdicts(["3090"], require=["xformers", "flash-attn>=2.5.7", "torch>=2.6"])
    assert report.verdict("xformers").status == "fail" and "--require" in report.verdict("xformers").reason
    flash = report.verdict("require:flash-attn")
    assert flash.status == "fail" and "flash-attn==2.8.3" in flash.fix  # newest wheel for torch 2.6
    assert report.verdict("require:torch").status == "pass"
    assert [r.name for r in parse_requirements(["Flash_Attn>=2.5"])] == ["flash-attn"]
    with pytest.raises(UsageError, match="unknown package"):
        parse_requirements(["numpy"])
    with pytest.raises(UsageError, match="expected a package name"):
        parse_requirements(["xformers=="])
    with pytest.raises(UsageError, match="unknown check"):
        run_checks(what_if_facts(["3090"]), skip=["nope"])


def test_exit_codes():
    def report(*statuses):
        return CheckReport(
            [Verdict(id=f"c{i}", title="", status=s, reason="r.") for i, s in enumerate(statuses)]
        )

    assert report("pass", "pass").exit_code() == 0
    assert report("pass", "warn").exit_code() == 0
    assert report("pass", "warn").exit_code(strict=True) == 3
    assert report("warn", "fail").exit_code(strict=True) == 1
    assert report("fail").exit_code() == 1


def test_json_round_trip_keeps_schema():
    report = verdicts(["p40"], ["flash-attn==2.7.4.post1"])
    again = CheckReport.from_dict(report.to_dict())
    assert again.to_dict() == report.to_dict()
    assert report.to_dict()["schema"] == 2
    assert set(report.to_dict()["summary"]) == set(STATUSES)


@settings(max_examples=40, deadline=None)
@given(
    gpu=st.sampled_from([g.id for g in gpu_table()]),
    torch=st.sampled_from(
        [
            "2.3.1+cu121",
            "2.6.0+cu124",
            "2.7.1+cu126",
            "2.8.0+cu128",
            "2.9.0+cu130",
            "2.6.0+rocm6.2.4",
            "2.13.0",
        ]
    ),
    xformers=st.sampled_from(["none", "0.0.22", "0.0.26.post1", "0.0.28.post3", "0.0.31.post1", "0.0.35"]),
    flash=st.sampled_from(["none", "2.0.9", "2.5.6", "2.6.3", "2.8.0.post2", "2.8.3"]),
    exllamav2=st.sampled_from(["0.1.4", "0.2.8", "0.3.2"]),
)
def test_every_verdict_is_well_formed(gpu, torch, xformers, flash, exllamav2):
    assume = [f"torch=={torch}", f"xformers=={xformers}", f"flash-attn=={flash}", f"exllamav2=={exllamav2}"]
    try:
        facts = what_if_facts([gpu], assume)
    except UsageError:
        return  # e.g. a CUDA torch assumed for an AMD GPU is still a valid what-if; others may refuse
    report = run_checks(facts, require=["xformers", "flash-attn>=2.5.7", "exllamav3"])
    assert [v.id for v in report.verdicts][: len(CHECKS)] == list(CHECKS)
    for v in report.verdicts:
        assert v.status in STATUSES
        assert v.reason and v.reason.endswith(".") and "\n" not in v.reason, v
        if v.status == "fail":
            assert v.fix, f"{v.id} fails without a fix: {v.reason}"
    assert report.exit_code() == (1 if report.failed else 0)


def test_public_api_points_at_the_checks():
    import exlx_autocfg
    from exlx_autocfg import checks

    assert exlx_autocfg.check is checks.check


def test_bad_what_if_is_a_usage_error_before_any_probe(capsys):
    from exlx_autocfg import cli

    assert cli.run(["check", "--gpu", "nosuchgpu"]) == 2
    assert cli.run(["check", "--assume", "xformers"]) == 2
    err = capsys.readouterr().err
    assert "unknown GPU" in err and "--assume" in err and "Traceback" not in err
