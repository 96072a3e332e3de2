"""Checks on exllamav2 itself: its compiled extension (prebuilt or JIT), a real import in a child process,
the correctness of the backend the planner picks, and the EXL2-vs-EXL3 advice.

All pure: the child import is run by `checks.importer` and handed in as an `ImportResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exlx_autocfg import exl2
from exlx_autocfg.checks import fixes
from exlx_autocfg.checks import rules as R
from exlx_autocfg.checks.attention import backend_query
from exlx_autocfg.checks.machine import Machine
from exlx_autocfg.checks.verdict import Verdict, join_and, make, short, skipped
from exlx_autocfg.findings import Finding
from exlx_autocfg.planner import backends

# ------------------------------------------------------------------------------------------ the extension


def jit_missing(m: Machine) -> list[str]:
    """What a JIT build of exllamav2_ext lacks here (empty: it can be attempted)."""
    return [need for need, _ in jit_gaps(m)]


def jit_gaps(m: Machine) -> list[tuple[str, str]]:
    """(what is missing, how to get it) for a JIT build of exllamav2_ext."""
    jit = m.lib("exllamav2").details.get("jit") or {}
    gaps = []
    if m.torch_is_cpu:
        gaps.append(
            (
                f"a CUDA build of torch (this is {m.torch_version})",
                "a CUDA build of torch (see the torch check)",
            )
        )
    if not m.hip:
        want = m.cuda or jit.get("torch_cuda_version")
        nvcc_version = jit.get("nvcc_version")
        toolkit = (
            f"the CUDA {want} toolkit (nvcc) with CUDA_HOME pointing at it"
            if want
            else "the CUDA toolkit (nvcc)"
        )
        if not jit.get("nvcc"):
            gaps.append((f"nvcc{f' (CUDA {want})' if want else ''} on PATH or in CUDA_HOME", toolkit))
        elif want and nvcc_version and R.release(nvcc_version, 1) != R.release(want, 1):
            gaps.append(
                (
                    f"an nvcc matching torch's CUDA {want} (found nvcc {nvcc_version} at {jit['nvcc']}; "
                    "torch "
                    "refuses a different CUDA major)",
                    toolkit,
                )
            )
    if not jit.get("ninja"):
        gaps.append(("ninja", "`pip install ninja`"))
    if not jit.get("compiler"):
        gaps.append(("a C++ compiler", "g++ (`apt-get install g++`; MSVC Build Tools on Windows)"))
    return gaps


def check_exllamav2_ext(m: Machine) -> Verdict:
    e = m.lib("exllamav2")
    if not e.installed:
        wheel = fixes.exllamav2_wheel_install(m)
        return make(
            "exllamav2-ext",
            "fail",
            "exllamav2 is not installed.",
            wheel or f"pip install exllamav2=={exl2.LATEST}",
            code="check.exllamav2.not_installed",
        )
    ext = e.details.get("ext")
    jit = e.details.get("jit") or {}
    error = e.details.get("ext_error")
    details = {
        "ext": ext,
        "version": e.version,
        "local_tag": e.local_tag,
        "torch": m.torch_version,
        "jit": jit,
    }
    wheel_line = fixes.exllamav2_wheel_install(m)
    wheel_file = fixes.exllamav2_wheel_file(m)
    if ext == "prebuilt":
        built = e.build.get("torch")
        if built and R.minor_of(built) != R.minor_of(m.torch_version):
            return make(
                "exllamav2-ext",
                "warn",
                f"the prebuilt exllamav2_ext loads, but it was built for torch {built} and this is torch "
                f"{m.torch_version}; a torch ABI change can break it at the first kernel call.",
                wheel_line,
                code="check.exllamav2_ext.prebuilt_other_torch",
                details=details,
            )
        tag = f" ({e.local_tag})" if e.local_tag else ""
        return make(
            "exllamav2-ext",
            "pass",
            f"the prebuilt exllamav2_ext of exllamav2 {e.version}{tag} loads with torch {m.torch_version}.",
            code="check.exllamav2_ext.prebuilt_ok",
            details=details,
        )
    if ext == "prebuilt-broken":
        built = e.build.get("torch")
        built_text = f"was built for torch {built} and " if built else ""
        reason = (
            f"the prebuilt exllamav2_ext {built_text}does not load with torch {m.torch_version} "
            f"({short(error)}), so `import exllamav2` fails."
        )
        if wheel_line:
            fix = f"install the wheel built for this torch ({wheel_file}): {wheel_line}"
        else:
            fix = (
                f"no prebuilt exllamav2 wheel matches torch {m.torch_version}: reinstall the JIT wheel with "
                f"`pip install --force-reinstall --no-deps exllamav2=={e.version}` (compiles on first import)"
            )
        return make(
            "exllamav2-ext", "fail", reason, fix, code="check.exllamav2_ext.prebuilt_broken", details=details
        )
    if ext == "jit-cached":
        cache = jit.get("cache_dir") or "the torch extensions cache"
        if error:
            return make(
                "exllamav2-ext",
                "fail",
                f"the JIT-built exllamav2_ext cached at {cache} does not load with torch {m.torch_version} "
                f"({short(error)}).",
                f"delete the stale JIT cache at {cache} (it is rebuilt on the next `import exllamav2`)",
                code="check.exllamav2_ext.jit_cache_broken",
                details=details,
            )
        return make(
            "exllamav2-ext",
            "pass",
            f"exllamav2_ext is JIT-built and cached at {cache}.",
            code="check.exllamav2_ext.jit_cached",
            details=details,
        )
    if ext == "jit-needed":
        gaps = jit_gaps(m)
        missing = [need for need, _ in gaps]
        if gaps:
            how = "install " + join_and([h for _, h in gaps])
            fix = f"install the prebuilt wheel for this torch: {wheel_line}; or {how}" if wheel_line else how
            return make(
                "exllamav2-ext",
                "fail",
                f"exllamav2 {e.version} has no prebuilt extension here, so `import exllamav2` must "
                "JIT-compile "
                f"exllamav2_ext, which needs {join_and(missing)}.",
                fix,
                code="check.exllamav2_ext.jit_missing",
                details=details,
            )
        nvcc = f"nvcc {jit.get('nvcc_version') or '?'}"
        return make(
            "exllamav2-ext",
            "pass",
            f"exllamav2 {e.version} has no prebuilt extension; the first `import exllamav2` compiles it "
            f"({R.rules()['jit']['sources_count']} sources, minutes) with {nvcc}, ninja and "
            f"{jit.get('compiler') or 'the compiler'} found.",
            code="check.exllamav2_ext.jit_ready",
            details=details,
        )
    return make(
        "exllamav2-ext",
        "warn",
        f"the probe did not determine how exllamav2 {e.version} gets its extension (no import was tried).",
        code="check.exllamav2_ext.unknown",
        details=details,
    )


# ------------------------------------------------------------------------------------------ the backend


def planned_switches(m: Machine) -> dict[str, str]:
    """The EXLLAMA_NO_* switches the planner's backend choice sets, as environment variables."""
    return _as_env(m, backends.select(backend_query(m)))


