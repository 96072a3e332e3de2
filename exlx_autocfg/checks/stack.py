"""Checks on torch itself: its build against the driver and GPUs, and the GPU kernels its wheel carries.

Pure functions `Machine -> Verdict`.
"""

from __future__ import annotations

from exlx_autocfg.checks import fixes
from exlx_autocfg.checks import rules as R
from exlx_autocfg.checks.machine import GpuView, Machine
from exlx_autocfg.checks.verdict import Verdict, make, skipped
from exlx_autocfg.facts.arch_coverage import kernel_coverage

NO_GPU = (
    "no GPU is visible, so {what} cannot be verified (inside `docker build`? name the target with --gpu NAME)"
)


def check_torch(m: Machine) -> Verdict:
    t = m.torch
    if not t.installed:
        return make(
            "torch",
            "fail",
            f"torch is not installed in {m.facts.python.executable}.",
            fixes.torch_reinstall(m).replace("--force-reinstall ", ""),
            code="check.torch.not_installed",
        )
    if t.import_status in ("error", "crashed", "timeout"):
        return make(
            "torch",
            "fail",
            f"torch {t.version} is installed but `import torch` fails: {t.import_error}.",
            fixes.torch_reinstall(m),
            code="check.torch.import_fails",
        )
    details = {
        "version": t.version,
        "cuda": m.cuda,
        "hip": m.hip,
        "driver_cuda": m.facts.gpu.cuda_driver_version,
        "driver": m.facts.gpu.driver_version,
    }
    if m.torch_is_cpu:
        return make(
            "torch",
            "fail",
            f"torch {t.version} is a CPU-only build, and exllamav2 needs a CUDA or ROCm build of torch.",
            fixes.torch_reinstall(m),
            details=details,
            code="check.torch.cpu_build",
        )
    if m.hip:
        if m.nvidia and not m.amd:
            return make(
                "torch",
                "fail",
                f"torch {t.version} is a ROCm build but this machine has NVIDIA GPUs ({m.gpu_names}).",
                fixes.torch_reinstall(m),
                details=details,
                code="check.torch.rocm_on_nvidia",
            )
        if not m.amd:
            return make(
                "torch",
                "warn",
                f"torch {t.version} is a ROCm {m.hip} build; " + NO_GPU.format(what="the GPUs") + ".",
                details=details,
                code="check.no_gpu",
            )
        return make(
            "torch",
            "pass",
            f"torch {t.version} is a ROCm {m.hip} build for {m.gpu_names}.",
            details=details,
            code="check.torch.ok",
        )
    # A CUDA build from here on.
    if m.amd and not m.nvidia:
        return make(
            "torch",
            "fail",
            f"torch {t.version} is a CUDA build but this machine has AMD GPUs ({m.gpu_names}).",
            fixes.torch_reinstall(m),
            details=details,
            code="check.torch.cuda_on_amd",
        )
    if not m.nvidia:
        return make(
            "torch",
            "warn",
            f"torch {t.version} is a CUDA {m.cuda} build; " + NO_GPU.format(what="the driver and GPUs") + ".",
            details=details,
            code="check.no_gpu",
        )
    driver = m.facts.gpu.cuda_driver_version
    need, have = R.release(m.cuda, 2), R.release(driver, 2)
    if need and have and have < need:
        min_driver = R.min_driver_for_cuda(m.cuda)
        upgrade = (
            f"upgrade the NVIDIA driver to >= {min_driver} (CUDA {m.cuda})"
            if min_driver
            else (f"upgrade the NVIDIA driver to one that supports CUDA {m.cuda}")
        )
        fix = f"{upgrade}, or install a torch build for your driver: {fixes.torch_reinstall(m)}"
        if have[0] < need[0]:
            return make(
                "torch",
                "fail",
                f"the NVIDIA driver {m.facts.gpu.driver_version} supports CUDA up to {driver}, older "
                "than the "
                f"CUDA {m.cuda} torch {t.version} was built with, so torch cannot use the GPUs.",
                fix,
                details=details,
                code="check.torch.driver_too_old",
            )
        return make(
            "torch",
            "warn",
            f"the NVIDIA driver {m.facts.gpu.driver_version} supports CUDA up to {driver}, older "
            "than torch's "
            f"CUDA {m.cuda}: it runs through CUDA minor-version compatibility, but PTX-JIT kernels fail.",
            fix,
            details=details,
            code="check.torch.driver_minor_compat",
        )
    if t.details.get("cuda_available") is False and not m.facts.what_if:
        why = t.details.get("cuda_error") or "torch.cuda.is_available() is False"
        return make(
            "torch",
            "fail",
            f"torch {t.version} cannot initialise CUDA on {m.gpu_names}: {why}.",
            "check the driver with `nvidia-smi`, CUDA_VISIBLE_DEVICES, and container GPU access "
            "(docker run --gpus all)",
            details=details,
            code="check.torch.cuda_unavailable",
        )
    driver_text = f" with driver {m.facts.gpu.driver_version} (CUDA {driver})" if driver else ""
    return make(
        "torch",
        "pass",
        f"torch {t.version} (CUDA {m.cuda}) runs on {m.gpu_names}{driver_text}.",
        details=details,
        code="check.torch.ok",
    )


