"""The short problems list `detect` derives from the facts (pure: no probe, no NVML)."""

from __future__ import annotations

from exlx_autocfg.facts.detect import facts_from_probe
from exlx_autocfg.facts.types import GPU, GPUReport

MIB = 1024 * 1024


def _doc(**libraries: dict) -> dict:
    base = {"name": "", "installed": True, "local_tag": None, "build": {}, "location": "/site",
            "import_status": "ok", "import_error": None, "import_seconds": 1.0, "details": {}}
    return {
        "schema": 1,
        "probe": "exlx_probe",
        "python": {"executable": "/venv/bin/python", "version": "3.11.9"},
        "libraries": {name: {**base, **lib} for name, lib in libraries.items()},
        "env": {},
        "problems": [],
    }


def _p40_rig() -> GPUReport:
    return GPUReport(
        gpus=[GPU(index=0, name="Tesla P40", vendor="nvidia", memory_total=24576 * MIB,
                  compute_capability="6.1", pci_bus_id="00000000:01:00.0")],
        source="nvml", driver_version="535.183", cuda_driver_version="12.2",
    )


def test_torch_cu128_on_an_old_driver_and_a_pascal_card() -> None:
    torch = {"version": "2.8.0+cu128", "details": {
        "cuda_version": "12.8", "cuda_available": False, "device_count": 0,
        "arch_list": ["sm_70", "sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]}}
    facts = facts_from_probe(_doc(torch=torch), _p40_rig(), env={})
    text = "\n".join(facts.problems)
    assert "cannot use the NVIDIA GPUs (torch.cuda.is_available() is False)" in text
    assert "the NVIDIA driver supports CUDA up to 12.2, torch was built for CUDA 12.8" in text
    assert "has no kernels for GPU 0 (Tesla P40, sm_61)" in text


def test_ptx_covers_newer_gpus_and_same_major_binaries_cover_higher_minors() -> None:
    torch = {"version": "2.5.1+cu124", "details": {
        "cuda_version": "12.4", "cuda_available": True, "device_count": 1,
        "arch_list": ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]}}
    report = _p40_rig()
    report.cuda_driver_version = "12.4"
    facts = facts_from_probe(_doc(torch=torch), report, env={})
    assert facts.problems == []


def test_exllamav2_jit_prerequisites() -> None:
    torch = {"version": "2.4.0+cu121", "details": {"cuda_version": "12.1", "cuda_available": True}}
    exl2 = {"version": "0.3.2", "import_status": "not-tried", "details": {
        "ext": "jit-needed", "jit": {"nvcc": "/usr/local/cuda/bin/nvcc", "nvcc_version": "11.8",
                                     "ninja": "/venv/bin/ninja", "ninja_on_path": False, "compiler": None,
                                     "torch_cuda_version": "12.1", "torch_hip_version": None}}}
    report = _p40_rig()
    report.cuda_driver_version = "12.4"
    facts = facts_from_probe(_doc(torch=torch, exllamav2=exl2), report, env={})
    text = "\n".join(facts.problems)
    assert "exllamav2 0.3.2: JIT build needed" in text
    assert "nvcc 11.8 does not match torch's CUDA 12.1" in text
    assert "ninja is installed but not on PATH" in text
    assert "no C++ compiler found" in text


def test_flash_attn_undefined_symbol_and_xformers_window() -> None:
    flash = {"version": "2.6.3", "import_status": "error",
             "import_error": "ImportError: flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi",
             "details": {"cuda_module_error": "ImportError: ...: undefined symbol: _ZN3c104cuda9SetDeviceEi"}}
    xformers = {"version": "0.0.33.post1", "details": {
        "has_cpp_library": True,
        "flash_version_error": "ImportError: Requires Flash-Attention version >=2.7.1,<=2.8.4 but got 2.6.3.",
        "import_paths": {"xformers.ops.fmha.attn_bias.LowerTriangularFromBottomRightMask": False}}}
    facts = facts_from_probe(_doc(**{"flash-attn": flash, "xformers": xformers}), GPUReport(), env={})
    text = "\n".join(facts.problems)
    assert "flash-attn 2.6.3: import error: ImportError: flash_attn_2_cuda.so: undefined symbol" in text
    assert "xformers 0.0.33.post1: ImportError: Requires Flash-Attention version" in text
    assert "LowerTriangularFromBottomRightMask does not resolve" in text
    assert "torch is not installed" not in text  # the probe was not asked about torch
