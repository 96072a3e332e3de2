"""Checks on the optional attention libraries exllamav2 picks up at import: xformers and flash-attn.

What makes a library unusable is decided by the backend rules (`exlx_autocfg.planner.backends`, data in
`profiles/backends.toml` and `profiles/xformers.toml`); these checks add the severity for an installer
(does it crash `import exllamav2`, fail every call, or only cost speed?) and the fix for this machine.
"""

from __future__ import annotations

from exlx_autocfg import exl2
from exlx_autocfg.checks import fixes
from exlx_autocfg.checks import rules as R
from exlx_autocfg.checks.machine import Machine
from exlx_autocfg.checks.verdict import Verdict, from_findings, make, short, skipped
from exlx_autocfg.findings import Finding, finding, has_code
from exlx_autocfg.planner import backends
from exlx_autocfg.xformers_releases import xformers_release


def backend_query(m: Machine) -> backends.BackendQuery:
    """The query the planner would judge backends with, for no particular model."""
    version = m.lib("exllamav2").version or exl2.LATEST
    return backends.BackendQuery(facts=m.facts, gpus=tuple(m.facts.gpu.gpus), exllamav2=version)


# ------------------------------------------------------------------------------------------------ xformers


def check_xformers(m: Machine, required: bool = False) -> Verdict:
    x = m.lib("xformers")
    if not x.installed:
        if required:
            return make(
                "xformers",
                "fail",
                "xformers is required (--require) but not installed.",
                _xformers_fix(m),
                code="check.required.missing",
            )
        return skipped(
            "xformers",
            "xformers is not installed (exllamav2 then uses flash-attn, SDPA or matmul).",
            code="check.not_installed",
        )
    q = backend_query(m)
    findings = [f for f in backends.Xformers.validate(q) if f.code not in backends.NOT_INSTALLED]
    details = {
        "version": x.version,
        "built_for": x.details.get("built_for"),
        "has_cpp_library": x.details.get("has_cpp_library"),
        "torch": m.torch_version,
    }
    python_note = _python_mismatch(m, x.details.get("built_for") or {})
    # A torch mismatch already explains unloadable ops; otherwise a Python mismatch may.
    torch_explains = has_code(findings, "backend.xformers.cpp_ops_mismatch")
    if python_note and x.details.get("has_cpp_library") is False and not torch_explains:
        findings.append(python_note)
    if findings:
        return from_findings(
            "xformers",
            "fail",
            findings,
            _xformers_fix(m),
            switches={exl2.OFF_ENV["xformers"]: "1"},
            details=details,
        )
    warnings = backends.Xformers.warnings(q)
    if warnings:
        return from_findings("xformers", "warn", warnings, None, details=details)
    built = (x.details.get("built_for") or {}).get("torch")
    built_text = f" (built for torch {built})" if built else ""
    return make(
        "xformers",
        "pass",
        f"xformers {x.version}{built_text} loads its ops on torch {m.torch_version} "
        f"and supports {m.gpu_names}.",
        code="check.xformers.ok",
        details=details,
    )


def _python_mismatch(m: Machine, built_for: dict) -> Finding | None:
    built_py = R.minor_of(built_for.get("python"))
    if built_py and built_py != R.minor_of(m.python):
        return finding(
            "check.xformers.python_mismatch",
            f"xformers was built for Python {built_py}, this is Python {m.python}",
            built_for=built_py,
            python=m.python,
        )
    return None


def _xformers_fix(m: Machine) -> str:
    """The release to pin (loads on this torch, supports these GPUs, accepts this flash-attn), else the
    flash-attn to install, else the switch."""
    x = m.lib("xformers")
    off = exl2.OFF_ENV["xformers"]
    release = xformers_release(x.version or "")
    flash = m.lib("flash-attn")
    flash_problem = bool(x.details.get("flash_version_error")) or bool(
        release
        and release.flash_window_enforced
        and flash.installed
        and flash.version
        and not release.accepts_flash_attn(flash.version)
    )
    if (
        flash.installed
        and flash.import_status in ("error", "crashed", "timeout")
        and "flash_attn" in (x.import_error or "")
    ):
        return (
            "xformers fails while importing the broken flash-attn: fix flash-attn first (see the flash-attn "
            f"check), or set {off}=1"
        )
    candidates = fixes.xformers_candidates(m)  # they all accept the installed flash-attn
    if flash_problem and release and release.flash_window and not candidates:
        lo, hi = release.flash_window
        flash_line = fixes.flash_attn_install(m, [lo, hi])
        pin = flash_line or f"pip install --no-deps flash-attn with a version in {lo}..{hi}"
        return (
            f"install a flash-attn that xformers {x.version} accepts ({lo}..{hi}): {pin}; or set "
            f"XFORMERS_IGNORE_FLASH_VERSION_CHECK=1; or set {off}=1"
        )
    first = "install a CUDA build of torch first (see the torch check), then " if m.torch_is_cpu else ""
    if candidates:
        return first + fixes.xformers_install(m, candidates[0])
    gpus = [g for g in m.nvidia if g.cc]
    weakest = min(gpus, key=lambda g: g.cc or (0, 0)) if gpus else None
    last = fixes.newest_xformers_for_cc(weakest.cc) if weakest and weakest.cc else None
    hint = (
        (
            f" (the newest release for CC {weakest.cc_text} is {last.version}, built for torch "
            f"{last.built_for_torch})"
        )
        if last and weakest
        else ""
    )
    return (
        f"no xformers release works with torch {m.torch_version} on {m.gpu_names}: set {off}=1 "
        f"or `pip uninstall -y xformers`{hint}"
    )


# ---------------------------------------------------------------------------------------------- flash-attn


