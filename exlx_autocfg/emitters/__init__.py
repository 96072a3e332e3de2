"""Render a Plan for the tools people run EXL2 models with.

One module per target (tabbyapi, textgen, exllamav2_args, shell_env, json_plan), each a set of pure
functions Plan -> text/data; `emit(plan, format)` picks one and says how its output may be merged into an
existing file (YAML targets) or must replace it. yaml_merge and output hold the file I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exlx_autocfg.emitters import exllamav2_args, json_plan, shell_env, tabbyapi, textgen
from exlx_autocfg.emitters.common import header
from exlx_autocfg.errors import UsageError
from exlx_autocfg.planner.types import Plan

FORMATS: dict[str, str] = {
    "tabbyapi": "TabbyAPI config.yml `model:` block (exl2-checkpoint branch)",
    "tabbyapi-model": "TabbyAPI per-model tabby_config.yml",
    "textgen": "text-generation-webui config-user.yaml entry (ExLlamav2 loaders)",
    "textgen-flags": "text-generation-webui command-line flags",
    "exllamav2-args": "flags for exllamav2's scripts (model_init.add_args + cache flags)",
    "env": "shell exports: EXLLAMA_NO_* switches, CUDA device pinning",
    "json": "the plan as data for other launchers",
}


@dataclass(frozen=True)
class Emitted:
    """One rendering. `text` is stdout's; how `--out` writes a file depends on the format:
    YAML targets merge `merge_values` under `merge_section`; line formats with comments (flags, env)
    replace their own marked block (`block_merge`) and keep the user's other lines; the rest replace the
    file. `file_text` is what a file gets when it differs from stdout (flags: with the header)."""

    format: str
    text: str
    notes: list[str] = field(default_factory=list)  # for stderr when the format has no comments
    merge_section: tuple[str, ...] | None = None  # YAML: where the owned keys live
    merge_values: dict[str, Any] | None = None
    header: str = ""
    file_text: str | None = None
    block_merge: bool = False


def _check(value: str, allowed: Any, what: str) -> None:
    if value not in allowed:
        raise UsageError(f"unknown {what} {value!r} (choose from {', '.join(allowed)})")


def check_options(fmt: str, shell: str = "sh", script: str = exllamav2_args.DEFAULT_SCRIPT) -> None:
    """UsageError (one line) for an unknown format, shell or script; cheap, so callers run it first."""
    _check(fmt, FORMATS, "format")
    _check(shell, shell_env.SHELLS, "shell")
    _check(script, exllamav2_args.SCRIPTS, "script")


def emit(plan: Plan, fmt: str, *, shell: str = "sh", script: str = exllamav2_args.DEFAULT_SCRIPT,
         include_plan: bool = True, machine_gpu_count: int | None = None) -> Emitted:
    check_options(fmt, shell, script)
    if fmt in ("tabbyapi", "tabbyapi-model"):
        per_model = fmt == "tabbyapi-model"
        target = "TabbyAPI tabby_config.yml (per model)" if per_model else "TabbyAPI config.yml"
        values = tabbyapi.model_settings(plan, per_model=per_model)
        return Emitted(fmt, tabbyapi.render(plan, per_model=per_model, machine_gpu_count=machine_gpu_count),
                       merge_section=(tabbyapi.SECTION,), merge_values=values,
                       header=header(plan, target, tabbyapi.notes(plan, machine_gpu_count)))
    if fmt == "textgen":
        key = textgen.entry_key(textgen.folder_name(plan))
        return Emitted(fmt, textgen.render_config(plan, machine_gpu_count=machine_gpu_count),
                       merge_section=(key,), merge_values=textgen.entry(plan),
                       header=header(plan, "text-generation-webui config-user.yaml",
                                     textgen.notes(plan, machine_gpu_count)))
    if fmt == "textgen-flags":
        flags = textgen.render_flags(plan)
        notes = textgen.launch_notes(plan, machine_gpu_count)
        # CMD_FLAGS.txt skips lines starting with '#' (modules/shared.py), so the file carries the header.
        file_text = header(plan, "text-generation-webui CMD_FLAGS.txt", notes) + flags
        return Emitted(fmt, flags, notes=notes, file_text=file_text, block_merge=True)
    if fmt == "exllamav2-args":
        notes = exllamav2_args.notes(plan, script, machine_gpu_count)
        return Emitted(fmt, exllamav2_args.render(plan, script), notes=notes)
    if fmt == "env":
        text = shell_env.render(plan, shell, machine_gpu_count=machine_gpu_count)
        return Emitted(fmt, text, block_merge=True)
    text = json_plan.render(plan, include_plan=include_plan, machine_gpu_count=machine_gpu_count)
    return Emitted(fmt, text)


__all__ = ["FORMATS", "Emitted", "check_options", "emit"]
