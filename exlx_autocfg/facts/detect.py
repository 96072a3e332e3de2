"""`detect()`: the facts document for this machine and a target interpreter.

GPU facts come from this process (NVML / ROCm readers, no CUDA context); library facts come from the
probe run in the target interpreter. Both run at the same time. The probe's torch view fills in GPUs when
no SMI reader answered and makes the NVML -> CUDA device mapping exact when torch reports UUIDs.
"""

from __future__ import annotations

import datetime as _dt
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from exlx_autocfg import __version__, exl2
from exlx_autocfg.facts.arch_coverage import kernel_coverage
from exlx_autocfg.facts.gpuinfo import device_order, fill_from_torch, read_gpu_report
from exlx_autocfg.facts.probe_runner import run_probe
from exlx_autocfg.facts.types import Facts, GPUReport, LibraryFacts, PythonFacts
from exlx_autocfg.options import check_kind, seconds
from exlx_autocfg.serde import from_data
from exlx_autocfg.versions import release

DEFAULT_TIMEOUT_S = 60.0


def detect(
    python: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    no_import: bool = False,
    *,
    refresh: bool = False,
) -> Facts:
    """Probe GPUs and the GPU stack of `python` (default: this interpreter).

    `timeout` bounds the probe (its import checks run in parallel under it); `no_import` reads package
    metadata only. Import results are reused from the probe cache while their fingerprint (packages,
    interpreter, environment, driver) holds; `refresh` re-runs them. GPU facts are always read fresh.
    Raises `ProbeError` only when the interpreter cannot run the probe at all, `OptionError` for a bad
    `python` or `timeout` (not a positive, finite number of seconds); everything else (NVML errors,
    imports that fail, hang or crash) is reported in the facts.
    """
    timeout = seconds("timeout", timeout)
    check_kind("python", python, str)
    # The probe's interpreter starts first; the GPUs are read (NVML, sysfs) while it runs.
    with ThreadPoolExecutor(max_workers=1) as pool:
        probe = pool.submit(run_probe, python, timeout=timeout, no_import=no_import, refresh=refresh)
        gpu = _read_gpus_safely()
        doc = probe.result()
    return facts_from_probe(doc, gpu, env=dict(os.environ))


def _read_gpus_safely() -> GPUReport:
    try:
        return read_gpu_report()
    except Exception as exc:  # a reader bug must not hide the library facts
        return GPUReport(problems=[f"GPU readers failed: {type(exc).__name__}: {exc}"])


def facts_from_probe(doc: dict[str, Any], gpu: GPUReport, env: dict[str, str]) -> Facts:
    """Merge the probe's document and the GPU report into `Facts` (pure apart from the clock)."""
    libraries = {name: _library(name, data) for name, data in (doc.get("libraries") or {}).items()}
    torch_details = libraries["torch"].details if "torch" in libraries else {}
    fill_from_torch(gpu, torch_details)
    probe_env = {str(k): str(v) for k, v in (doc.get("env") or {}).items()}
    gpu.device_order = device_order(gpu, {**env, **probe_env}, torch_details.get("devices"))
    py = doc.get("python") or {}
    facts = Facts(
        python=PythonFacts(
            executable=str(py.get("executable", "")),
            version=str(py.get("version", "")),
            implementation=str(py.get("implementation", "CPython")),
            platform=str(py.get("platform", "")),
        ),
        gpu=gpu,
        libraries=libraries,
        env=probe_env,
        problems=[str(p) for p in doc.get("problems") or []],
        created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        tool_version=__version__,
        probe_seconds=doc.get("seconds"),
        probe_cached=(doc.get("cache") or {}).get("created") if (doc.get("cache") or {}).get("hit") else None,
    )
    facts.problems.extend(library_problems(facts))
    return facts


def _library(name: str, data: dict[str, Any]) -> LibraryFacts:
    try:
        return from_data(LibraryFacts, {**data, "name": name})
    except (TypeError, ValueError) as exc:
        return LibraryFacts(name=name, installed=False, details={"probe_error": str(exc)})


def library_problems(facts: Facts) -> list[str]:
    """The short list of problems `detect` shows: what is broken or missing in the stack, one line each."""
    out: list[str] = []
    torch = facts.lib("torch")
    if "torch" in facts.libraries and not torch.installed:  # (absent: the probe was asked about others)
        out.append(f"torch is not installed in {facts.python.executable}: ExLlamaV2 cannot run there")
    for lib in facts.libraries.values():
        if lib.installed and lib.import_status in ("error", "timeout", "crashed"):
            out.append(f"{lib.name} {lib.version}: import {lib.import_status}: {lib.import_error}")
    if torch.installed and torch.import_status == "ok":
        out.extend(_torch_problems(facts, torch))
    xformers = facts.lib("xformers")
    if xformers.installed and xformers.import_status == "ok":
        out.extend(_xformers_problems(xformers, facts.version_of("exllamav2")))
    flash = facts.lib("flash-attn")
    if flash.installed and flash.details.get("cuda_module_error"):
        error = flash.details["cuda_module_error"]
        out.append(f"flash-attn {flash.version}: its CUDA module failed to load: {error}")
    for name in ("exllamav2", "exllamav3"):
        lib = facts.lib(name)
        if lib.installed:
            out.extend(_extension_problems(lib, torch))
    return out


