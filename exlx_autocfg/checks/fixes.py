"""The exact remedies the verdicts print: pinned install lines for THIS torch, CUDA, Python and GPU.

Pure functions of the machine view and the rules data.
"""

from __future__ import annotations

from packaging.version import Version

from exlx_autocfg.checks import rules as R
from exlx_autocfg.checks.machine import Machine
from exlx_autocfg.xformers_releases import XformersRelease, xformers_releases

NO_DEPS_WHY = (
    "--no-deps keeps torch {torch}: a plain `pip install xformers` pulls the newest release and "
    "replaces torch"
)


def torch_reinstall(m: Machine) -> str:
    """How to get a CUDA (or ROCm) build of the installed torch version that this driver runs."""
    version = (m.torch_version or "").split("+", 1)[0]
    pin = f"torch=={version}" if version else "torch"
    if m.amd and not m.nvidia:
        return (
            f"install the ROCm build of torch: pip install --force-reinstall {pin} --index-url "
            + R.torch_index_url(R.rules()["torch"]["rocm_index_tag"])
            + " (pick the rocmX.Y index your ROCm runs)"
        )
    driver = m.facts.gpu.cuda_driver_version
    tag = R.torch_variant_for_driver(version, driver)
    if tag:
        return f"pip install --force-reinstall {pin} --index-url {R.torch_index_url(tag)}"
    limit = (
        f"a CUDA not newer than your driver's CUDA {driver}"
        if driver
        else "a CUDA your NVIDIA driver supports"
    )
    return (
        f"install a CUDA build of {pin} for {limit}: pip install --force-reinstall {pin} --index-url "
        "https://download.pytorch.org/whl/<cuXYZ> (the variants are listed at https://pytorch.org/get-started/locally/)"
    )


def xformers_candidates(m: Machine) -> list[XformersRelease]:
    """Releases whose ops load on this torch, support every GPU here and accept the installed flash-attn."""
    torch = m.torch_version
    if not torch:
        return []
    flash = m.lib("flash-attn")
    ccs = [g.cc for g in m.nvidia if g.cc]
    out = []
    for rel in xformers_releases():
        if not rel.loads_on_torch(torch):
            continue
        if ccs and min(ccs) < (R.cc_tuple(rel.min_cc) or (0, 0)):
            continue
        if (
            flash.installed
            and flash.version
            and rel.flash_window_enforced
            and not rel.accepts_flash_attn(flash.version)
            and not m.env_set("XFORMERS_IGNORE_FLASH_VERSION_CHECK")
        ):
            continue
        out.append(rel)
    # Exact-pin releases first (built for this very torch), then stable-ABI ones; newest within each.
    return sorted(out, key=lambda r: (not r.stable_abi, Version(r.version)), reverse=True)


def xformers_install(m: Machine, rel: XformersRelease) -> str:
    """`pip install --no-deps xformers==X` for this torch's CUDA variant, with why --no-deps."""
    line = f"pip install --no-deps xformers=={rel.version}"
    tag = R.torch_cuda_tag(m.cuda)
    if tag and rel.cuda and tag != rel.cuda[0] and tag in rel.cuda:
        line += f" --index-url {R.torch_index_url(tag)}"
    return line + " (" + NO_DEPS_WHY.format(torch=m.torch_version) + ")"


def newest_xformers_for_cc(cc: tuple[int, int]) -> XformersRelease | None:
    ok = [r for r in xformers_releases() if (R.cc_tuple(r.min_cc) or (0, 0)) <= cc]
    return max(ok, key=lambda r: Version(r.version)) if ok else None


def flash_attn_install(m: Machine, accept: list[str] | None = None) -> str | None:
    """The flash-attn build for this torch, CUDA and Python (official wheel, else a forced local build)."""
    if not m.cuda or m.windows:
        return None
    wheel = R.flash_attn_wheel(m.torch_version, m.cuda, m.python, m.cxx11_abi, accept)
    if wheel:
        return (
            f"pip install --no-deps --no-build-isolation flash-attn=={wheel.version} "
            f"(its setup fetches {wheel.file})"
        )
    # No official wheel: build one. Inside a window, its upper bound; else the installed version.
    target = accept[1] if accept else m.lib("flash-attn").version
    version = f"=={target}" if target else ""
    return (
        f"FLASH_ATTENTION_FORCE_BUILD=TRUE pip install --no-deps --no-build-isolation flash-attn{version} "
        f"(no official wheel for torch {R.minor_of(m.torch_version)}: this compiles it against your torch; "
        "needs nvcc)"
    )


def exllamav2_wheel_install(m: Machine) -> str | None:
    wheel = R.exllamav2_wheel(
        m.lib("exllamav2").version, m.torch_version, m.cuda, m.hip, m.python, windows=m.windows
    )
    if wheel is None:
        return None
    return f"pip install --no-deps --force-reinstall {wheel.url}"


def exllamav2_wheel_file(m: Machine) -> str | None:
    wheel = R.exllamav2_wheel(
        m.lib("exllamav2").version, m.torch_version, m.cuda, m.hip, m.python, windows=m.windows
    )
    return wheel.file if wheel else None