def _arch_entries(m: Machine) -> tuple[list[str], str]:
    """torch's arch list as ['sm_80', 'compute_90', ...] and where it came from (probe or table)."""
    measured = m.torch.details.get("arch_list")
    if measured:
        return list(measured), "torch.cuda.get_arch_list()"
    table = R.torch_table_archs(m.torch_version, m.cuda)
    if not table:
        return [], ""
    entries = ["sm_" + a.replace(".", "") for a in table]
    entries.append("compute_" + table[-1].replace(".", ""))  # the last arch is built +PTX
    return entries, "profiles/checks.toml torch.arch"


def check_torch_arch(m: Machine) -> Verdict:
    if not m.torch.installed or m.torch_is_cpu:
        return skipped(
            "torch-arch",
            "no CUDA build of torch to inspect (see the torch check).",
            code="check.not_applicable",
        )
    if m.hip:
        return skipped(
            "torch-arch",
            f"torch {m.torch_version} is a ROCm build; its gfx targets are not listed by torch.",
            code="check.not_applicable",
        )
    if not m.nvidia:
        return make(
            "torch-arch", "warn", NO_GPU.format(what="torch's kernel coverage") + ".", code="check.no_gpu"
        )
    entries, source = _arch_entries(m)
    if not entries:
        return make(
            "torch-arch",
            "warn",
            f"torch {m.torch_version} did not report its architecture list, so its "
            "kernel coverage cannot be checked.",
            code="check.torch_arch.unknown",
        )
    details = {"arch_list": entries, "source": source}
    missing: list[GpuView] = []
    ptx_only: list[GpuView] = []
    for gpu in m.nvidia:
        if gpu.cc is None:
            continue
        coverage = kernel_coverage(entries, gpu.cc)
        if coverage is None:
            missing.append(gpu)
        elif coverage == "ptx":
            ptx_only.append(gpu)
    listed = " ".join(entries)
    if missing:
        labels = ", ".join(g.label for g in missing)
        return make(
            "torch-arch",
            "fail",
            f"torch {m.torch_version} has no kernels for {labels}: its wheel carries only {listed}.",
            _arch_fix(m, missing),
            details=details,
            code="check.torch_arch.missing",
        )
    if ptx_only:
        labels = ", ".join(g.label for g in ptx_only)
        return make(
            "torch-arch",
            "warn",
            f"torch {m.torch_version} has no native kernels for {labels} ({listed}); they run through PTX "
            "JIT compilation, which is slow on first use and needs a driver at least as new as torch's CUDA.",
            _arch_fix(m, ptx_only),
            details=details,
            code="check.torch_arch.ptx_only",
        )
    return make(
        "torch-arch",
        "pass",
        f"torch {m.torch_version} carries kernels for every GPU here ({listed}).",
        details=details,
        code="check.torch_arch.ok",
    )


def _arch_fix(m: Machine, gpus: list[GpuView]) -> str:
    """A CUDA variant of the same torch whose wheel covers these GPUs (from the arch table), if any."""
    version = (m.torch_version or "").split("+", 1)[0]
    for tag in R.torch_cuda_variants(version):
        digits = tag[2:]
        archs = R.torch_table_archs(version, f"{digits[:-1]}.{digits[-1]}")
        if not archs:
            continue
        entries = ["sm_" + a.replace(".", "") for a in archs] + ["compute_" + archs[-1].replace(".", "")]
        if all(g.cc and kernel_coverage(entries, g.cc) == "sass" for g in gpus):
            sm = ", ".join(sorted({f"sm_{g.cc[0]}{g.cc[1]}" for g in gpus if g.cc}))
            return (
                f"install the {tag} build of torch {version}, which carries {sm}: "
                f"pip install --force-reinstall torch=={version} --index-url {R.torch_index_url(tag)}"
            )
    return (
        "install a torch build whose wheel includes these GPUs' architectures (CUDA 12.6 builds keep "
        "Maxwell..Hopper; CUDA 12.8+ builds of torch 2.8+ dropped sm50-sm70)"
    )