def check_flash_attn(m: Machine, required: bool = False) -> Verdict:
    fa = m.lib("flash-attn")
    var = exl2.OFF_ENV["flash_attn"]
    if not fa.installed:
        if required:
            return make(
                "flash-attn",
                "fail",
                "flash-attn is required (--require) but not installed.",
                fixes.flash_attn_install(m)
                or "pip install --no-build-isolation flash-attn (no official wheel for this torch: it "
                "compiles against it; ROCm builds: see the flash-attention README)",
                code="check.required.missing",
            )
        return skipped(
            "flash-attn",
            "flash-attn is not installed (exllamav2 runs without it, unpaged).",
            code="check.not_installed",
        )
    rules = backends.rules()["flash_attn"]
    disabled = m.env_set(var)
    off = {var: "1"}
    details = {"version": fa.version, "torch": m.torch_version, "disabled_by_env": disabled}
    torch = m.torch_version
    problems: list[tuple[str, Finding, str | None]] = []  # (status, finding, fix)

    error = fa.import_error or fa.details.get("cuda_module_error")
    import_failed = fa.import_status in ("error", "crashed", "timeout")
    if not import_failed and "No module named" in (error or ""):
        # exllamav2 (>= 2.5.7 branch) imports flash_attn_2_cuda inside `except ModuleNotFoundError`: a missing
        # module (e.g. the ROCm Triton backend) silently turns flash off instead of crashing the import.
        problems.append(
            (
                "warn",
                finding(
                    "check.flash_attn.no_cuda_module",
                    f"flash-attn {fa.version} has no flash_attn_2_cuda module ({short(error)}), so "
                    "exllamav2 silently runs without it",
                    error=short(error),
                ),
                fixes.flash_attn_install(m) or f"set {var}=1 to make that explicit",
            )
        )
    elif import_failed or error:
        abi = "undefined symbol" in (error or "")
        cause = (
            f"it was built for another torch ({short(error)})" if abi else short(error or fa.import_status)
        )
        text = (
            f"flash-attn {fa.version} does not load with torch {torch}: {cause}; `import exllamav2` "
            "crashes on it because exllamav2 only tolerates a missing flash-attn"
        )
        build = fixes.flash_attn_install(m)
        fix = f"set {var}=1 before importing exllamav2, or `pip uninstall -y flash-attn`"
        if build:
            fix += f", or install the build for torch {R.minor_of(torch)}: {build}"
        problems.append(("fail", finding("check.flash_attn.load_fails", text, abi_mismatch=abi), fix))

    min_cc = R.flash_attn_min_cc()
    old = m.below(min_cc)
    if old and not m.hip:
        labels = ", ".join(g.label for g in old)
        problems.append(
            (
                "fail",
                finding(
                    "check.flash_attn.compute_capability",
                    f"flash-attn 2.x needs compute capability >= {rules['min_cc']} but {labels} "
                    f"{'is' if len(old) == 1 else 'are'} older; exllamav2 still enables it and every forward "
                    'pass raises "FlashAttention only supports Ampere GPUs or newer."',
                    gpus=[g.label for g in old],
                    min_cc=rules["min_cc"],
                ),
                f"set {var}=1 (or `pip uninstall -y flash-attn`)",
            )
        )
    if m.hip:
        problems.append(
            (
                "warn",
                finding(
                    "check.flash_attn.rocm",
                    "flash-attn on ROCm is not used by the planner (TabbyAPI runs "
                    "HIP in compatibility mode without it)",
                ),
                f"set {var}=1",
            )
        )

    version = R.parse_version(fa.version)
    if version is None:
        problems.append(
            (
                "fail",
                finding(
                    "check.flash_attn.no_version",
                    "flash_attn has no version (an FA4-only namespace "
                    "install?) and exllamav2 reads flash_attn.__version__ at import",
                ),
                f"set {var}=1",
            )
        )
    elif version < R.parse_version(rules["min_version"]):
        problems.append(
            (
                "warn",
                finding(
                    "check.flash_attn.too_old",
                    f"exllamav2 ignores flash-attn {fa.version} (it needs >= {rules['min_version']})",
                    version=fa.version,
                    min_version=rules["min_version"],
                ),
                fixes.flash_attn_install(m),
            )
        )
    elif version < R.parse_version(rules["paged_min_version"]) and not old:
        problems.append(
            (
                "warn",
                finding(
                    "check.flash_attn.no_paged",
                    f"flash-attn {fa.version} has no paged attention (>= {rules['paged_min_version']}), "
                    "so the dynamic generator runs unpaged with batch size 1",
                    version=fa.version,
                    paged_min_version=rules["paged_min_version"],
                ),
                fixes.flash_attn_install(m),
            )
        )

    if not problems:
        features = fa.details.get("features") or exl2.flash_features(fa.version)
        on = ", ".join(k for k, v in features.items() if v) or "none"
        return make(
            "flash-attn",
            "pass",
            f"flash-attn {fa.version} imports with torch {torch} and suits {m.gpu_names} (features: {on}).",
            code="check.flash_attn.ok",
            details=details,
        )
    fails = [p for p in problems if p[0] == "fail"]
    status = "fail" if fails else "warn"
    if disabled and fails:
        status = "warn"  # exllamav2 will not import it: not a crash, but the package is still broken
    first = (fails or problems)[0]
    reason = first[1].message
    if disabled and fails:
        reason += f" ({var} is set, so exllamav2 skips it)"
    return make(
        "flash-attn",
        status,
        reason,
        first[2],
        code=first[1].code,
        also=[p[1] for p in problems if p is not first],
        switches=off if fails else {},
        details=details,
    )
