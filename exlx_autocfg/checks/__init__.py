"""Install-time checks: is this Python environment ready to run ExLlamaV2 on these GPUs?

- `run_checks(facts, import_result=None, require=(), skip=()) -> CheckReport` is pure: facts in, verdicts out.
- `check(python=None, ...)` is the edge: one `detect()` run, optional what-if GPUs/libraries, one child
  `import exllamav2` with the switches the plan would set, then `run_checks`. `exlx_autocfg.check` is this.

Every verdict is pass/warn/fail with a one-sentence reason and, where one exists, the fix for this machine.
Exit codes (`CheckReport.exit_code`): 0 all pass (warnings allowed), 1 a check failed, 3 warnings under
--strict; 2 is a usage error (raised as `UsageError`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from exlx_autocfg.checks import fixes
from exlx_autocfg.checks.attention import check_flash_attn, check_xformers
from exlx_autocfg.checks.exllama import (
    ImportResult,
    check_backend,
    check_exl3,
    check_exllamav2_ext,
    import_verdict,
    jit_missing,
    planned_switches,
)
from exlx_autocfg.checks.machine import Machine
from exlx_autocfg.checks.stack import check_torch, check_torch_arch
from exlx_autocfg.checks.verdict import CHECKS, CheckReport, Verdict, make, skipped
from exlx_autocfg.errors import OptionError
from exlx_autocfg.facts.types import Facts

__all__ = ["CHECKS", "CheckReport", "ImportResult", "Verdict", "check", "parse_requirements", "run_checks"]

# Packages --require accepts: the ones the probe reports on (profiles/probe_targets.json).
REQUIRABLE = ("torch", "xformers", "flash-attn", "exllamav2", "exllamav3", "mslk", "triton")


def parse_requirements(specs: Iterable[str]) -> list[Requirement]:
    """`--require` values ('xformers', 'flash-attn>=2.5.7') as requirements; UsageError for anything else."""
    out = []
    for spec in specs:
        try:
            req = Requirement(spec)
        except InvalidRequirement:
            raise OptionError(
                "require", spec, "expected a package name with an optional version, e.g. flash-attn>=2.5.7"
            ) from None
        name = canonicalize_name(req.name)
        if name == "flash-attention" or name == "flash-attn-2":
            name = "flash-attn"
        if name not in REQUIRABLE:
            raise OptionError("require", spec, f"unknown package {name!r}; known: {', '.join(REQUIRABLE)}")
        req.name = name
        out.append(req)
    return out


def _check_skip(skip: Iterable[str]) -> set[str]:
    wanted = set(skip)
    unknown = wanted - set(CHECKS)
    if unknown:
        raise OptionError("skip", ", ".join(sorted(unknown)), f"unknown check; known: {', '.join(CHECKS)}")
    return wanted


def _required_verdicts(m: Machine, requirements: list[Requirement]) -> list[Verdict]:
    out = []
    for req in requirements:
        lib = m.lib(req.name)
        vid = f"require:{req.name}"
        title = f"--require {req}"
        if not lib.installed:
            v = make(
                vid,
                "fail",
                f"{req.name} is required but not installed.",
                _install_fix(m, req),
                code="check.required.missing",
                title=title,
            )
        elif req.specifier and not req.specifier.contains(lib.version or "", prereleases=True):
            v = make(
                vid,
                "fail",
                f"{req.name} {lib.version} is installed but {req} is required.",
                _install_fix(m, req),
                code="check.required.version",
                title=title,
            )
        elif lib.import_status in ("error", "crashed", "timeout"):
            v = make(
                vid,
                "fail",
                f"{req.name} {lib.version} is installed but does not import: {lib.import_error}.",
                f"see the {req.name} check"
                if req.name in CHECKS
                else f'pip install --force-reinstall "{req}"',
                code="check.required.import_fails",
                title=title,
            )
        else:
            v = make(
                vid, "pass", f"{req.name} {lib.version} is installed as required.", code="check.required.ok",
                title=title,
            )
        out.append(v)
    return out


def _install_fix(m: Machine, req: Requirement) -> str:
    """The install line for a required package, matched to this machine where the rules know how."""
    if req.name == "xformers":
        candidates = [c for c in fixes.xformers_candidates(m) if req.specifier.contains(c.version, True)]
        if candidates:
            return fixes.xformers_install(m, candidates[0])
    if req.name == "flash-attn":
        line = fixes.flash_attn_install(m)
        if line:
            return line
    if req.name == "torch":
        return fixes.torch_reinstall(m)
    return f'pip install "{req}"'


def run_checks(
    facts: Facts,
    import_result: ImportResult | None = None,
    require: Iterable[str] = (),
    skip: Iterable[str] = (),
    extra: Iterable[Verdict] = (),
) -> CheckReport:
    """All verdicts for these facts. Pure: the child import, if any, was run before and is passed in;
    `extra`: verdicts drawn elsewhere (the draft and adapters named with --draft / --lora), appended."""
    m = Machine(facts)
    requirements = parse_requirements(require)
    skipping = _check_skip(skip)
    required = {r.name for r in requirements}
    runners = {
        "torch": lambda: check_torch(m),
        "torch-arch": lambda: check_torch_arch(m),
        "xformers": lambda: check_xformers(m, required="xformers" in required),
        "flash-attn": lambda: check_flash_attn(m, required="flash-attn" in required),
        "exllamav2-ext": lambda: check_exllamav2_ext(m),
        "exllamav2-import": lambda: _import_check(m, import_result),
        "backend": lambda: check_backend(m, prescribed),
        "exl3": lambda: check_exl3(m),
    }
    verdicts: list[Verdict] = []
    prescribed: dict[str, str] = {}  # switches that failing checks ask for (read by the backend check)
    for cid in CHECKS:
        if cid in skipping:
            continue
        verdict = runners[cid]()
        if verdict.status == "fail":
            prescribed.update(verdict.switches)
        verdicts.append(verdict)
    verdicts += _required_verdicts(m, requirements)
    verdicts += list(extra)
    return CheckReport(
        verdicts=verdicts, python=facts.python.executable, what_if=facts.what_if, tool_version=_tool_version()
    )


def _import_check(m: Machine, result: ImportResult | None) -> Verdict:
    if result is None:
        if m.facts.what_if:
            return skipped(
                "exllamav2-import",
                "what-if facts: the assumed libraries cannot be imported here.",
                code="check.import.not_run",
            )
        return skipped(
            "exllamav2-import", "not run (no child import was requested).", code="check.import.not_run"
        )
    return import_verdict(m, result)


def import_plan(facts: Facts) -> tuple[dict[str, str], str | None]:
    """The switches the child import runs with, and why it must not run at all (None: run it)."""
    m = Machine(facts)
    e = m.lib("exllamav2")
    if not e.installed:
        return {}, "exllamav2 is not installed"
    if e.details.get("ext") == "jit-needed" and not jit_missing(m):
        return {}, "it would JIT-compile exllamav2_ext (minutes), which a check must not start"
    return planned_switches(m), None


def check(
    python: str | None = None,
    *,
    require: Iterable[str] = (),
    skip: Iterable[str] = (),
    gpu: list[str] | None = None,
    assume: list[str] | None = None,
    facts: Facts | None = None,
    timeout: float = 60.0,
    import_timeout: float = 60.0,
    import_test: bool = True,
    model: str | None = None,
    draft: str | None = None,
    loras: Iterable[str] = (),
) -> CheckReport:
    """Probe the interpreter `python` (default: this one) once and return every verdict.

    `gpu` / `assume`: what-if GPUs (`--gpu NAME[xN]`) and libraries (`--assume PKG==VER`) replace what was
    found; with `assume`, the child import is not run (the assumed libraries are not installed).
    `facts`: reuse facts from an earlier `detect()` instead of probing again.
    `import_test`: run the child `import exllamav2` (off for facts recorded elsewhere).
    `draft` / `loras`: a draft model and LoRA adapter directories to check (one verdict each: will they
    load?), against `model` (a model directory or catalog reference) when given.
    Raises UsageError / OptionError (a bad --require, --skip, --gpu, --assume, timeout), ModelSpecError (an
    unreadable --model), ProbeError (the interpreter cannot run the probe); a failing check is a verdict,
    never an exception.
    """
    from exlx_autocfg.options import check_kind, seconds

    seconds("timeout", timeout)
    seconds("import_timeout", import_timeout)
    check_kind("python", python, str)
    if facts is not None and not isinstance(facts, Facts):
        raise OptionError("facts", facts, "must be a Facts document (Facts.from_json)")
    started = time.monotonic()
    requirements = list(require)
    parse_requirements(requirements)  # usage errors before any probing
    skipping = _check_skip(skip)
    if gpu or assume:
        from exlx_autocfg.facts.what_if import parse_assume, parse_gpu_option, what_if_facts

        for spec in gpu or []:
            parse_gpu_option(spec)
        for spec in assume or []:
            parse_assume(spec)
    check_kind("model", model, str)
    check_kind("draft", draft, str)
    loras = list(loras)
    for lora in loras:
        check_kind("lora", lora, str, optional=False)
    if model is not None and draft is None and not loras:
        raise OptionError("model", model, "applies only with --draft or --lora (the model they load beside)")
    extra: list[Verdict] = []
    if draft is not None or loras:  # bad input first, before any probing
        from exlx_autocfg.checks.companions import companion_verdicts
        from exlx_autocfg.model.load import load_model_spec

        spec = load_model_spec(model) if model is not None else None
        extra = companion_verdicts(spec, draft, loras)
    if facts is None:
        from exlx_autocfg.facts.detect import detect

        facts = detect(python=python, timeout=timeout)
    if gpu or assume:
        facts = what_if_facts(gpus=gpu, assume=assume, base=facts)
    result: ImportResult | None = None
    if import_test and "exllamav2-import" not in skipping and not assume:
        switches, not_tried = import_plan(facts)
        if not_tried is None:
            from exlx_autocfg.checks.importer import try_import

            result = try_import(facts.python.executable or python, switches, timeout=import_timeout)
        elif facts.lib("exllamav2").installed:
            result = ImportResult(attempted=False, not_tried=not_tried)
    report = run_checks(facts, result, require=requirements, skip=skipping, extra=extra)
    report.seconds = round(time.monotonic() - started, 3)
    return report


def _tool_version() -> str:
    from exlx_autocfg import __version__

    return __version__
