"""Render a Plan for the tools people run EXL2 models with.

One module per target (tabbyapi, textgen, exllamav2_args, shell_env, json_plan), each a set of pure
functions Plan -> text/data; `emit(src, format)` picks one and says how its output may be merged into an
existing file (YAML targets) or must replace it. yaml_merge and output hold the file I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exlx_autocfg.emitters import exllamav2_args, json_plan, shell_env, tabbyapi, textgen
from exlx_autocfg.emitters.common import header
from exlx_autocfg.emitters.source import EmitInput, as_input
from exlx_autocfg.emitters.yaml_merge import dump_yaml
from exlx_autocfg.errors import UsageError

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
    # YAML: further sections merged the same way (TabbyAPI's draft_model: and lora:), after merge_section
    more_sections: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = ()


def _check(value: str, allowed: Any, what: str) -> None:
    if value not in allowed:
        raise UsageError(f"unknown {what} {value!r} (choose from {', '.join(allowed)})")


def check_options(fmt: str, shell: str = "sh", script: str = exllamav2_args.DEFAULT_SCRIPT) -> None:
    """UsageError (one line) for an unknown format, shell or script; cheap, so callers run it first."""
    _check(fmt, FORMATS, "format")
    _check(shell, shell_env.SHELLS, "shell")
    _check(script, exllamav2_args.SCRIPTS, "script")


def emit(source: Any, fmt: str, *, shell: str = "sh", script: str = exllamav2_args.DEFAULT_SCRIPT,
         include_plan: bool = True, machine_gpu_count: int | None = None) -> Emitted:
    """Render `source` (a Plan, a Profile or an EmitInput) in format `fmt`. `machine_gpu_count`: how many
    GPUs the machine has, for a Plan (a profile records it)."""
    check_options(fmt, shell, script)
    src = as_input(source, machine_gpu_count)
    if fmt in ("tabbyapi", "tabbyapi-model"):
        per_model = fmt == "tabbyapi-model"
        page_header = tabbyapi.page_header(src, per_model=per_model)
        sections = tabbyapi.sections(src, per_model=per_model)
        text = page_header + "\n" + dump_yaml(sections)
        values = sections.pop(tabbyapi.SECTION)
        return Emitted(fmt, text, merge_section=(tabbyapi.SECTION,), merge_values=values, header=page_header,
                       more_sections=tuple(((name,), v) for name, v in sections.items()))
    if fmt == "textgen":
        key = textgen.entry_key(textgen.folder_name(src))
        return Emitted(fmt, textgen.render_config(src),
                       merge_section=(key,), merge_values=textgen.entry(src),
                       header=header(src, "text-generation-webui config-user.yaml",
                                     textgen.notes(src)))
    if fmt == "textgen-flags":
        flags = textgen.render_flags(src)
        notes = textgen.launch_notes(src)
        # CMD_FLAGS.txt skips lines starting with '#' (modules/shared.py), so the file carries the header.
        file_text = header(src, "text-generation-webui CMD_FLAGS.txt", notes) + flags
        return Emitted(fmt, flags, notes=notes, file_text=file_text, block_merge=True)
    if fmt == "exllamav2-args":
        notes = exllamav2_args.notes(src, script)
        return Emitted(fmt, exllamav2_args.render(src, script), notes=notes)
    if fmt == "env":
        text = shell_env.render(src, shell)
        return Emitted(fmt, text, block_merge=True)
    text = json_plan.render(src, include_plan=include_plan)
    return Emitted(fmt, text)


__all__ = ["FORMATS", "EmitInput", "Emitted", "check_options", "emit"]
