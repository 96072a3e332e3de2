"""`exlx-autocfg emit`: render a profile, or a fresh plan for a model, as another tool's configuration.

    exlx-autocfg emit --format FORMAT PROFILE.toml [--out PATH]
    exlx-autocfg emit --format FORMAT MODEL [plan options] [--out PATH]

SOURCE is a profile when it names a file (or ends in .toml), else a model directory or catalog reference
that is planned on the spot with the usual plan options. Without --out the result goes to stdout and any
note the format cannot carry as a comment goes to stderr. With --out, YAML formats are merged into an
existing file (only the keys exlx-autocfg owns change; a .bak copy is kept) and other formats replace
the file; every write is atomic. --out may name a directory: the target's usual file name is used.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from exlx_autocfg.cli.app import app
from exlx_autocfg.cli.planopts import (
    DEFAULT_MARGIN_MIB,
    AssumeOpt,
    BackendOpt,
    BatchOpt,
    BpwOpt,
    BudgetOpt,
    CacheOpt,
    ChunkOpt,
    ContextOpt,
    DraftCacheOpt,
    DraftOpt,
    GpuOpt,
    LoraOpt,
    MarginOpt,
    MinCacheOpt,
    PythonOpt,
    TensorParallelOpt,
    VisionOpt,
)
from exlx_autocfg.errors import OptionError, UsageError

if TYPE_CHECKING:
    from exlx_autocfg.emitters import Emitted

# The file each target reads, for `--out DIRECTORY`.
DEFAULT_FILE = {
    "tabbyapi": "config.yml",
    "tabbyapi-model": "tabby_config.yml",
    "textgen": "config-user.yaml",
    "textgen-flags": "CMD_FLAGS.txt",
    "exllamav2-args": "exllamav2-args.txt",
    "env": "exlx-env.sh",
    "json": "exlx-plan.json",
}
_ENV_SUFFIX = {"sh": ".sh", "fish": ".fish", "powershell": ".ps1"}


def _is_profile(source: str) -> bool:
    path = Path(source)
    return path.suffix == ".toml" or path.is_file()


def _target_path(out: Path, fmt: str, shell: str) -> Path:
    if not out.is_dir():
        return out
    name = DEFAULT_FILE[fmt]
    if fmt == "env":
        name = "exlx-env" + _ENV_SUFFIX[shell]
    return out / name


SourceArg = Annotated[
    str, typer.Argument(help="A profile file, or a model directory / catalog reference to plan now.",
                        show_default=False),
]
FormatOpt = Annotated[
    str | None, typer.Option("--format", "-f", show_default=False,
                      help="tabbyapi | tabbyapi-model | textgen | textgen-flags | exllamav2-args | env | "
                      "json"),
]
OutOpt = Annotated[
    Path | None, typer.Option("--out", "-o", show_default=False,
                              help="Write (YAML: merge) into this file or directory instead of stdout."),
]
ShellOpt = Annotated[
    str | None, typer.Option("--shell", show_default=False,
                             help="For --format env only: sh (default) | fish | powershell."),
]
ScriptOpt = Annotated[
    str | None, typer.Option("--script", show_default=False,
                             help="For --format exllamav2-args only: chat (default) | humaneval | mmlu "
                             "(these take cache flags) | model_init (any other script)."),
]


@app.command()
def emit(
    source: SourceArg,
    fmt: FormatOpt = None,
    out: OutOpt = None,
    shell: ShellOpt = None,
    script: ScriptOpt = None,
    gpu: GpuOpt = None,
    assume: AssumeOpt = None,
    context: ContextOpt = None,
    cache: CacheOpt = None,
    backend: BackendOpt = None,
    min_cache_precision: MinCacheOpt = None,
    budget: BudgetOpt = "total",
    margin_mib: MarginOpt = DEFAULT_MARGIN_MIB,
    batch_size: BatchOpt = 1,
    chunk_size: ChunkOpt = None,
    bpw: BpwOpt = None,
    python: PythonOpt = None,
    draft: DraftOpt = None,
    draft_cache: DraftCacheOpt = None,
    tensor_parallel: TensorParallelOpt = False,
    lora: LoraOpt = None,
    vision: VisionOpt = False,
) -> int:
    """Write a plan as TabbyAPI / text-generation-webui config, exllamav2 script flags, shell env or JSON."""
    from exlx_autocfg.emitters import FORMATS, check_options
    from exlx_autocfg.emitters import emit as render

    if fmt is None:
        raise UsageError(f"--format is required (choose from {', '.join(FORMATS)})")
    # An option the format does not read is refused rather than silently dropped.
    if shell is not None and fmt != "env":
        raise OptionError("shell", shell, f"applies only to --format env, not --format {fmt}")
    if script is not None and fmt != "exllamav2-args":
        raise OptionError("script", script, f"applies only to --format exllamav2-args, not --format {fmt}")
    shell, script = shell or "sh", script or "chat"
    check_options(fmt, shell, script)  # before any planning or probing
    if out is not None:
        _check_target(_target_path(out, fmt, shell))
    from_profile = _is_profile(source)
    if from_profile:
        given = [name for name, value in (("--gpu", gpu), ("--assume", assume), ("--context", context),
                                          ("--cache", cache), ("--backend", backend),
                                          ("--min-cache-precision", min_cache_precision),
                                          ("--chunk-size", chunk_size), ("--bpw", bpw), ("--python", python),
                                          ("--budget", budget != "total"),
                                          ("--margin-mib", margin_mib != DEFAULT_MARGIN_MIB),
                                          ("--batch-size", batch_size != 1), ("--draft", draft),
                                          ("--draft-cache", draft_cache),
                                          ("--tensor-parallel", tensor_parallel), ("--lora", lora),
                                          ("--vision", vision))
                 if value]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise UsageError(f"{source} is a profile: {', '.join(given)} {verb} only to a MODEL "
                             "(re-create the profile to change them)")
        from exlx_autocfg.profile.format import read_profile

        emit_source: object = read_profile(source)
        machine_gpus = None
    else:
        from exlx_autocfg.cli.planopts import plan_with_facts

        emit_source, facts = plan_with_facts(
            source, gpu=gpu, assume=assume, python=python, bpw=bpw, draft=draft, draft_cache=draft_cache,
            tensor_parallel=tensor_parallel, loras=lora, vision=vision, context=context, cache=cache,
            backend=backend, min_cache_precision=min_cache_precision, budget=budget, margin_mib=margin_mib,
            batch_size=batch_size, chunk_size=chunk_size)
        machine_gpus = len(facts.gpu.gpus)

    result = render(emit_source, fmt, shell=shell, script=script, include_plan=not from_profile,
                    machine_gpu_count=machine_gpus)
    for note in result.notes:
        print(f"exlx-autocfg: note: {note}", file=sys.stderr)
    if out is None:
        sys.stdout.write(result.text)
    else:
        from exlx_autocfg.emitters.source import as_input

        _write(result, _target_path(out, fmt, shell), as_input(emit_source, machine_gpus))
    return 0


def _check_target(target: Path) -> None:
    """Refuse a device / FIFO / socket target before planning (the write checks again, under the lock)."""
    from exlx_autocfg.atomic import output_target

    output_target(target)


def _write(result: Emitted, target: Path, source_input: object = None) -> None:
    """Write (YAML: merge) into `target` under its directory's lock; see `exlx_autocfg.atomic` for what
    a target may be (symlinks are written through, /dev/stdout and /dev/null plainly, other devices,
    FIFOs and sockets refused)."""
    from exlx_autocfg.emitters.output import merge_block, update_file
    from exlx_autocfg.emitters.yaml_merge import merge_yaml

    with update_file(target) as out:
        old = out.old_text()
        if result.merge_section is not None:
            values = dict(result.merge_values or {})
            more = [(section, dict(v)) for section, v in result.more_sections]
            if result.format == "tabbyapi":
                from exlx_autocfg.emitters.tabbyapi import keep_model_dir

                values = keep_model_dir(values, old, out.target.path.parent)
            if result.format in ("tabbyapi", "tabbyapi-model"):
                from exlx_autocfg.emitters.tabbyapi import clear_unplanned

                # A draft or adapters an earlier emit (or a hand edit) left would load beside this plan.
                cleared = clear_unplanned(source_input, old, per_model=result.format == "tabbyapi-model")
                more += [((name,), v) for name, v in cleared.items()]
            text = merge_yaml(old, result.merge_section, values, result.header, source=str(target))
            for section, extra in more:
                text = merge_yaml(text, section, extra, result.header, source=str(target))
            what = f"{len(values)} keys under {'.'.join(result.merge_section)!r} in "
            if more:
                what = (f"{len(values)} keys under {'.'.join(result.merge_section)!r}, "
                        + ", ".join(f"{len(v)} under {'.'.join(s)!r}" for s, v in more) + " in ")
        else:
            text = result.file_text or result.text
            if result.block_merge:
                text = merge_block(old, text, str(target))
            what = ""
        written = out.write(text, backup=True)
        backup = f" (previous file kept as {out.backup_name})" if out.backup_name else ""
    through = f" (through the symlink {target})" if written != target and out.target.kind != "stream" else ""
    print(f"exlx-autocfg: wrote {what}{written}{through}{backup}", file=sys.stderr)
