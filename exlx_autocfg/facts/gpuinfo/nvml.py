"""NVIDIA GPUs through NVML (the `pynvml` module of the nvidia-ml-py distribution).

NVML reads memory and identity without creating a CUDA context, so it is safe and fast in the CLI's
process. It numbers GPUs in PCI bus order, whatever CUDA_DEVICE_ORDER / CUDA_VISIBLE_DEVICES say;
`order.py` maps that to CUDA's numbering.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

from exlx_autocfg.facts.types import GPU, GPUReport

T = TypeVar("T")

# NVML_DEVICE_ARCH_* values (nvml.h) -> architecture names used across the facts.
NVML_ARCHITECTURES = {
    2: "kepler",
    3: "maxwell",
    4: "pascal",
    5: "volta",
    6: "turing",
    7: "ampere",
    8: "ada",
    9: "hopper",
    10: "blackwell",
}


def architecture_from_cc(cc: tuple[int, int]) -> str | None:
    """NVIDIA architecture for a compute capability (used when NVML cannot tell)."""
    major, minor = cc
    if major == 7:
        return "volta" if minor < 5 else "turing"
    if major == 8:
        return "ada" if minor == 9 else "ampere"
    return {3: "kepler", 5: "maxwell", 6: "pascal", 9: "hopper", 10: "blackwell", 12: "blackwell"}.get(major)


def _init_problem(nvml: Any, exc: Exception) -> str:
    """One clear sentence for an nvmlInit failure, by NVMLError subclass."""
    text = str(exc)
    if isinstance(exc, getattr(nvml, "NVMLError_LibraryNotFound", ())):
        return (
            "NVIDIA driver not found: NVML library libnvidia-ml.so.1 could not be loaded "
            f"(NVML: {text}); no NVIDIA GPU can be used"
        )
    if isinstance(exc, getattr(nvml, "NVMLError_LibRmVersionMismatch", ())):
        return (
            f"NVIDIA driver/library version mismatch (NVML: {text}): the loaded kernel module and the "
            "user-space driver come from different releases, usually after a driver update without a reboot; "
            "reboot (or reload the nvidia kernel modules)"
        )
    if isinstance(exc, getattr(nvml, "NVMLError_DriverNotLoaded", ())):
        return f"NVIDIA kernel driver is not loaded (NVML: {text}); load it (modprobe nvidia) or reboot"
    if isinstance(exc, getattr(nvml, "NVMLError_NoPermission", ())):
        return f"no permission to query NVIDIA GPUs (NVML: {text})"
    return f"NVML failed to initialise: {type(exc).__name__}: {text}"


def read_nvml() -> GPUReport:
    """All NVIDIA GPUs NVML can see, in NVML (PCI bus) order; failures become `problems`."""
    report = GPUReport(source="nvml")
    try:
        import pynvml as nvml
    except ImportError as exc:
        report.problems.append(f"cannot read NVIDIA GPUs: pynvml (nvidia-ml-py) is missing ({exc})")
        return report
    error_base: type[BaseException] = getattr(nvml, "NVMLError", Exception)
    try:
        nvml.nvmlInit()
    except error_base as exc:
        report.problems.append(_init_problem(nvml, exc))  # type: ignore[arg-type]
        return report
    except Exception as exc:  # a shadowing `pynvml` package, a broken install
        report.problems.append(f"NVML failed to initialise: {type(exc).__name__}: {exc}")
        return report
    try:
        _read_initialised(nvml, error_base, report)
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
    return report


def _read_initialised(nvml: Any, error_base: type[BaseException], report: GPUReport) -> None:
    def query(what: str, func: Callable[..., T], *args: Any, who: str = "") -> T | None:
        try:
            return func(*args)
        except error_base as exc:
            if isinstance(exc, getattr(nvml, "NVMLError_NotSupported", ())):
                return None  # a fact about this board (MIG on GeForce), not a problem
            report.problems.append(f"{who}NVML {what} failed: {type(exc).__name__}: {exc}")
            return None

    report.driver_version = _text(query("driver version", nvml.nvmlSystemGetDriverVersion))
    cuda = query("CUDA driver version", nvml.nvmlSystemGetCudaDriverVersion)
    if isinstance(cuda, int) and cuda > 0:
        report.cuda_driver_version = f"{cuda // 1000}.{cuda % 1000 // 10}"
    count = query("device count", nvml.nvmlDeviceGetCount) or 0
    for index in range(count):
        handle = query(f"handle of GPU {index}", nvml.nvmlDeviceGetHandleByIndex, index)
        if handle is None:
            continue
        report.gpus.append(_read_gpu(nvml, query, index, handle, report))
    if count == 0 and not report.problems:
        report.problems.append("NVIDIA driver loaded, but NVML reports no GPU")


def _read_gpu(nvml: Any, query: Callable[..., Any], index: int, handle: Any, report: GPUReport) -> GPU:
    name = _text(query(f"name of GPU {index}", nvml.nvmlDeviceGetName, handle)) or f"NVIDIA GPU {index}"
    who = f"GPU {index} ({name}): "
    uuid = _text(query("UUID", nvml.nvmlDeviceGetUUID, handle, who=who))
    pci = query("PCI info", nvml.nvmlDeviceGetPciInfo, handle, who=who)
    bus_id = _text(getattr(pci, "busId", None)) if pci is not None else None
    cc = query("compute capability", nvml.nvmlDeviceGetCudaComputeCapability, handle, who=who)
    memory = query("memory info", nvml.nvmlDeviceGetMemoryInfo, handle, who=who)
    arch_code = None
    if hasattr(nvml, "nvmlDeviceGetArchitecture"):
        arch_code = query("architecture", nvml.nvmlDeviceGetArchitecture, handle, who=who)
    mig = None
    if hasattr(nvml, "nvmlDeviceGetMigMode"):
        modes = query("MIG mode", nvml.nvmlDeviceGetMigMode, handle, who=who)
        if modes is not None:
            mig = bool(modes[0] == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1))
            if mig:
                report.problems.append(
                    f"{who}MIG mode is enabled: CUDA sees MIG instances, each with a slice of the memory"
                )
    architecture = NVML_ARCHITECTURES.get(arch_code) if isinstance(arch_code, int) else None
    if architecture is None and cc:
        architecture = architecture_from_cc(tuple(cc))
    if memory is None:
        report.problems.append(f"{who}memory size unknown; treated as 0 bytes")
    return GPU(
        index=index,
        name=name,
        vendor="nvidia",
        memory_total=int(memory.total) if memory is not None else 0,
        memory_free=int(memory.free) if memory is not None else None,
        memory_used=int(memory.used) if memory is not None else None,
        compute_capability=f"{cc[0]}.{cc[1]}" if cc else None,
        architecture=architecture,
        uuid=uuid,
        pci_bus_id=bus_id,
        mig_mode=mig,
        source="nvml",
    )


def _text(value: Any) -> str | None:
    """NVML strings: str from the convertStrBytes wrappers, bytes from ctypes struct fields (busId)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)

