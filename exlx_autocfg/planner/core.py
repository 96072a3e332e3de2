"""The planner: (facts, model, request) -> Plan. Pure: no probing, no files (except loading a model given
by reference), no exllamav2.

Decisions, in order, each with its coded reason and the alternatives it rejected (`decisions`):
1. backend (`backends`: each backend validates itself; exllamav2's precedence ranks the valid ones),
   judged against the GPUs in use (the weakest decides);
2. for each cache mode and chunk size, the largest max_seq_len (a whole number of exllamav2 pages) at which
   every GPU's planned bytes stay within its budget (`solver` over `fit`, with `memory`'s arithmetic);
3. the cache mode and the chunk size (`decisions`);
4. the GPU split, as exllamav2's `set_device_map` needs it to place exactly the planned layers (`split`);
then `assemble` builds the Plan from those decisions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from exlx_autocfg import exl2
from exlx_autocfg.errors import BackendRefusedError, DoesNotFitError, OptionError, UsageError
from exlx_autocfg.facts.types import GPU, Facts
from exlx_autocfg.findings import Finding, finding
from exlx_autocfg.planner import decisions, memory
from exlx_autocfg.planner.backends import BackendQuery, Selection, select
from exlx_autocfg.planner.fit import Costs, Placed, device_total, fit
from exlx_autocfg.planner.request import DEFAULT_MARGIN_MIB, Request
from exlx_autocfg.planner.solver import Solver
from exlx_autocfg.planner.types import Plan, Reason

__all__ = ["DEFAULT_MARGIN_MIB", "Request", "device_totals_at", "plan"]

MIB = 1024**2
GIB = 1024**3


def gpus_in_cuda_order(facts: Facts) -> list[GPU]:
    gpus = list(facts.gpu.gpus)
    return sorted(gpus, key=lambda g: (g.cuda_index if g.cuda_index is not None else g.index, g.index))


def budget_of(gpu: GPU, req: Request) -> tuple[int, str]:
    margin = req.margin_mib * MIB
    if req.budget == "free":
        if gpu.memory_free is None:
            return gpu.memory_total - margin, "total (free VRAM unknown for this GPU)"
        return gpu.memory_free - margin, "free"
    return gpu.memory_total - margin, "total"


def overheads_of(req: Request) -> memory.Overheads:
    return req.overheads if req.overheads is not None else memory.DEFAULT_OVERHEADS


def reserve_of(overheads: memory.Overheads) -> int:
    """Per GPU: the CUDA context and the allocator's slack. A manual gpu_split adds no exllamav2 reserve."""
    return overheads.cuda_context_bytes + overheads.allocator_slack_bytes


def _exllamav2_version(facts: Facts, warnings: list[Finding]) -> str:
    version = facts.version_of("exllamav2")
    if version is None:
        warnings.append(
            finding(
                "plan.exllamav2_assumed",
                f"exllamav2 is not installed in the target interpreter; planned for {exl2.LATEST}",
                assumed=exl2.LATEST,
            )
        )
        return exl2.LATEST
    return version


def query_for(facts: Facts, spec: Any, gpus: list[GPU], exllamav2: str) -> BackendQuery:
    return BackendQuery(
        facts=facts,
        gpus=tuple(gpus),
        exllamav2=exllamav2,
        softcap=bool(spec.attn_logit_softcapping),
        # arch_compat_overrides judges the architecture's window, not config.json's (config.py L650-672)
        sliding_window=bool(spec.swa_arch),
        eager_only=bool(spec.eager_only),
    )


# -------------------------------------------------------------------------------------------------- plan


