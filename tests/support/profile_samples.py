"""Constructed Facts and Plans for the profile/loader tests (the shapes `detect` and `plan` produce).

GPU values are those the fake NVML scenarios report (tests/support/nvml_scenarios.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from exlx_autocfg.exl2 import BACKENDS
from exlx_autocfg.facts.types import GPU, Facts, GPUReport, LibraryFacts, PythonFacts
from exlx_autocfg.findings import Finding
from exlx_autocfg.model.spec import ModelSummary
from exlx_autocfg.planner.types import Plan, PlanGPU, Reason
from exlx_autocfg.settings import Settings
from tests.support.emit_samples import SETTINGS_FIELDS

MIB = 1024**2
XF_PATHS_026 = {
    "xformers.ops.memory_efficient_attention": True,
    "xformers.ops.fmha.attn_bias.LowerTriangularFromBottomRightMask": True,
    "xformers.ops.fmha.LowerTriangularFromBottomRightMask": True,
}


def gpu_2080ti(index: int = 0, total_mib: int = 22528, **kw: Any) -> GPU:
    base = dict(index=index, name="NVIDIA GeForce RTX 2080 Ti", vendor="nvidia", memory_total=total_mib * MIB,
                memory_free=(total_mib - 262) * MIB, compute_capability="7.5", architecture="turing",
                uuid="GPU-5b0c7c3e-1f2a-4d6b-9e8f-2080ee220001", pci_bus_id="00000000:01:00.0",
                cuda_index=index)
    base.update(kw)
    return GPU(**base)


def gpu_p40(index: int = 0, **kw: Any) -> GPU:
    base = dict(index=index, name="Tesla P40", vendor="nvidia", memory_total=24576 * MIB,
                memory_free=(24576 - 156) * MIB, compute_capability="6.1", architecture="pascal",
                uuid="GPU-0c1d2e3f-4a5b-6c7d-8e9f-a40000000001", pci_bus_id="00000000:01:00.0",
                cuda_index=index)
    base.update(kw)
    return GPU(**base)


def facts(gpus: list[GPU] | None = None, xformers: str | None = "0.0.26.post1",
          flash_attn: str | None = None, **libs: LibraryFacts) -> Facts:
    libraries = {
        "torch": LibraryFacts("torch", True, "2.3.0+cu121", "cu121", {"cuda": "12.1"}, import_status="ok"),
        "exllamav2": LibraryFacts("exllamav2", True, "0.3.2", import_status="ok",
                                  details={"ext": "prebuilt"}),
    }
    if xformers:
        libraries["xformers"] = LibraryFacts("xformers", True, xformers, import_status="ok",
                                             details={"import_paths": dict(XF_PATHS_026)})
    if flash_attn:
        libraries["flash-attn"] = LibraryFacts("flash-attn", True, flash_attn, import_status="ok")
    libraries.update(libs)
    return Facts(
        python=PythonFacts(executable="/opt/tabby/venv/bin/python", version="3.11.9",
                           platform="linux-x86_64"),
        gpu=GPUReport(gpus=gpus if gpus is not None else [gpu_2080ti()], source="nvml",
                      driver_version="550.120"),
        libraries=libraries,
        created="2026-11-29T00:00:00Z",
        tool_version="0.1.0",
    )


def switches(backend: str) -> dict[str, bool]:
    """The no_* switches that realise `backend` (every backend ahead of it off)."""
    order = list(BACKENDS)
    ahead = order[: order.index(backend)]
    return {"no_flash_attn": "flash_attn" in ahead, "no_xformers": "xformers" in ahead,
            "no_sdpa": "sdpa" in ahead}


def plan(backend: str = "sdpa", cache_mode: str = "Q6", max_seq_len: int = 16384, *,
         model_path: str | None = "/models/Llama-3.1-8B-exl2", fingerprint: str | None = "ab" * 32,
         gpus: list[GPU] | None = None, **kw: Any) -> Plan:
    """A Plan; keyword arguments are Settings fields (the switches follow `backend` unless given) or Plan
    fields."""
    gpus = gpus if gpus is not None else [gpu_2080ti()]
    settings_kw = {k: kw.pop(k) for k in list(kw) if k in SETTINGS_FIELDS}
    p = Plan(
        model=ModelSummary(name="Llama-3.1-8B-exl2", path=model_path, architecture="LlamaForCausalLM",
                           layers=32, hidden_size=4096, attention_heads=32, kv_heads=8, head_dim=128,
                           vocab_size=128256,
                           max_position_embeddings=131072, bits_per_weight=4.0, fingerprint=fingerprint),
        gpus=[PlanGPU(index=g.index, name=g.name, compute_capability=g.compute_capability,
                      memory_total=g.memory_total, memory_free=g.memory_free, uuid=g.uuid,
                      pci_bus_id=g.pci_bus_id, cuda_index=g.cuda_index) for g in gpus],
        settings=Settings(backend=backend, cache_mode=cache_mode, max_seq_len=max_seq_len,
                          **{"max_input_len": 2048, "max_attention_size": 2048**2, **switches(backend),
                             **settings_kw}),
        reasons=[Reason("backend", backend, "backend.highest_valid",
                        "flash-attn needs compute capability 8.0; the 2080 Ti has 7.5",
                        rejected={"flash_attn": [Finding("backend.flash_attn.compute_capability",
                                                         "compute capability 7.5 < 8.0")]}),
                 Reason("cache_mode", cache_mode, "cache.target_reached",
                        "the most precise mode that reaches 16384 tokens")],
        warnings=[Finding("plan.what_if", "a sample warning")],
        request={"context": 16384, "cache_mode": None},
        tool_version="0.1.0",
    )
    return dataclasses.replace(p, **kw)