def _torch_problems(facts: Facts, torch: LibraryFacts) -> list[str]:
    d = torch.details
    out = []
    nvidia = [g for g in facts.gpu.gpus if g.vendor == "nvidia"]
    if nvidia and not d.get("cuda_version"):
        out.append(f"torch {torch.version} has no CUDA support but NVIDIA GPUs are present: use a CUDA build")
    elif nvidia and d.get("cuda_available") is False:
        out.append(f"torch {torch.version} cannot use the NVIDIA GPUs (torch.cuda.is_available() is False)")
    driver_cuda, torch_cuda = facts.gpu.cuda_driver_version, d.get("cuda_version")
    if driver_cuda and torch_cuda and (release(driver_cuda, 2) or ()) < (release(torch_cuda, 2) or ()):
        out.append(
            f"the NVIDIA driver supports CUDA up to {driver_cuda}, torch was built for CUDA {torch_cuda}: "
            "update the driver or install a torch build for an older CUDA"
        )
    arch_list = d.get("arch_list") or []
    if arch_list:
        for gpu in nvidia:
            if gpu.cc and kernel_coverage(arch_list, gpu.cc) is None:
                out.append(
                    f"torch {torch.version} has no kernels for GPU {gpu.index} ({gpu.name}, "
                    f"sm_{gpu.cc[0]}{gpu.cc[1]}); it was built for {' '.join(arch_list)}"
                )
    return out


def _xformers_problems(lib: LibraryFacts, exllamav2: str | None) -> list[str]:
    d = lib.details
    out = []
    if d.get("has_cpp_library") is False:
        built = d.get("built_for") or {}
        why = d.get("cpp_load_error") or "no reason given"
        target = f"built for PyTorch {built.get('torch')}, CUDA {built.get('cuda')}" if built else "?"
        out.append(f"xformers {lib.version}: C++/CUDA ops did not load ({target}; {why}): attention fails")
    if d.get("flash_version_error"):
        out.append(f"xformers {lib.version}: {d['flash_version_error']}")
    mask = exl2.xformers_mask_import(exllamav2)  # what `import exllamav2` imports (its version, else latest)
    if mask and d.get("import_paths", {}).get(mask) is False:
        version = exllamav2 or exl2.LATEST
        out.append(f"xformers {lib.version}: {mask} does not resolve (exllamav2 {version} imports it)")
    return out


def _extension_problems(lib: LibraryFacts, torch: LibraryFacts) -> list[str]:
    d = lib.details
    ext = d.get("ext")
    name = f"{lib.name} {lib.version}"
    if ext == "prebuilt-broken":
        return [f"{name}: the prebuilt extension does not load: {d.get('ext_error')}"]
    if ext == "jit-cached" and lib.import_status != "ok":
        return [f"{name}: the JIT-cached extension does not load ({d.get('ext_error')}); delete the cache"]
    if ext != "jit-needed":
        return []
    jit = d.get("jit") or {}
    torch_cuda, torch_hip = jit.get("torch_cuda_version"), jit.get("torch_hip_version")
    out = [f"{name}: JIT build needed (no prebuilt extension): the first import compiles it, for minutes"]
    if torch.installed and not torch_cuda and not torch_hip:
        out.append(f"{name}: torch {torch.version} has no CUDA/HIP, so the extension cannot be built")
        return out
    if torch_cuda:
        if not jit.get("nvcc"):
            out.append(f"{name}: nvcc not found (CUDA_HOME, PATH, /usr/local/cuda): the JIT build will fail")
        elif jit.get("nvcc_version") and release(jit["nvcc_version"], 1) != release(torch_cuda, 1):
            out.append(
                f"{name}: nvcc {jit['nvcc_version']} does not match torch's CUDA {torch_cuda}: "
                "the JIT build will fail or produce an extension that does not load"
            )
    if not jit.get("ninja"):
        out.append(f"{name}: ninja not found: torch's JIT build needs it (pip install ninja)")
    elif not jit.get("ninja_on_path"):
        out.append(f"{name}: ninja is installed but not on PATH: activate the venv before the first import")
    if not jit.get("compiler"):
        out.append(f"{name}: no C++ compiler found (c++/CXX): the JIT build will fail")
    return out
