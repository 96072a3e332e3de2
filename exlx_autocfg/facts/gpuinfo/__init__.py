"""GPU facts read in the CLI's own process, independent of the interpreter that will run the model.

Readers, tried in order until one finds GPUs: NVML (`pynvml` from nvidia-ml-py), then ROCm (amdsmi, the
`rocm-smi` / `amd-smi` tools). torch's own view comes later from the probe (`from_torch_devices`).
Every failure is a line in `GPUReport.problems`, never an exception.
"""

from __future__ import annotations

from exlx_autocfg.facts.gpuinfo.nvml import read_nvml
from exlx_autocfg.facts.gpuinfo.order import device_order, fill_from_torch
from exlx_autocfg.facts.gpuinfo.rocm import read_rocm
from exlx_autocfg.facts.types import GPUReport

__all__ = ["device_order", "fill_from_torch", "read_gpu_report", "read_nvml", "read_rocm"]


def read_gpu_report() -> GPUReport:
    """NVIDIA GPUs via NVML; when NVML finds none, AMD GPUs via ROCm's readers."""
    report = read_nvml()
    if report.gpus:
        return report
    rocm = read_rocm()
    if rocm.gpus:
        # NVML's "no driver" is expected on an AMD machine: keep only ROCm's findings.
        return rocm
    report.problems.extend(p for p in rocm.problems if p not in report.problems)
    return report
