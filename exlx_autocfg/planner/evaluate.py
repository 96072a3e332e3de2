"""Would these settings run on these GPUs? The shape rules and the memory model, re-run on a settings record
that did not come from the planner: a hand-edited profile (`verify`, `prepare`) or loader overrides.

Each problem is one coded finding that names the setting and why it cannot work; an empty list means the
settings are as sound as a plan the planner would have made. (A context beyond the model's trained length
can run, with RoPE scaling or degraded output: the planner warns about it when it plans, it is no problem
here.) The placement is exllamav2's own: a
`gpu_split` goes through the `set_device_map` emulation, one GPU takes everything, autosplit fills the GPUs
in order; each GPU's bytes are the planner's `device_total` at the settings' context, cache and chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from exlx_autocfg.errors import DoesNotFitError
from exlx_autocfg.findings import Finding, finding
from exlx_autocfg.planner import memory
from exlx_autocfg.planner.core import reserve_of
from exlx_autocfg.planner.fit import Placed, device_total, fit
from exlx_autocfg.planner.request import DEFAULT_MARGIN_MIB
from exlx_autocfg.planner.solver import Solver
from exlx_autocfg.planner.split import set_device_map_placement
from exlx_autocfg.settings import Settings, SettingsError, validate_settings

MIB = 1024**2
GIB = 1024**3


def memory_recheck_skipped(settings: Settings) -> str | None:
    """Why the memory re-check does not cover `settings` (None: it does). It places the model alone,
    layer by layer: a TP split, a draft loaded first or adapter bytes would need their own files re-read
    (verify reports a changed draft or adapter as stale; the loader rejudges them)."""
    beside = [what for what, on in (("tensor parallelism", settings.tensor_parallel),
                                    ("a draft model", settings.draft is not None),
                                    ("LoRA adapters", bool(settings.loras))) if on]
    if not beside:
        return None
    return (f"the settings' shape rules were re-checked, their memory was not: the re-check places the model "
            f"alone, and these settings load {' and '.join(beside)} with it")


def evaluate_settings(
    spec: Any,
    gpus: Sequence[Any],
    settings: Settings,
    *,
    margin_mib: int = DEFAULT_MARGIN_MIB,
    overheads: memory.Overheads | None = None,
) -> list[Finding]:
    """The problems of `settings` for `spec` on `gpus` (objects with `index`, `name`, `memory_total`, in CUDA
    order: the GPUs the settings were made for), budgeted as the planner budgets: total VRAM minus the
    margin, the CUDA context and allocator slack as reserve."""
    try:
        validate_settings(settings)
    except SettingsError as exc:
        return [finding("settings.invalid", f"settings.{exc.key}: {exc.problem}", key=exc.key)]
    s = settings
    problems: list[Finding] = []
    if s.max_input_len > s.max_seq_len:
        problems.append(finding(
            "settings.chunk_over_context",
            f"settings.max_input_len {s.max_input_len} is larger than settings.max_seq_len {s.max_seq_len}: "
            f"exllamav2 cuts it to {s.max_seq_len} when it loads (model.py), so the edit does nothing; set "
            f"max_input_len to at most {s.max_seq_len}",
            max_input_len=s.max_input_len, max_seq_len=s.max_seq_len,
        ))
    if s.gpu_split is not None and len(s.gpu_split) > len(gpus):
        problems.append(finding(
            "settings.split_longer_than_gpus",
            f"settings.gpu_split lists {len(s.gpu_split)} GPUs but the profile was made for {len(gpus)} "
            f"({', '.join(g.name for g in gpus)}): exllamav2 would place layers on a GPU that is not there",
            entries=len(s.gpu_split), gpus=len(gpus),
        ))
        return problems  # no placement to evaluate
    if not gpus or memory_recheck_skipped(s):
        return problems
    reserve = reserve_of(overheads or memory.DEFAULT_OVERHEADS)
    budgets = [g.memory_total - margin_mib * MIB for g in gpus]
    chunk = min(s.max_input_len, s.max_seq_len)  # what exllamav2 runs with
    solver = Solver(spec, s.backend, budgets, [reserve] * len(gpus), s.max_batch_size)
    costs = solver.costs(s.cache_mode, s.max_seq_len, chunk)
    modules = solver.modules(chunk)
    try:
        devices = _placement(spec, s, modules, budgets, reserve, chunk, costs)
    except DoesNotFitError as exc:
        problems.append(finding("settings.split_too_small", f"settings.gpu_split: {exc.one_line()}",
                                gpu_split=list(s.gpu_split or [])))
        return problems
    if devices is None:  # autosplit ran out of GPUs
        need = device_total(costs, sum(m.weight_bytes for m in modules), spec.num_hidden_layers,
                            max(m.scratch_fixed_bytes for m in modules), reserve)
        problems.append(finding(
            "settings.does_not_fit",
            f"settings.max_seq_len {s.max_seq_len} with {s.cache_mode} cache does not fit on "
            f"{', '.join(g.name for g in gpus)} with autosplit: the model and its cache need about "
            f"{need / GIB:.2f} GiB, the GPUs offer {sum(budgets) / GIB:.2f} GiB",
            needed=need, budget=sum(budgets),
        ))
        return problems
    for gpu, dev in zip(gpus, devices, strict=False):
        total = dev.total(costs)
        if total > dev.budget:
            parts = dev.parts(costs)
            cache = parts["cache"] + parts["staging"]
            problems.append(finding(
                "settings.does_not_fit",
                f"GPU #{gpu.index} {gpu.name} would need {total / GIB:.2f} GiB for these settings "
                f"(weights {parts['weights'] / GIB:.2f}, cache {cache / GIB:.2f} "
                f"at max_seq_len {s.max_seq_len} with {s.cache_mode} cache, scratch and reserves "
                f"{(total - parts['weights'] - cache) / GIB:.2f}) but its budget is "
                f"{dev.budget / GIB:.2f} GiB: {(total - dev.budget) / GIB:.2f} GiB over",
                gpu=gpu.index, needed=total, budget=dev.budget,
            ))
    return problems


def _placement(spec: Any, s: Settings, modules: list[Any], budgets: list[int], reserve: int, chunk: int,
               costs: Any) -> list[Placed] | None:
    """The modules on each GPU as exllamav2 would load them with these settings."""
    if s.autosplit:
        return fit(budgets, [reserve] * len(budgets), modules, costs)
    if s.gpu_split:
        where = set_device_map_placement(
            spec, s.gpu_split, max_seq_len=s.max_seq_len, max_input_len=chunk,
            max_batch_size=s.max_batch_size, max_attention_size=s.max_attention_size,
            flash_or_xformers=s.backend in ("flash_attn", "xformers"),
        )
    else:
        where = [0] * len(modules)  # model.load() without a split: everything on the first CUDA device
    devices = [Placed(i, b, reserve) for i, b in enumerate(budgets)]
    for module, index in zip(modules, where, strict=True):
        dev = devices[index]
        dev.modules.append(module)
        dev.weights += module.weight_bytes
        dev.cache_layers += module.has_cache
        dev.scratch_fixed = max(dev.scratch_fixed, module.scratch_fixed_bytes)
    return devices