def _as_env(m: Machine, selection: backends.Selection) -> dict[str, str]:
    """The selection's switches as env vars, leaving out those for libraries that are not installed
    (exllamav2 cannot pick those up anyway, so the switch would only be noise)."""
    absent = {
        exl2.SWITCH["flash_attn"]: not m.lib("flash-attn").installed,
        exl2.SWITCH["xformers"]: not m.lib("xformers").installed,
    }
    return {exl2.ENV[k]: "1" for k, on in selection.switches.items() if on and not absent.get(k, False)}


def check_backend(m: Machine, prescribed: dict[str, str] | None = None) -> Verdict:
    """`prescribed`: switches the failing library checks tell the user to set. exllamav2 without a profile
    falls through its precedence to the next backend once they are set, and that one must be correct too."""
    e = m.lib("exllamav2")
    if not e.installed:
        return skipped(
            "backend", "exllamav2 is not installed (see exllamav2-ext).", code="check.not_installed"
        )
    selection = backends.select(backend_query(m))
    planned = selection.backend
    switches = _as_env(m, selection)
    details = {
        "planned": planned,
        "valid": selection.valid,
        "rejected": selection.rejected,
        "exllamav2": e.version,
    }
    planned_bad = backends.gives_wrong_output(selection.rejected.get(planned, []))
    if planned_bad:  # the planner only picks valid backends; guards against a rules change breaking that
        return make(
            "backend",
            "fail",
            f"the planned backend {planned} is known to give wrong output: {_defect(planned_bad)}.",
            code=planned_bad.code,
            details=details,
        )
    default = exllamav2_default(m, prescribed or {})
    details["exllamav2_default"] = default
    wrong = backends.gives_wrong_output(selection.rejected.get(default, []))
    if default != planned and wrong:
        return make(
            "backend",
            "fail",
            f"exllamav2 {e.version} on its own would use {default} here, where {_defect(wrong)}; the planner "
            f"picks {planned}.",
            f"set {_env_line(switches)} before importing exllamav2 (an exlx-autocfg profile does this), "
            "or make a better backend usable (see the xformers and flash-attn checks)",
            code=wrong.code,
            switches=switches,
            details=details,
        )
    if planned == "matmul" and m.gpus:
        note = next((w for w in selection.warnings if w.code == "backend.matmul.fp16_softmax"), None)
        return make(
            "backend",
            "warn",
            "matmul is the only backend that gives correct output here"
            + (f" ({backends.rules()['matmul']['fp16_note']})." if note else "."),
            "install xformers built for this torch (see the xformers check)",
            code="check.backend.matmul_only",
            switches=switches,
            details=details,
        )
    switch_text = f" with {_env_line(switches)}" if switches else ""
    return make(
        "backend",
        "pass",
        f"the planner picks {planned}{switch_text}, which gives correct output with exllamav2 {e.version}.",
        code="check.backend.ok",
        switches=switches,
        details=details,
    )


