"""Staleness as a pure function: a profile's computed-for against fresh facts (constructed, as detect builds
them). The same comparisons against facts from real probes live in tests/test_profile_stale_real.py."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exlx_autocfg.facts.types import LibraryFacts
from exlx_autocfg.profile.format import profile_from_plan
from exlx_autocfg.profile.staleness import compare, find_changes
from tests.support import profile_samples as samples

FP = "ab" * 32
OLD_PATH = "xformers.ops.fmha.LowerTriangularFromBottomRightMask"  # the re-export xformers 0.0.27 dropped


def profile_for(facts, **plan_kw):
    gpus = plan_kw.pop("gpus", facts.gpu.gpus)
    return profile_from_plan(samples.plan(gpus=gpus, **plan_kw), facts)


def messages(profile, facts, fingerprint=FP, **kw):
    return [c.message for c in find_changes(profile, facts, fingerprint, **kw)]


def test_same_machine_is_current():
    assert messages(profile_for(samples.facts()), samples.facts()) == []


def test_another_gpu():
    profile = profile_for(samples.facts())
    out = messages(profile, samples.facts(gpus=[samples.gpu_p40()]))
    assert out == [
        "GPU 0 (NVIDIA GeForce RTX 2080 Ti) [GPU-5b0c7c3e-1f2a-4d6b-9e8f-2080ee220001], used by the profile, "
        "is gone",
        "new GPU 0 (Tesla P40) with 24.0 GiB is present; the profile was computed without it",
    ]


def test_another_gpu_without_uuids_is_matched_by_index():
    old = samples.facts(gpus=[samples.gpu_2080ti(uuid=None)])
    new = samples.facts(gpus=[samples.gpu_p40(uuid=None)])
    assert messages(profile_for(old), new) == [
        "GPU 0 is now Tesla P40 (profile computed for NVIDIA GeForce RTX 2080 Ti)"]


def test_less_vram():
    profile = profile_for(samples.facts())
    out = messages(profile, samples.facts(gpus=[samples.gpu_2080ti(total_mib=11264)]))
    assert out == ["GPU 0 (NVIDIA GeForce RTX 2080 Ti) has less VRAM: 11.0 GiB, "
                   "profile computed for 22.0 GiB"]


def test_gpu_moved_in_cuda_order():
    def ti(cuda_index):
        return samples.gpu_2080ti(1, uuid="GPU-b", pci_bus_id="00000000:02:00.0", cuda_index=cuda_index)

    old = samples.facts(gpus=[samples.gpu_p40(0, cuda_index=1), ti(0)])
    new = samples.facts(gpus=[samples.gpu_p40(0, cuda_index=0), ti(1)])
    out = messages(profile_for(old), new)
    assert len(out) == 2 and out[0].startswith("GPU 0 (Tesla P40) is now CUDA device 0 (was 1)")


def test_library_upgrade_downgrade_and_moved_import_path():
    profile = profile_for(samples.facts())
    moved = samples.facts(xformers="0.0.35")
    moved.libraries["xformers"].details["import_paths"][OLD_PATH] = False
    assert messages(profile, moved) == [
        "xformers upgraded 0.0.26.post1 -> 0.0.35",
        f"xformers import paths moved: {OLD_PATH} no longer resolves",
    ]
    newer = profile_for(samples.facts(xformers="0.0.35"))
    assert messages(newer, samples.facts()) == ["xformers downgraded 0.0.35 -> 0.0.26.post1"]


def test_build_tag_changed():
    profile = profile_for(samples.facts())
    new = samples.facts(torch=LibraryFacts("torch", True, "2.3.0+cu124", "cu124", import_status="ok"))
    assert messages(profile, new) == ["torch 2.3.0 build tag changed: +cu121 -> +cu124"]


def test_flash_attn_now_broken_or_removed():
    profile = profile_for(samples.facts(flash_attn="2.6.3"), backend="flash_attn", paged=True)
    broken = samples.facts(**{"flash-attn": LibraryFacts(
        "flash-attn", True, "2.6.3", import_status="error",
        import_error="ImportError: flash_attn_2_cuda.so: undefined symbol: _ZN3c105ErrorC2E")})
    assert messages(profile, broken) == [
        "flash-attn 2.6.3 now fails to import (error): ImportError: flash_attn_2_cuda.so: undefined symbol: "
        "_ZN3c105ErrorC2E"]
    assert messages(profile, samples.facts()) == ["flash-attn 2.6.3 was removed"]
    ops = samples.facts(**{"flash-attn": LibraryFacts("flash-attn", True, "2.6.3", import_status="ok",
                                                      details={"cuda_module_error": "undefined symbol"})})
    assert messages(profile, ops) == ["flash-attn 2.6.3 compiled ops no longer load: undefined symbol"]


def test_exllamav2_extension_broke():
    profile = profile_for(samples.facts())
    new = samples.facts(exllamav2=LibraryFacts("exllamav2", True, "0.3.2", import_status="ok",
                                               details={"ext": "prebuilt-broken"}))
    assert messages(profile, new) == ["exllamav2 extension changed: prebuilt -> prebuilt-broken"]


def test_imports_not_tried_are_not_compared():
    profile = profile_for(samples.facts())
    quick = samples.facts()
    for lib in quick.libraries.values():
        lib.import_status, lib.details = "not-tried", {}
    assert messages(profile, quick) == []


def test_model_changed_or_gone():
    profile = profile_for(samples.facts())
    assert messages(profile, samples.facts(), "cd" * 32) == [
        "model Llama-3.1-8B-exl2 changed: config.json or the safetensors headers differ "
        "(fingerprint abababababab -> cdcdcdcdcdcd)"]
    assert messages(profile, samples.facts(), None, model_dir_exists=False) == [
        "model directory /models/Llama-3.1-8B-exl2 no longer exists"]


# --- properties ---------------------------------------------------------------------------------------

versions = st.sampled_from(["0.0.26.post1", "0.0.28.post3", "0.0.35", None])
vram = st.sampled_from([11264, 22528, 24576])


@st.composite
def machines(draw):
    gpus = [samples.gpu_2080ti(total_mib=draw(vram))]
    if draw(st.booleans()):
        gpus.append(samples.gpu_p40(1, pci_bus_id="00000000:02:00.0"))
    flash = draw(st.sampled_from([None, "2.7.4"]))
    facts = samples.facts(gpus=gpus, xformers=draw(versions), flash_attn=flash)
    if draw(st.booleans()):
        facts.libraries["torch"] = dataclasses.replace(facts.libraries["torch"], version="2.4.1+cu124",
                                                        local_tag="cu124")
    return facts


@settings(max_examples=60, deadline=None)
@given(a=machines(), b=machines())
def test_stale_exactly_when_something_changed(a, b):
    pa, pb = profile_for(a), profile_for(b)
    forward, backward = compare(pa.computed_for, pb.computed_for), compare(pb.computed_for, pa.computed_for)
    assert bool(forward) == bool(backward) == (pa.computed_for != pb.computed_for)
    assert all("\n" not in c.message and c.message for c in forward)


@pytest.mark.parametrize("kind", ["gpu", "library"])
def test_changes_are_typed(kind):
    profile = profile_for(samples.facts())
    new = samples.facts(gpus=[samples.gpu_p40()]) if kind == "gpu" else samples.facts(xformers=None)
    assert {c.kind for c in find_changes(profile, new, FP)} == {kind}