def plan(facts: Facts, model: Any, **request: Any) -> Plan:
    """Plan backend, cache mode, context, chunk size and GPU split for `model` on the machine in `facts`.

    `model` is a `ModelSpec` or a reference `load_model_spec` accepts (directory, `yi-34b@4.0bpw`).
    Keyword options: see `Request`. Raises `UsageError` (bad options, no GPU; `OptionError` names the
    keyword argument), `ModelSpecError` / `SpecialFileError` (a model reference that does not load),
    `BackendRefusedError` (a forced backend that is invalid here) or `DoesNotFitError` (not even one page
    of context fits).
    """
    from exlx_autocfg.planner.assemble import assemble

    req = Request.from_kwargs(request)
    if not isinstance(facts, Facts):
        raise OptionError("facts", facts, "must be a Facts document (detect() or what-if)")
    if isinstance(model, (str, os.PathLike)):
        from exlx_autocfg.model.load import load_model_spec

        model = load_model_spec(model)
    elif not hasattr(model, "num_hidden_layers"):
        raise OptionError("model", model, "must be a ModelSpec, a model directory or a catalog reference")
    spec = model
    all_gpus = gpus_in_cuda_order(facts)
    if not all_gpus:
        problems = (
            "; ".join(facts.gpu.problems) if facts.gpu.problems else "no NVIDIA or AMD GPU was detected"
        )
        raise UsageError(
            f"no GPU to plan for on this machine ({problems})",
            hint="plan for a GPU from the table with --gpu NAME, e.g. --gpu 'RTX 3090'",
        )
    warnings: list[Finding] = []
    exllamav2 = _exllamav2_version(facts, warnings)
    if facts.problems and not facts.what_if:
        warnings.extend(
            finding("plan.detect_problem", f"detect: {p}", problem=str(p)) for p in facts.problems
        )
    beside = None
    if req.draft is not None or req.loras or req.tensor_parallel or req.vision:
        from exlx_autocfg.planner import companions

        beside = companions.resolve(req, spec)  # refusals that need no context raise here
        if req.tensor_parallel:
            from exlx_autocfg.planner.tp_solve import plan_tp

            return plan_tp(facts, spec, all_gpus, exllamav2, req, beside, warnings)
    gpus = all_gpus
    try:
        solved = _solve(facts, spec, gpus, exllamav2, req, beside)
    except BackendRefusedError:
        # A forced backend may still run on the first GPUs alone (a weak card at the end of the order).
        usable = [
            n
            for n in range(len(gpus) - 1, 0, -1)
            if str(req.backend) not in select(query_for(facts, spec, gpus[:n], exllamav2)).rejected
        ]
        if not usable:
            raise
        gpus = gpus[: usable[0]]
        dropped = all_gpus[usable[0] :]
        warnings.append(
            finding(
                "backend.forced.gpus_dropped",
                f"--backend {req.backend} is not valid on "
                + ", ".join(f"#{g.index} {g.name}" for g in dropped)
                + ": planned without them",
                dropped=[g.index for g in dropped],
            )
        )
        solved = _solve(facts, spec, gpus, exllamav2, req, beside)
    used = [i for i, dev in enumerate(solved.devices) if dev.in_use]
    if beside is not None:
        # What sits beside the model (the draft) is placed by GPU index: keep the indices, drop only the
        # GPUs after the last one in use.
        used = list(range(max(used) + 1))
    if len(used) < len(gpus):
        # A GPU the placement left empty is not needed: after the last module, or one too full to take any
        # (--budget free on a busy card). Only the GPUs in use run attention: re-judge the backend on those
        # (a weak card left idle must not veto flash-attn), and re-plan if that changes it.
        keep = [gpus[i] for i in used]
        if select(query_for(facts, spec, keep, exllamav2), req.backend).backend != solved.selection.backend:
            solved = _solve(facts, spec, keep, exllamav2, req, beside)
        else:
            solved.devices = [solved.devices[i] for i in used]
        gpus = keep
    unused = [g for g in all_gpus if g not in gpus]
    result = assemble(facts, spec, gpus, unused, exllamav2, req, solved, warnings)
    if beside is not None:
        from exlx_autocfg.planner.companions import attach

        attach(result, beside, solved.solver, spec, solved.devices)
    return result


