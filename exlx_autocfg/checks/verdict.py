"""The check report: one verdict per check, and the exit code the whole report maps to.

`CheckReport.to_dict()` is the `check --json` document (schema in docs/check.md). Exit codes are part of
the public contract: installers, Dockerfiles and CI branch on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from exlx_autocfg.errors import EXIT_NEGATIVE, EXIT_OK, EXIT_STRICT_WARNINGS
from exlx_autocfg.findings import CODES, Finding
from exlx_autocfg.serde import from_data, to_data

CHECK_SCHEMA = 2

Status = Literal["pass", "warn", "fail"]
STATUSES: tuple[str, ...] = ("pass", "warn", "fail")


@dataclass
class Verdict:
    """The outcome of one check: a status, the reason in one sentence, and the fix for this machine."""

    id: str  # stable identifier: "torch", "xformers", ... (docs/check.md lists them)
    title: str  # what the check verifies, for people
    status: Status
    reason: str  # one sentence
    code: str = ""  # what the verdict is about, stable (exlx_autocfg.findings.CODES; docs/codes.md)
    fix: str | None = None  # the exact remedy for this machine (a command, a switch), when one exists
    also: list[Finding] = field(default_factory=list)  # further findings of the same check
    switches: dict[str, str] = field(default_factory=dict)  # EXLLAMA_NO_* etc. that work around the problem
    details: dict[str, Any] = field(default_factory=dict)  # the facts the verdict was drawn from


@dataclass
class CheckReport:
    verdicts: list[Verdict]
    python: str = ""  # the interpreter checked
    what_if: bool = False  # GPUs or libraries came from --gpu/--assume, not from this machine
    switches: dict[str, str] = field(default_factory=dict)  # every switch the verdicts ask for, merged
    summary: dict[str, int] = field(default_factory=dict)  # status -> count
    tool_version: str = ""
    seconds: float | None = None
    schema: int = CHECK_SCHEMA

    def __post_init__(self) -> None:
        if not self.summary:
            self.summary = {s: sum(v.status == s for v in self.verdicts) for s in STATUSES}
        if not self.switches:
            for verdict in self.verdicts:
                self.switches.update(verdict.switches)

    @property
    def failed(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.status == "fail"]

    @property
    def warned(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.status == "warn"]

    def verdict(self, check_id: str) -> Verdict | None:
        return next((v for v in self.verdicts if v.id == check_id), None)

    def exit_code(self, strict: bool = False) -> int:
        """0 all pass (warnings allowed), 1 a check failed, 3 warnings under --strict (2 is usage errors)."""
        if self.failed:
            return EXIT_NEGATIVE
        if strict and self.warned:
            return EXIT_STRICT_WARNINGS
        return EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        return to_data(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckReport:
        return from_data(cls, data)


# The checks, in the order they run and print. Ids are stable (docs/check.md, `--skip`, JSON consumers).
CHECKS: dict[str, str] = {
    "torch": "torch is installed and its CUDA/ROCm build runs with this driver and these GPUs",
    "torch-arch": "the torch wheel has kernels for these GPUs' architectures",
    "xformers": "xformers is built for this torch and Python, its ops load, it supports these GPUs",
    "flash-attn": "flash-attn imports with this torch, suits these GPUs and meets exllamav2's thresholds",
    "exllamav2-ext": "exllamav2's compiled extension matches torch, or a JIT build can succeed",
    "exllamav2-import": "`import exllamav2` succeeds in a child process with the switches the plan sets",
    "backend": "the backend the planner picks gives correct output with this exllamav2",
    "exl3": "EXL2 or EXL3: which format is the maintained path for these GPUs",
}


def make(
    check_id: str,
    status: Status,
    reason: str,
    fix: str | None = None,
    *,
    code: str,
    also: list[Finding] | None = None,
    title: str | None = None,
    **extra: Any,
) -> Verdict:
    """A verdict for one of the registered checks (the title, unless given, comes from CHECKS); the reason
    becomes one sentence on one line; `code` must be registered (exlx_autocfg.findings.CODES)."""
    if code not in CODES:
        raise ValueError(f"unregistered verdict code {code!r}")
    return Verdict(
        id=check_id,
        title=title or CHECKS.get(check_id, check_id),
        status=status,
        reason=sentence(reason),
        code=code,
        fix=fix,
        also=[Finding(f.code, sentence(f.message), f.evidence) for f in also or []],
        **extra,
    )


def skipped(check_id: str, reason: str, code: str) -> Verdict:
    """A check that does not apply here: it passes, and says why it had nothing to verify."""
    return make(check_id, "pass", reason, code=code, details={"skipped": True})


def from_findings(
    check_id: str, status: Status, findings: list[Finding], fix: str | None = None, **extra: Any
) -> Verdict:
    """A verdict drawn from coded findings: the first one is the reason (and the code), the rest `also`."""
    first, *rest = findings
    return make(check_id, status, first.message, fix, code=first.code, also=rest, **extra)


# --- text helpers shared by the checks ---------------------------------------------------------------------


def sentence(text: str) -> str:
    """One line, ending in exactly one full stop (error messages often bring their own)."""
    text = " ".join(text.split()).rstrip(".")
    return text if text.endswith(("!", "?", "…")) else text + "."


def short(text: str | None, limit: int = 200) -> str:
    """An error message cut to one readable line."""
    text = " ".join((text or "unknown error").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def join_and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1] if items else ""
