"""Backend rules: each backend validates itself against facts + model + exllamav2 version (no hardware)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exlx_autocfg.errors import BackendRefusedError, UsageError
from exlx_autocfg.exl2 import BACKENDS, switches_for
from exlx_autocfg.facts.types import LibraryFacts
from exlx_autocfg.facts.what_if import what_if_facts
from exlx_autocfg.planner.backends import BackendQuery, Selection, check_name, select


def texts(s: Selection, backend: str) -> list[str]:
    return [f.message for f in s.rejected.get(backend, [])]


def codes(s: Selection, backend: str) -> list[str]:
    return [f.code for f in s.rejected.get(backend, [])]


def query(gpus, assume=(), exl2="0.3.2", softcap=False, swa=False, facts=None):
    facts = facts or what_if_facts(list(gpus), [f"exllamav2=={exl2}", *assume])
    return BackendQuery(facts, tuple(facts.gpu.gpus), exl2, softcap=softcap, sliding_window=swa)


def chosen(*args, **kwargs):
    return select(query(*args, **kwargs))


# ------------------------------------------------------------------------------------------- flash-attn


def test_flash_on_ampere_is_chosen_and_paged():
    s = chosen(["3090"], ["flash-attn==2.7.4.post1"])
    assert s.backend == "flash_attn" and s.paged
    assert s.switches == {"no_flash_attn": False, "no_xformers": True, "no_sdpa": True}


def test_flash_below_paged_version_runs_unpaged():
    s = chosen(["3090"], ["flash-attn==2.5.6"])
    assert s.backend == "flash_attn" and not s.paged


def test_flash_too_old_for_exllamav2():
    s = chosen(["3090"], ["flash-attn==2.1.1"])
    assert s.backend != "flash_attn"
    assert any("< 2.2.1" in r for r in texts(s, "flash_attn"))


def test_flash_refused_on_turing_with_reason():
    s = chosen(["2080ti-22gb"], ["flash-attn==2.7.4"])
    assert s.backend == "matmul"
    assert any("7.5 < 8.0" in r for r in texts(s, "flash_attn"))
    assert s.switches["no_flash_attn"]  # installed but unusable: exllamav2 would otherwise still call it


def test_weakest_gpu_decides():
    s = chosen(["3090", "p40"], ["flash-attn==2.7.4"])
    assert s.backend == "matmul"
    assert any("Tesla P40" in r and "6.1" in r for r in texts(s, "flash_attn"))


def test_flash_import_error_is_rejected_and_warned():
    facts = what_if_facts(["3090"], ["flash-attn==2.7.4"])
    facts.libraries["flash-attn"].import_status = "error"
    facts.libraries["flash-attn"].import_error = "undefined symbol: _ZN3c104cuda9SetDeviceEi"
    s = select(BackendQuery(facts, tuple(facts.gpu.gpus), "0.3.2"))
    assert s.backend == "matmul" and s.switches["no_flash_attn"]
    assert any("undefined symbol" in r for r in texts(s, "flash_attn"))
    assert any("breaks `import exllamav2`" in w.message for w in s.warnings)
    assert "backend.flash_attn.import_fails" in codes(s, "flash_attn")
    assert "backend.flash_attn.import_breaks_exllamav2" in {w.code for w in s.warnings}


@pytest.mark.parametrize(
    ("flash", "softcap", "swa", "ok"),
    [
        ("2.5.8", True, False, False),  # softcap needs 2.6.0
        ("2.6.3", True, True, True),
        ("2.4.2", False, True, False),  # window_size exists (2.3) but exllamav2 reads it only from 2.5.7
        ("2.5.7", False, True, True),
    ],
)
def test_flash_needs_the_features_the_model_uses(flash, softcap, swa, ok):
    s = chosen(["4090"], [f"flash-attn=={flash}"], softcap=softcap, swa=swa)
    assert (s.backend == "flash_attn") is ok


def test_softcap_model_never_gets_a_backend_that_ignores_it():
    # Gemma-2 style: softcap + SWA. xformers and SDPA ignore softcap; old flash lacks it -> matmul.
    s = chosen(
        ["3090"],
        ["flash-attn==2.5.9", "xformers==0.0.27.post2", "torch==2.4.0", "exllamav2==0.2.8"],
        exl2="0.2.8",
        softcap=True,
        swa=True,
    )
    assert s.backend == "matmul"
    assert any("softcapping" in r for r in texts(s, "xformers"))
    assert any("sliding-window" in r for r in texts(s, "xformers"))
    assert any("softcapping" in r for r in texts(s, "sdpa"))


# -------------------------------------------------------------------------------------------- xformers


def test_xformers_chosen_on_turing_when_it_matches_torch():
    s = chosen(["2080ti-22gb"], ["torch==2.6.0", "xformers==0.0.29.post3"])
    assert s.backend == "xformers" and not s.paged
    assert s.switches == {"no_flash_attn": True, "no_xformers": False, "no_sdpa": True}


def test_xformers_without_the_mask_import_exllamav2_needs():
    s = chosen(["t4"], ["torch==2.1.0", "xformers==0.0.22.post7"])
    assert any("attn_bias.LowerTriangularFromBottomRightMask" in r for r in texts(s, "xformers"))


def test_xformers_mask_path_depends_on_exllamav2_version():
    # exllamav2 0.1.1-0.1.5 import the mask from xformers.ops.fmha: only 0.0.25-0.0.26.post1 re-export it.
    old_ok = chosen(["t4"], ["torch==2.3.0", "xformers==0.0.26.post1"], exl2="0.1.5")
    old_bad = chosen(["t4"], ["torch==2.3.1", "xformers==0.0.27"], exl2="0.1.5")
    assert "xformers" in old_ok.valid
    assert any(
        "xformers.ops.fmha.LowerTriangularFromBottomRightMask" in r for r in texts(old_bad, "xformers")
    )
    assert any(
        "no xformers path" in r
        for r in texts(chosen(["t4"], ["xformers==0.0.26.post1"], exl2="0.1.0"), "xformers")
    )


def test_xformers_cpp_ops_must_match_torch():
    s = chosen(["t4"], ["torch==2.5.1", "xformers==0.0.29.post3"])  # built for torch 2.6.0
    assert any("built for torch 2.6.0" in r for r in texts(s, "xformers"))


def test_xformers_stable_abi_loads_on_newer_torch():
    s = chosen(["t4"], ["torch==2.11.0", "xformers==0.0.35"])
    assert s.backend == "xformers"


def test_xformers_dropped_volta():
    s = chosen(["v100-32gb"], ["torch==2.7.1", "xformers==0.0.31.post1"])
    assert any("7.0 < 7.5" in r for r in texts(s, "xformers"))
    assert "xformers" in chosen(["v100-32gb"], ["torch==2.7.0", "xformers==0.0.30"]).valid


def test_xformers_flash_window_enforced_from_0031():
    s = chosen(["4090"], ["torch==2.8.0", "xformers==0.0.32.post2", "flash-attn==2.8.3"])
    assert any("accepts 2.7.1..2.8.2" in r for r in texts(s, "xformers"))
    assert s.backend == "flash_attn" and s.switches["no_xformers"]


def test_measured_facts_win_over_derived_ones():
    facts = what_if_facts(["t4"], ["torch==2.6.0", "xformers==0.0.29.post3"])
    facts.libraries["xformers"].details["has_cpp_library"] = False
    facts.libraries["xformers"].details["cpp_load_error"] = "libcudart.so.12: cannot open shared object file"
    s = select(BackendQuery(facts, tuple(facts.gpu.gpus), "0.3.2"))
    assert any("libcudart" in r or "built for" in r for r in texts(s, "xformers"))


# ------------------------------------------------------------------------------------------------ SDPA


def test_sdpa_wrong_on_0_2_9_to_0_3_2_and_fine_on_0_2_8():
    bad = chosen(["t4"], ["torch==2.6.0"], exl2="0.2.9")
    good = chosen(["t4"], ["torch==2.6.0"], exl2="0.2.8")
    assert bad.backend == "matmul" and bad.switches["no_sdpa"]
    assert any(r.startswith("WRONG") for r in texts(bad, "sdpa"))
    assert "backend.sdpa.causal_defect" in codes(bad, "sdpa")
    assert good.backend == "sdpa" and not good.switches["no_sdpa"]


def test_sdpa_needs_causal_lower_right():
    s = chosen(["t4"], ["torch==2.2.2"], exl2="0.2.8")
    assert any("causal_lower_right" in r for r in texts(s, "sdpa"))
    assert any("no SDPA path" in r for r in texts(chosen(["t4"], ["torch==2.6.0"], exl2="0.1.4"), "sdpa"))


# ------------------------------------------------------------------------------------------------ ROCm


def test_rocm_rules():
    mi300 = chosen(["mi300x"], ["torch==2.4.1+rocm6.1", "xformers==0.0.28.post1", "flash-attn==2.6.3"])
    assert mi300.backend == "xformers"
    assert any("ROCm" in r for r in texts(mi300, "flash_attn"))
    navi = chosen(["7900xtx"], ["torch==2.4.1+rocm6.1", "xformers==0.0.28.post1"])
    assert navi.backend == "matmul"
    assert any("gfx1100" in r for r in texts(navi, "xformers"))


# ---------------------------------------------------------------------------------------------- forcing


def test_forced_invalid_backend_is_refused_with_reasons():
    q = query(["2080ti-22gb"], ["flash-attn==2.7.4"])
    with pytest.raises(BackendRefusedError, match=r"flash_attn is not valid here: .*7\.5 < 8\.0"):
        select(q, "flash-attn")
    assert select(q, "matmul").forced


def test_unknown_backend_name():
    with pytest.raises(UsageError, match="valid options are"):
        check_name("cudnn")


# ------------------------------------------------------------------------------------ switch realisation


def exllamav2_precedence(present: set[str], switches: dict[str, bool]) -> str:
    """What exllamav2 0.3.2 runs for a causal forward (attn.py L1144-1149, _attn_torch L880)."""
    if "flash_attn" in present and not switches["no_flash_attn"]:
        return "flash_attn"
    if "xformers" in present and not switches["no_xformers"]:
        return "xformers"
    if "sdpa" in present and not switches["no_sdpa"]:
        return "sdpa"
    return "matmul"


@given(
    present=st.sets(st.sampled_from(BACKENDS[:3])),
    invalid=st.sets(st.sampled_from(BACKENDS[:3])),
)
def test_switches_make_exllamav2_land_on_the_choice(present, invalid):
    """Whatever is importable (present) and whatever the rules reject (invalid), the switches realise the
    first valid backend and never leave an invalid one reachable above matmul."""
    valid = [b for b in BACKENDS if b not in invalid]
    choice = valid[0]
    switches = switches_for(choice, invalid=frozenset(invalid))
    runs = exllamav2_precedence(present | ({choice} if choice != "matmul" else set()), switches)
    assert runs == choice
    # Padded batches skip flash/xformers and go to _attn_torch: SDPA only if valid.
    if "sdpa" in invalid:
        assert switches["no_sdpa"]


def test_libraries_not_installed_are_reported():
    facts = what_if_facts(["3090"], ["flash-attn==none"])
    assert facts.libraries["flash-attn"] == LibraryFacts(name="flash-attn", installed=False)
    s = select(BackendQuery(facts, tuple(facts.gpu.gpus), "0.3.2"))
    assert texts(s, "flash_attn") == ["flash-attn is not installed"]
    assert codes(s, "flash_attn") == ["backend.flash_attn.not_installed"]
