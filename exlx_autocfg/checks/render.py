"""Plain-text rendering of a check report (the default `check` output; `--json` prints `to_json()`)."""

from __future__ import annotations

import textwrap

from exlx_autocfg.checks.verdict import CheckReport

LABEL = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}
WIDTH = 100


def render_text(report: CheckReport, strict: bool = False) -> str:
    head = f"exlx-autocfg check: {report.python}" + ("  [what-if]" if report.what_if else "")
    lines = [head]
    id_width = max((len(v.id) for v in report.verdicts), default=8)
    indent = " " * (2 + 4 + 2 + id_width + 2)
    for v in report.verdicts:
        first = f"  {LABEL[v.status]}  {v.id.ljust(id_width)}  "
        lines += textwrap.wrap(v.reason, WIDTH, initial_indent=first, subsequent_indent=indent)
        for more in v.also:
            lines += textwrap.wrap(
                more, WIDTH, initial_indent=indent + "also: ", subsequent_indent=indent + "      "
            )
        if v.fix and v.status != "pass":
            lines += textwrap.wrap(
                v.fix,
                WIDTH,
                initial_indent=indent + "fix: ",
                subsequent_indent=indent + "     ",
                break_on_hyphens=False,
                break_long_words=False,
            )
    s = report.summary
    code = report.exit_code(strict)
    lines.append(
        f"{s.get('fail', 0)} failed, {s.get('warn', 0)} warnings, {s.get('pass', 0)} passed"
        f" -> exit {code}" + (" (--strict)" if strict and s.get("warn") else "")
    )
    if report.switches:
        env = " ".join(f"{k}={v}" for k, v in sorted(report.switches.items()))
        lines.append(f"switches the plan sets for exllamav2: {env}")
    return "\n".join(lines)
