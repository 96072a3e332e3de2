"""`exlx-autocfg profile` (plan and write a profile), `show` (print one readably), `verify` (is it stale?)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from exlx_autocfg import exl2
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
    ModelArg,
    PythonOpt,
    TensorParallelOpt,
    VisionOpt,
    check_plan_options,
)
from exlx_autocfg.errors import EXIT_NEGATIVE, EXIT_OK
from exlx_autocfg.profile.format import (
    Profile,
    default_profile_path,
    profile_from_plan,
    read_profile,
    write_profile,
)

GIB = 1024**3
ProfileArg = Annotated[Path, typer.Argument(help="A profile file written by `exlx-autocfg profile`.")]


@app.command("profile")
def profile_command(
    model: ModelArg,
    out: Annotated[Path | None, typer.Option("--out", help="Write the profile here (default: one file per "
                                             "model and machine in the user config dir).",
                                             show_default=False)] = None,
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
    """Plan (same options as `plan`) and write the profile the loader applies."""
    from exlx_autocfg.atomic import output_target

    check_plan_options(gpu=gpu, python=python)
    if out is not None:
        output_target(out)  # a device, FIFO or socket is refused before any probing
    from exlx_autocfg.cli.planopts import plan_with_facts

    plan, facts = plan_with_facts(
        model, gpu=gpu, assume=assume, python=python, bpw=bpw, draft=draft, draft_cache=draft_cache,
        tensor_parallel=tensor_parallel, loras=lora, vision=vision, context=context, cache=cache,
        backend=backend, min_cache_precision=min_cache_precision, budget=budget, margin_mib=margin_mib,
        batch_size=batch_size, chunk_size=chunk_size)
    profile = profile_from_plan(plan, facts)
    path = out or default_profile_path(plan.model.name, plan.model.fingerprint, profile.computed_for.machine)
    write_profile(profile, path)
    typer.echo(f"wrote {path}")
    typer.echo(f"  {settings_line(profile)}")
    for warning in profile.warnings:
        typer.echo(f"  warning: {warning}")
    return EXIT_OK


@app.command("show")
def show_command(profile_path: ProfileArg) -> int:
    """Print a profile readably: the settings, what they were computed for, and why."""
    profile = read_profile(profile_path)
    typer.echo(render_show(profile, str(profile_path)))
    return EXIT_OK


@app.command("verify")
def verify_command(
    profile_path: ProfileArg,
    python: Annotated[str | None, typer.Option("--python", help="Interpreter to probe (default: the one the "
                                               "profile was computed for, when it still exists).",
                                               show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable result.")] = False,
    model: Annotated[str | None, typer.Option(
        "--model", help="Compare the model with this directory (e.g. the download of the Hub revision the "
        "profile was planned from) instead of the profile's own.", show_default=False)] = None,
) -> int:
    """Compare a profile with this machine now; exit 1 when it is stale, 0 when it is current."""
    from exlx_autocfg.facts.detect import detect
    from exlx_autocfg.profile.staleness import find_changes
    from exlx_autocfg.profile.stamps import read_companion_stamps

    profile = read_profile(profile_path)
    recorded = profile.computed_for.python
    note = None
    if python is None and profile.computed_for.what_if:
        note = "the profile is a what-if plan (--gpu/--assume): compared with this machine and interpreter"
    elif python is None and recorded:
        if Path(recorded).exists():
            python = recorded
        else:
            note = f"the profile's interpreter {recorded} no longer exists: probed this one instead"
    facts = detect(python=python)
    stamps = read_companion_stamps(profile.computed_for)  # the draft's and adapters' files as they are now
    spec: Any = None
    if model is not None:
        from exlx_autocfg.model.load import load_model_spec

        spec = load_model_spec(model)
        changes = find_changes(profile, facts, spec.fingerprint, model_dir=model, companions=stamps)
        m = profile.computed_for.model
        if not any(c.kind == "model" for c in changes) and m.hf_repo:
            same = (f"{model} holds the revision the profile was planned from: "
                    f"hf:{m.hf_repo}@{m.hf_revision} (commit {(m.hf_commit or '?')[:12]})")
            note = _also(note, same)
    elif profile.computed_for.model.hf_repo and not profile.computed_for.model.dir:
        changes, checked, spec = hub_changes(profile, facts, stamps)
        note = _also(note, checked)
    else:
        spec, exists = profile_model(profile)
        fingerprint = spec.fingerprint if spec is not None and profile.computed_for.model.dir else None
        changes = find_changes(profile, facts, fingerprint, model_dir_exists=exists, companions=stamps)
    # The settings as they are in the file (hand edits included), re-checked with the memory model.
    from exlx_autocfg.planner.evaluate import memory_recheck_skipped
    from exlx_autocfg.profile.recheck import settings_problems

    problems = settings_problems(profile, spec) if spec is not None else []
    if spec is None:
        note = _also(note, "the settings were not re-checked: the model could not be read")
    else:
        note = _also(note, memory_recheck_skipped(profile.settings))
    if as_json:
        typer.echo(json.dumps({
            "profile": str(profile_path),
            "current": not changes and not problems,
            "python": facts.python.executable,
            "note": note,
            "changes": [{"code": c.code, "kind": c.kind, "subject": c.subject, "message": c.message}
                        for c in changes],
            "settings_problems": [{"code": f.code, "message": f.message} for f in problems],
        }, indent=2))
        return EXIT_NEGATIVE if changes or problems else EXIT_OK
    if note:
        typer.echo(f"note: {note}")
    if changes:
        typer.echo(f"stale: {profile_path}")
        for change in changes:
            typer.echo(f"  - {change.message}")
    if problems:
        typer.echo(f"settings that cannot work: {profile_path}")
        for problem in problems:
            typer.echo(f"  - {problem.message}")
    if changes or problems:
        typer.echo(f"  re-plan with: {replan_command(profile, profile_path)}")
    else:
        typer.echo(f"current: {profile_path} matches this machine, its libraries and the model, and its "
                   "settings fit the GPUs it was made for")
    return EXIT_NEGATIVE if changes or problems else EXIT_OK


@app.command("prepare")
def prepare_command(
    model: Annotated[str, typer.Argument(help="Model directory (config.json + *.safetensors).")],
    profile_path: Annotated[Path | None, typer.Option("--profile", help="Profile to apply (default: the one "
                                                      "for this model and machine; made when missing).",
                                                      show_default=False)] = None,
    on_stale: Annotated[str, typer.Option("--on-stale", help="When the profile no longer matches: replan "
                                          "(and rewrite it), refuse (exit 1) or warn (use it anyway).")
                        ] = "replan",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable result.")] = False,
) -> int:
    """Dry run of the loader: check the profile, set the switches, build the real ExLlamaV2Config, and print
    what `exlx_autocfg.load()` would load, without touching a GPU (this interpreter must have exllamav2)."""
    import warnings

    from exlx_autocfg.profile.loader import StaleProfileWarning, prepare

    # exllamav2 prints notices on stdout when imported: keep stdout for our output (and valid JSON).
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore", StaleProfileWarning)  # the same lines are printed from `notes`
        p = prepare(model, profile_path, on_stale=on_stale)
    c = p.config
    result = {
        "profile": str(p.profile_path) if p.profile_path else None,
        "stale": [{"code": ch.code, "message": ch.message} for ch in p.changes],
        "replanned": p.replanned,
        "backend": p.backend,
        "env": {var: var in os.environ for var in exl2.ENV.values()},
        "config": {k: getattr(c, k) for k in ("max_seq_len", "max_input_len", "max_attention_size",
                                              "max_batch_size", *exl2.SWITCHES)},
        "cache_class": p.cache_class.__name__,
        "gpu_split": p.gpu_split,
        "autosplit": p.autosplit,
        "reserve_vram": p.reserve_vram,
        "paged": p.paged,
        "tensor_parallel": p.tensor_parallel,
        "draft": None if p.draft_config is None else {
            "model_dir": p.draft_config.model_dir,
            "config": {k: getattr(p.draft_config, k) for k in (
                "max_seq_len", "max_input_len", "max_attention_size", "scale_pos_emb", "scale_alpha_value",
                *exl2.SWITCHES)},
            "cache_class": p.draft_cache_class.__name__ if p.draft_cache_class else None,
            "gpu_split": p.draft_gpu_split,
        },
        "loras": [{"path": path, "scale": scale} for path, scale in p.loras],
        "notes": p.notes,
    }
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return EXIT_OK
    typer.echo(f"profile   {result['profile'] or '(given)'}" + ("  (re-planned)" if p.replanned else ""))
    for note in p.notes:
        typer.echo(f"  {note}")
    env = [var for var, present in result["env"].items() if present]
    typer.echo(f"env       {' '.join(f'{v}=1' for v in env) or '(no EXLLAMA_NO_* switch)'}")
    typer.echo("config    " + ", ".join(f"{k}={v}" for k, v in result["config"].items()))
    if p.draft_config is not None:
        dc = p.draft_config
        how = f"load(gpu_split={p.draft_gpu_split})" if p.draft_gpu_split else "load_autosplit(draft_cache)"
        typer.echo(f"draft     ExLlamaV2({dc.model_dir}): max_seq_len={dc.max_seq_len}, scale_alpha_value="
                   f"{dc.scale_alpha_value:g}; {result['draft']['cache_class']}; {how} first")
    if p.tensor_parallel:
        typer.echo(f"cache     ExLlamaV2Cache_TP(model, base={result['cache_class']}, "
                   f"max_seq_len={p.cache_tokens})")
        typer.echo(f"load      model.load_tp(gpu_split={p.gpu_split}, expect_cache_tokens={p.cache_tokens}, "
                   f"expect_cache_base={result['cache_class']})")
    else:
        typer.echo(f"cache     {result['cache_class']}(model, max_seq_len={c.max_seq_len}, "
                   f"lazy={p.autosplit})")
    if p.tensor_parallel:
        pass
    elif p.autosplit:
        typer.echo(f"load      model.load_autosplit(cache, reserve_vram={p.reserve_vram})")
    else:
        typer.echo(f"load      model.load(gpu_split={p.gpu_split})")
    for path, scale in p.loras:
        typer.echo(f"lora      ExLlamaV2Lora.from_directory(model, {path!r}, {scale:g})")
    batch = p.max_batch_size if p.paged else 1
    draft = ", draft_model, draft_cache" if p.draft_config is not None else ""
    typer.echo(f"generator ExLlamaV2DynamicGenerator(paged={p.paged}, max_batch_size={batch}{draft}); "
               f"attention: {p.backend}" + ("; set_loras(...)" if p.loras else ""))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------


def profile_model(profile: Profile) -> tuple[Any, bool]:
    """(the model the profile was made for, read now; whether its directory still exists): a directory, or
    a catalog model by its name; None when it cannot be read."""
    from exlx_autocfg.errors import ExlxError
    from exlx_autocfg.model.load import load_model_spec

    m = profile.computed_for.model
    if m.dir and not Path(m.dir).is_dir():
        return None, False
    try:
        return load_model_spec(m.dir or m.name), True
    except ExlxError:
        if m.dir:
            raise
        return None, True  # a catalog name this version does not know


def _also(note: str | None, extra: str | None) -> str | None:
    """Two notes joined into one line (either may be missing)."""
    return f"{note}; {extra}" if note and extra else note or extra


def hub_changes(profile: Profile, facts: Any, stamps: Any) -> tuple[list[Any], str | None, Any]:
    """A profile planned from the Hub before the download: is its revision still what it was? (A branch
    may have been re-uploaded.) Returns the changes, a note when the Hub could not be asked, and the spec
    read from the Hub (None then)."""
    from exlx_autocfg.errors import HubError
    from exlx_autocfg.model.hub import HubRef, read_hub_spec
    from exlx_autocfg.profile.staleness import find_changes

    m = profile.computed_for.model
    revision = m.hf_revision or m.hf_commit
    try:
        spec = read_hub_spec(HubRef(str(m.hf_repo), revision))
    except HubError as exc:
        return (find_changes(profile, facts, None, companions=stamps),
                f"the Hub revision was not checked: {exc.one_line()}", None)
    assert spec.hub is not None
    now = f"hf:{m.hf_repo}@{revision} (now commit {spec.hub.commit[:12]})"
    return find_changes(profile, facts, spec.fingerprint, model_dir=now, companions=stamps), None, spec


# Plan request keys -> `profile` options, with the defaults that need not be repeated.
_REQUEST_FLAGS = {"context": ("--context", None), "cache": ("--cache", None), "backend": ("--backend", None),
                  "min_cache_precision": ("--min-cache-precision", None), "budget": ("--budget", "total"),
                  "margin_mib": ("--margin-mib", DEFAULT_MARGIN_MIB), "batch_size": ("--batch-size", 1),
                  "chunk_size": ("--chunk-size", None), "draft": ("--draft", None),
                  "draft_cache": ("--draft-cache", None)}


def replan_command(profile: Profile, path: Path) -> str:
    """The `exlx-autocfg profile` command that re-plans this profile with the options it was made with."""
    import shlex

    m = profile.computed_for.model
    model = m.dir or (f"hf:{m.hf_repo}@{m.hf_revision or m.hf_commit}" if m.hf_repo else m.name)
    args = ["exlx-autocfg", "profile", model]
    for key, value in profile.request.items():
        flag, default = _REQUEST_FLAGS.get(key, (None, None))
        if flag and value != default:
            args += [flag, str(value)]
        elif key == "tensor_parallel" and value:
            args.append("--tensor-parallel")
        elif key == "vision" and value:
            args.append("--vision")
        elif key == "loras" and isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    args += ["--lora", f"{item.get('path')}:{item.get('scale', 1.0):g}"]
    recorded = profile.computed_for.python
    # A what-if profile re-plans for this machine; a vanished interpreter cannot be probed.
    if recorded and not profile.computed_for.what_if and Path(recorded).exists():
        args += ["--python", recorded]
    return shlex.join([*args, "--out", str(path)])


def settings_line(profile: Profile) -> str:
    s = profile.settings
    split = (f"gpu_split {s.gpu_split}" if s.gpu_split else "autosplit" if s.autosplit else "one GPU")
    beside = ""
    if s.tensor_parallel:
        beside += ", tensor parallel"
    if s.draft is not None:
        beside += f", draft {s.draft.name} ({s.draft.cache_mode})"
    if s.loras:
        beside += f", {len(s.loras)} LoRA(s)"
    if s.vision:
        beside += ", vision tower"
    return (f"{s.backend}, {s.cache_mode} cache, max_seq_len {s.max_seq_len}, chunk {s.max_input_len}, "
            f"{'paged' if s.paged else 'unpaged'}, {split}{beside}")


def render_show(profile: Profile, source: str) -> str:
    s, cf = profile.settings, profile.computed_for
    env = [var for var, value in s.env.items() if value is not None]
    if s.gpu_split:
        split = f"gpu_split {', '.join(f'{x:g}' for x in s.gpu_split)} GB (weights per GPU, CUDA order)"
    elif s.autosplit:
        reserve = ", ".join(f"{b / 1024**2:.0f} MiB" for b in s.reserve_bytes) or "exllamav2 defaults"
        split = f"autosplit, reserves {reserve}"
    else:
        split = "one GPU (the first CUDA device)"
    generator = (f"paged, up to {s.max_batch_size} concurrent sequences" if s.paged
                 else "unpaged (batch 1: paged mode needs flash-attn >= 2.5.7)")
    rows: list[tuple[str, Any]] = [
        ("backend", f"{s.backend}" + (f"  (sets {', '.join(env)})" if env else "")),
        ("cache_mode", f"{s.cache_mode}  ({s.cache_class})"),
        ("max_seq_len", s.max_seq_len),
        ("max_input_len", f"{s.max_input_len}  (chunk size)"),
        ("max_attention_size", s.max_attention_size),
        ("max_batch_size", s.max_batch_size),
        ("generator", generator),
        ("split", split),
    ]
    if s.tensor_parallel:
        rows.append(("tensor_parallel", "true  (load_tp(gpu_split), ExLlamaV2Cache_TP)"))
    if s.draft is not None:
        d = s.draft
        load = (f"draft_gpu_split {', '.join(f'{x:g}' for x in d.gpu_split)} GB" if d.gpu_split
                else "autosplit" if d.autosplit else "the first GPU")
        rows.append(("draft", f"{d.name}  ({d.path or 'no local directory'}; {d.cache_mode} cache, {load}, "
                              f"rope alpha {d.rope_alpha:g}, scale {d.rope_scale:g}; loaded first)"))
    for lora in s.loras:
        rows.append(("lora", f"{lora.name}  ({lora.path}, scale {lora.scale:g}; applied after the model)"))
    if s.vision:
        rows.append(("vision", "true  (ExLlamaV2VisionTower loaded on the first GPU after the draft, before "
                               "the model)"))
    lines = [f"profile {source}  (schema {profile.schema}, exlx-autocfg {profile.tool_version}, "
             f"created {profile.created})", ""]
    lines.append("settings")
    lines += [f"  {k:<19} {v}" for k, v in rows]
    lines += ["", "computed for"]
    fp = (cf.model.fingerprint or "none")[:12]
    hub = cf.model
    where = cf.model.dir or (f"hf:{hub.hf_repo}@{hub.hf_revision}, commit {(hub.hf_commit or '?')[:12]}"
                             if hub.hf_repo else "catalog")
    lines.append(f"  model      {cf.model.name}  ({where}, fingerprint {fp})")
    for g in cf.gpus:
        cc = f", CC {g.compute_capability}" if g.compute_capability else ""
        used = "" if g.used else "  (not used)"
        lines.append(f"  GPU {g.index:<6} {g.name}  ({g.memory_total / GIB:.1f} GiB{cc}"
                     f"{', ' + g.uuid if g.uuid else ''}){used}")
    if not cf.gpus:
        lines.append("  GPUs       none")
    libs = []
    for name, lib in cf.libraries.items():
        if not lib.installed:
            libs.append(f"{name} not installed")
            continue
        state = "" if lib.import_status in ("ok", "not-tried") else f" [{lib.import_status}]"
        ext = f" ({lib.ext})" if lib.ext else ""
        libs.append(f"{name} {lib.version}{ext}{state}")
    lines.append(f"  libraries  {', '.join(libs)}")
    lines.append(f"  python     {cf.python} {cf.python_version}" + ("  (what-if)" if cf.what_if else ""))
    if profile.reasons:
        lines += ["", "why"]
        for r in profile.reasons:
            lines.append(f"  {r.decision}: {r.choice} - {r.why}")
            for alt in r.rejected:
                why = r.rejected_text(alt)
                lines.append(f"      not {alt}: {why}")
    if profile.warnings:
        lines += ["", "warnings"] + [f"  - {w}" for w in profile.warnings]
    return "\n".join(lines)