@dataclass
class Solved:
    """The solver's answer for one GPU set, every decision with its reason."""

    selection: Selection
    solver: Solver
    by_mode: dict[str, int]  # best max_seq_len per cache mode at its chosen chunk (0 = does not fit)
    mode: str
    chunk: int
    max_seq_len: int
    devices: list[Placed]
    costs: Costs
    budget_kinds: list[str]
    reasons: list[Reason]  # cache_mode, max_seq_len, chunk_size
    target: int


@dataclass(frozen=True)
class ContextSearch:
    """The largest context per cache mode and chunk size on one solver, and the chunk each mode keeps."""

    target: int
    target_why: str
    chunks: list[int]
    by_mode_chunk: dict[str, dict[int, int]]
    chunk_by_mode: dict[str, int]
    by_mode: dict[str, int]

    def fits(self, modes: list[str]) -> bool:
        return any(self.by_mode[mode] for mode in modes)

    def choose(self, req: Request) -> tuple[str, int, int, list[Reason]]:
        """(cache mode, max_seq_len, chunk) by the policy, with the reasons for those three."""
        mode, mode_reason = decisions.choose_cache_mode(self.by_mode, req, self.target, self.target_why)
        max_seq_len = min(self.by_mode[mode], self.target)
        chunk = min(self.chunk_by_mode[mode], max_seq_len)
        return mode, max_seq_len, chunk, [
            mode_reason,
            decisions.max_seq_len_reason(max_seq_len, self.target, self.target_why),
            decisions.chunk_reason(self.chunk_by_mode[mode], self.by_mode_chunk[mode], len(self.chunks) == 1,
                                   used=chunk),
        ]


def search_context(solver: Any, spec: Any, req: Request) -> ContextSearch:
    """Every cache mode and chunk size searched on `solver` (a layer-split or tensor-parallel one)."""
    target, target_why = decisions.target_context(spec.max_position_embeddings, req)
    chunks = [req.chunk_size] if req.chunk_size else list(decisions.CHUNK_SIZES)
    # The table goes up to the model's own limit even when the target is lower, so users see the headroom.
    ceiling = max(target, decisions.target_context(spec.max_position_embeddings, Request())[0])
    by_mode_chunk = {
        mode: {ch: solver.max_seq_len(mode, ch, ceiling) for ch in chunks} for mode in exl2.CACHE_MODES
    }
    chunk_by_mode = {mode: decisions.pick_chunk(by_mode_chunk[mode], target) for mode in exl2.CACHE_MODES}
    by_mode = {mode: by_mode_chunk[mode][chunk_by_mode[mode]] for mode in exl2.CACHE_MODES}
    return ContextSearch(target, target_why, chunks, by_mode_chunk, chunk_by_mode, by_mode)


def _solve(facts: Facts, spec: Any, gpus: list[GPU], exllamav2: str, req: Request,
           beside: Any = None) -> Solved:
    from exlx_autocfg.planner.companions import make_solver

    selection = select(query_for(facts, spec, gpus, exllamav2), req.backend)
    overheads = overheads_of(req)
    budgets_kinds = [budget_of(g, req) for g in gpus]
    budgets = [b for b, _ in budgets_kinds]
    reserves = [reserve_of(overheads) for _ in gpus]
    solver = make_solver(spec, selection.backend, budgets, reserves, req.batch_size, beside)
    search = search_context(solver, spec, req)
    allowed = req.allowed_modes()
    if not search.fits(allowed):
        message = _does_not_fit(solver, gpus, allowed, search.chunks)
        if hasattr(solver, "what_is_beside"):
            message += f" (planned with {solver.what_is_beside()} beside it)"
        raise DoesNotFitError(message)

    mode, max_seq_len, chunk, reasons = search.choose(req)
    devices = solver.place(mode, max_seq_len, chunk)
    assert devices is not None  # max_seq_len came from the same placement
    return Solved(
        selection=selection,
        solver=solver,
        by_mode=search.by_mode,
        mode=mode,
        chunk=chunk,
        max_seq_len=max_seq_len,
        devices=devices,
        costs=solver.costs(mode, max_seq_len, chunk),
        budget_kinds=[k for _, k in budgets_kinds],
        reasons=reasons,
        target=search.target,
    )


