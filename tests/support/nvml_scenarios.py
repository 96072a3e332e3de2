"""NVML scenarios for the fake `libnvidia-ml.so.1` behind `tests/support/fake_nvml_site/pynvml.py`.

The fake is at the hardware boundary only: `fake_nvml_site/pynvml.py` executes the REAL nvidia-ml-py
`pynvml.py` and swaps the shared library it loads (`CDLL("libnvidia-ml.so.1")`) for a Python object whose C
functions answer from a scenario. So every wrapper, return type (str from `nvmlDeviceGetName`, bytes in
`nvmlPciInfo_t.busId`, `c_nvmlMemory_t` objects), error code and `NVMLError_*` subclass is the real one.

Choose a scenario with the env var `EXLX_FAKE_NVML`:
- a name from `SCENARIOS` below (`2080ti-22gb`, `p40`, `3090+p40`, `h100`, `none`, `no-library`, ...),
- a path to a JSON file in the format below, or
- the JSON document itself (a value starting with `{`).
Unset or empty: the fake behaves like a machine without the NVIDIA driver (library not found).

Scenario format (JSON-compatible dict; every key optional):
    {
      "base": "3090+p40",               # start from a named scenario and apply the keys below
      "library": true,                  # false: CDLL raises OSError -> NVMLError_LibraryNotFound
      "init_error": "LIB_RM_VERSION_MISMATCH",  # NVML_ERROR_<name> that nvmlInit returns
      "driver_version": "550.120",      # nvmlSystemGetDriverVersion
      "cuda_driver_version": 12040,     # nvmlSystemGetCudaDriverVersion(_v2): 1000*major + 10*minor
      "nvml_version": "12.550.120",     # nvmlSystemGetNVMLVersion
      "gpus": [                         # NVML order = PCI bus order, as the real library enumerates
        {
          "name": "Tesla P40",
          "uuid": "GPU-...",
          "pci_bus_id": "00000000:01:00.0",   # busId; busIdLegacy is derived ("0000:01:00.0")
          "pci_device_id": 0x1B3810DE,        # (device << 16) | vendor, as NVML reports it
          "cc": [6, 1],                       # nvmlDeviceGetCudaComputeCapability
          "architecture": 4,                  # NVML_DEVICE_ARCH_* (nvmlDeviceGetArchitecture)
          "memory_total_mib": 24576,
          "memory_used_mib": 150,             # free = total - used (nvmlDeviceGetMemoryInfo v1)
          "memory_reserved_mib": 0,           # only in the _v2 answer; v2 used = v1 used - reserved
          "mig": null,                        # null: nvmlDeviceGetMigMode -> NVMLError_NotSupported;
                                              # [current, pending] with 0/1 otherwise
          "errors": {"nvmlDeviceGetMemoryInfo": "GPU_IS_LOST"}   # C function -> NVML_ERROR_<name>
        }
      ],
      "gpu_overrides": {"0": {"memory_used_mib": 20000}},  # merged into gpus[i] (for "base" variants)
      "cuda_fastest_first": [1, 0]      # NOT read by the fake: the NVML indices in the order CUDA's
                                        # default FASTEST_FIRST enumerates them (what tests expect)
    }

`with_memory(name, index=None, used_mib=..., total_mib=...)` builds a "less VRAM" variant.
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any

MIB = 1024 * 1024

# PCI device ids and memory sizes as nvidia-smi/NVML report them on these boards.
_2080TI_22GB = {
    "name": "NVIDIA GeForce RTX 2080 Ti",
    "uuid": "GPU-5b0c7c3e-1f2a-4d6b-9e8f-2080ee220001",
    "pci_bus_id": "00000000:01:00.0",
    "pci_device_id": 0x1E0710DE,
    "cc": [7, 5],
    "architecture": 6,  # NVML_DEVICE_ARCH_TURING
    "memory_total_mib": 22528,  # the 22 GB memory mod: 11 x 2 GB chips
    "memory_used_mib": 262,
    "mig": None,
}
_P40 = {
    "name": "Tesla P40",
    "uuid": "GPU-0c1d2e3f-4a5b-6c7d-8e9f-a40000000001",
    "pci_bus_id": "00000000:01:00.0",
    "pci_device_id": 0x1B3810DE,
    "cc": [6, 1],
    "architecture": 4,  # NVML_DEVICE_ARCH_PASCAL
    "memory_total_mib": 24576,
    "memory_used_mib": 156,
    "mig": None,
}
_3090 = {
    "name": "NVIDIA GeForce RTX 3090",
    "uuid": "GPU-3090aaaa-bbbb-4ccc-8ddd-eeeeffff0002",
    "pci_bus_id": "00000000:02:00.0",
    "pci_device_id": 0x220410DE,
    "cc": [8, 6],
    "architecture": 7,  # NVML_DEVICE_ARCH_AMPERE
    "memory_total_mib": 24576,
    "memory_used_mib": 512,
    "mig": None,
}
_H100 = {
    "name": "NVIDIA H100 80GB HBM3",
    "uuid": "GPU-4f1a2b3c-d4e5-46f7-8a9b-c10000000001",
    "pci_bus_id": "00000000:19:00.0",
    "pci_device_id": 0x233010DE,
    "cc": [9, 0],
    "architecture": 9,  # NVML_DEVICE_ARCH_HOPPER
    "memory_total_mib": 81559,
    "memory_used_mib": 540,
    "memory_reserved_mib": 528,
    "mig": [0, 0],  # MIG-capable, disabled
}

_DRIVER = {"driver_version": "550.120", "cuda_driver_version": 12040, "nvml_version": "12.550.120"}

SCENARIOS: dict[str, dict[str, Any]] = {
    "2080ti-22gb": {**_DRIVER, "gpus": [_2080TI_22GB], "cuda_fastest_first": [0]},
    "p40": {**_DRIVER, "gpus": [_P40], "cuda_fastest_first": [0]},
    # The P40 sits on the lower bus (NVML index 0); CUDA's default FASTEST_FIRST puts the 3090 first.
    "3090+p40": {
        **_DRIVER,
        "gpus": [_P40, _3090],
        "cuda_fastest_first": [1, 0],
    },
    "h100": {
        "driver_version": "570.124.06",
        "cuda_driver_version": 12080,
        "nvml_version": "12.570.124.06",
        "gpus": [_H100],
        "cuda_fastest_first": [0],
    },
    "h100-mig": {"base": "h100", "gpu_overrides": {"0": {"mig": [1, 1]}}},
    "none": {**_DRIVER, "gpus": [], "cuda_fastest_first": []},
    # No driver installed: dlopen("libnvidia-ml.so.1") fails.
    "no-library": {"library": False},
    # Kernel module and userspace library from different driver releases (after a driver update without a
    # reboot): nvmlInit returns NVML_ERROR_LIB_RM_VERSION_MISMATCH, nvidia-smi prints
    # "Failed to initialize NVML: Driver/library version mismatch".
    "driver-mismatch": {**_DRIVER, "init_error": "LIB_RM_VERSION_MISMATCH", "gpus": [_3090]},
    # Library present, kernel module not loaded.
    "driver-not-loaded": {**_DRIVER, "init_error": "DRIVER_NOT_LOADED", "gpus": []},
    # A card that fell off the bus mid-query.
    "gpu-lost": {
        "base": "3090+p40",
        "gpu_overrides": {"1": {"errors": {"nvmlDeviceGetMemoryInfo": "GPU_IS_LOST"}}},
    },
}

ENV_VAR = "EXLX_FAKE_NVML"


def resolve(spec: str | dict[str, Any] | None) -> dict[str, Any]:
    """A full scenario dict from a name, a JSON path, inline JSON or a dict ("base" applied)."""
    if spec is None or spec == "":
        return {"library": False}
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{"):
            data = json.loads(text)
        elif text in SCENARIOS:
            data = SCENARIOS[text]
        elif os.path.exists(text):
            with open(text, encoding="utf-8") as fh:
                data = json.load(fh)
        else:
            names = ", ".join(SCENARIOS)
            raise ValueError(f"{ENV_VAR}={spec!r}: not a scenario name ({names}) or a JSON file")
    else:
        data = spec
    data = copy.deepcopy(data)
    base = data.pop("base", None)
    if base is not None:
        merged = resolve(base)
        merged.update({k: v for k, v in data.items() if k != "gpu_overrides"})
        data = {**merged, "gpu_overrides": data.get("gpu_overrides", {})}
    for index, changes in (data.pop("gpu_overrides", None) or {}).items():
        data["gpus"][int(index)] = {**data["gpus"][int(index)], **changes}
    return data


def with_memory(
    name: str, index: int | None = None, *, used_mib: int | None = None, total_mib: int | None = None
) -> dict[str, Any]:
    """Scenario `name` with different VRAM on GPU `index` (all GPUs when None): e.g. a card with less
    free memory than when a profile was written, or a smaller card."""
    data = resolve(name)
    for i, gpu in enumerate(data.get("gpus", [])):
        if index is not None and i != index:
            continue
        if total_mib is not None:
            gpu["memory_total_mib"] = total_mib
        if used_mib is not None:
            gpu["memory_used_mib"] = used_mib
    return data


def to_env_value(spec: str | dict[str, Any]) -> str:
    """The value for EXLX_FAKE_NVML: names stay names, dicts become inline JSON."""
    return spec if isinstance(spec, str) else json.dumps(spec)