def _defect(f: Finding) -> str:
    """What a wrong-output finding says goes wrong (its rule's text, kept in the evidence)."""
    return str(f.evidence.get("defect") or f.message)


def exllamav2_default(m: Machine, prescribed: dict[str, str]) -> str:
    """The backend exllamav2 uses for a causal prompt without a profile: its own precedence over what it can
    import, minus what the environment (or the prescribed switches) turns off; correctness not considered."""
    env = {**m.facts.env, **prescribed}
    flags = exl2.import_flags(m.facts, m.lib("exllamav2").version, env=env)
    return exl2.lands_on(exl2.switches_from_env(env), flags)


def _env_line(switches: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(switches.items())) or "no switches"


# ------------------------------------------------------------------------------------------- child import


@dataclass
class ImportResult:
    """What `import exllamav2` did in a child process of the target interpreter."""

    attempted: bool
    ok: bool = False
    seconds: float | None = None
    error: str | None = None  # the last meaningful line of the child's error
    timed_out: bool = False
    env: dict[str, str] = field(default_factory=dict)  # the switches it ran with
    backends: dict[str, bool] = field(
        default_factory=dict
    )  # has_flash_attn, has_xformers, has_lower_right_sdpa
    not_tried: str | None = None  # why it was not attempted


def import_verdict(m: Machine, result: ImportResult) -> Verdict:
    e = m.lib("exllamav2")
    if not e.installed:
        return skipped(
            "exllamav2-import", "exllamav2 is not installed (see exllamav2-ext).", code="check.not_installed"
        )
    env = _env_line(result.env)
    details = {"env": result.env, "seconds": result.seconds, "backends": result.backends}
    if not result.attempted:
        return make(
            "exllamav2-import",
            "warn",
            f"`import exllamav2` was not tried: {result.not_tried}.",
            "run `python -c 'import exllamav2'` once in this environment (it builds the extension), "
            "then re-run the check",
            code="check.import.not_tried",
            details=details,
        )
    if result.ok:
        on = ", ".join(k.removeprefix("has_") for k, v in result.backends.items() if v) or "none"
        return make(
            "exllamav2-import",
            "pass",
            f"`import exllamav2` {e.version} succeeds with {env}; it enabled: {on}.",
            code="check.import.ok",
            details=details,
        )
    if result.timed_out:
        return make(
            "exllamav2-import",
            "fail",
            f"`import exllamav2` with {env} did not finish within {result.seconds:.0f} s.",
            "run `python -c 'import exllamav2'` by hand to see where it hangs",
            code="check.import.timeout",
            details=details,
        )
    error = short(result.error)
    fix = None
    # The child's error text is a fact from outside (exllamav2's traceback), not one of our reasons.
    if "flash_attn" in (result.error or ""):
        fix = f"set {exl2.OFF_ENV['flash_attn']}=1 (see the flash-attn check)"
    elif "xformers" in (result.error or ""):
        fix = f"set {exl2.OFF_ENV['xformers']}=1 (see the xformers check)"
    elif e.details.get("ext") == "jit-needed" and jit_missing(m):
        fix = "see the exllamav2-ext check: the JIT build lacks " + join_and(jit_missing(m))
    elif "exllamav2_ext" in (result.error or ""):
        fix = "see the exllamav2-ext check"
    return make(
        "exllamav2-import",
        "fail",
        f"`import exllamav2` fails with {env}: {error}.",
        fix,
        code="check.import.fails",
        details=details,
    )


# ------------------------------------------------------------------------------------------------ EXL3


def check_exl3(m: Machine) -> Verdict:
    min_cc = R.exl3_min_cc()
    floor = f"{min_cc[0]}.{min_cc[1]}"
    if not m.gpus:
        return skipped(
            "exl3", "no GPU is visible, so there is no format advice to give.", code="check.no_gpu"
        )
    if m.amd:
        return make(
            "exl3",
            "pass",
            "EXL2 is the right format here: ExLlamaV3 (EXL3) does not support ROCm.",
            code="check.exl3.rocm",
        )
    old = m.below(min_cc)
    if old:
        labels = ", ".join(g.label for g in old)
        return make(
            "exl3",
            "pass",
            f"EXL2 is the right format here: {labels} "
            f"{'is' if len(old) == 1 else 'are'} below ExLlamaV3's minimum compute capability {floor}.",
            code="check.exl3.old_gpu",
        )
    return make(
        "exl3",
        "warn",
        f"every GPU here has compute capability >= {floor}, so ExLlamaV3 (EXL3) is the maintained path; "
        "ExLlamaV2 is archived upstream and TabbyAPI and text-generation-webui moved to ExLlamaV3.",
        "consider EXL3 models with exllamav3 (`pip install exllamav3`); `--skip exl3` silences this advice",
        code="plan.exl3_available",
    )