def _does_not_fit(solver: Solver, gpus: list[GPU], modes: list[str], chunks: list[int]) -> str:
    """One line: how much is missing, for weights alone or at the smallest context."""
    page = exl2.PAGE_SIZE
    chunk = min(chunks)
    mods = solver.modules(chunk)
    weights = sum(mod.weight_bytes for mod in mods)
    usable = sum(max(0, b - r) for b, r in zip(solver.budgets, solver.reserves, strict=True))
    names = " + ".join(g.name for g in gpus)
    if weights > usable:
        return (
            f"model weights need {weights / GIB:.2f} GiB on the GPU but {names} "
            f"{'offers' if len(gpus) == 1 else 'offer'} {usable / GIB:.2f} GiB after reserves and margin: "
            f"{(weights - usable) / GIB:.2f} GiB missing"
        )
    mode = modes[-1]
    c = solver.costs(mode, page, min(chunk, page))
    # Everything on one unbounded device, plus the per-device costs of every further GPU the split needs.
    one = fit([1 << 62], [solver.reserves[0]], mods, c)
    assert one is not None
    per_extra = device_total(c, 0, 1, 0, 0) - c.cache_per_layer
    need = one[0].total(c) + sum(solver.reserves[1:]) + per_extra * (len(gpus) - 1)
    total_budget = sum(solver.budgets)
    missing = max(need - total_budget, 0)
    tail = f"{missing / GIB:.2f} GiB missing" if missing else "the modules do not split across the GPUs"
    return (
        f"the model does not fit at any context: at {page} tokens with {mode} cache it needs "
        f"{need / GIB:.2f} GiB on {names} (budget {total_budget / GIB:.2f} GiB): {tail}"
    )


def device_totals_at(facts: Facts, model: Any, plan_: Plan, seq_len: int, **request: Any) -> list[int] | None:
    """The planner's own arithmetic at another context (same backend, mode, chunk, GPUs): total bytes per GPU,
    or None when the modules no longer fit. For tests and `bench/`: a plan at `max_seq_len` fits, at
    `max_seq_len + 256` it does not (unless capped by the target)."""
    req = Request.from_kwargs(request)
    if req.tensor_parallel or plan_.settings.tensor_parallel:
        raise UsageError("device_totals_at re-runs the layer-split arithmetic; a tensor-parallel plan's "
                         "figures are in plan.tensor_parallel['devices']")
    by_index = {g.index: g for g in facts.gpu.gpus}
    gpus = [by_index[p.index] for p in plan_.gpus]
    overheads = overheads_of(req)
    budgets = [budget_of(g, req)[0] for g in gpus]
    reserves = [reserve_of(overheads) for _ in gpus]
    s = plan_.settings
    # The chunk as picked, before exllamav2 clamped it to max_seq_len: at another length it clamps again.
    chunk_reason = plan_.reason("chunk_size")
    chunk = int((chunk_reason.evidence if chunk_reason else {}).get("picked", s.max_input_len))
    beside = None
    if req.draft is not None or req.loras:
        from exlx_autocfg.planner.companions import resolve

        beside = resolve(req, model)
    from exlx_autocfg.planner.companions import make_solver

    solver = make_solver(model, s.backend, budgets, reserves, req.batch_size, beside)
    devices = solver.place(s.cache_mode, seq_len, chunk)
    if devices is None:
        return None
    c = solver.costs(s.cache_mode, seq_len, min(chunk, seq_len))
    return [d.total(c) for d in devices]
