"""The tensor-parallel solve path: `plan --tensor-parallel`, as exllamav2 0.3.2's `load_tp` and
`ExLlamaV2Cache_TP` run the model (planner.tensor_parallel holds the arithmetic, profiles/tensor_parallel.toml
the rules).

Every GPU holds a slice of every layer, so there is no placement to search: at each candidate context the
split is what `TPContext.define_split` makes of the gpu_split the plan will emit (each GPU's budget less
what the draft holds there, in GB), and the context fits when every GPU's slice, its TP scratch and
broadcast buffers, its share of the cache and the load-time peak stay within its budget. A draft loads
first and never tensor-parallel (TabbyAPI), so its bytes come off the budgets before the split is made.
Refused with the reasons when exllamav2's TP path cannot run the model here (`tp_refusals`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from exlx_autocfg import __version__, exl2
from exlx_autocfg.errors import DoesNotFitError, TensorParallelRefusedError
from exlx_autocfg.facts.types import GPU, Facts
from exlx_autocfg.findings import Finding, finding
from exlx_autocfg.model.spec import ModelSpec
from exlx_autocfg.planner import companions as cp
from exlx_autocfg.planner import decisions, memory
from exlx_autocfg.planner import tensor_parallel as tp
from exlx_autocfg.planner.backends import Selection, select
from exlx_autocfg.planner.draft import DraftPlan
from exlx_autocfg.planner.fit import categories, largest_fitting
from exlx_autocfg.planner.request import Request
from exlx_autocfg.planner.types import DeviceMemory, Plan, Reason
from exlx_autocfg.settings import Settings
from exlx_autocfg.versions import at_least

GIB = 1024**3
MIB = 1024**2


@dataclass
class TPPoint:
    """The tensor-parallel load at one (cache mode, max_seq_len, chunk) point."""

    gpu_split: list[float]  # what the plan emits: GB per GPU for load_tp
    fit: tp.TPFit
    draft: DraftPlan | None
    held: list[int]  # the draft's bytes per GPU (persistent + one forward), taken off before the split


class TPSolver:
    def __init__(self, spec: ModelSpec, backend: str, budgets: list[int], reserves: list[int], batch: int,
                 companions: cp.Companions) -> None:
        self.spec, self.backend, self.batch = spec, backend, batch
        self.budgets, self.reserves = budgets, reserves
        self.companions = companions

    def point(self, mode: str, seq: int, chunk: int) -> TPPoint | None:
        chunk = min(chunk, seq)
        n = len(self.budgets)
        held, placed = [0] * n, None
        if self.companions.draft is not None:
            try:
                placed = cp.place_draft(self.companions.draft.spec, self.budgets, self.reserves,
                                        cache_mode=self.companions.draft_mode(mode), seq=seq, chunk=chunk,
                                        backend=self.backend, batch=self.batch)
            except DoesNotFitError:
                return None
            # The TP scratch and broadcast buffers are fixed tensors: the draft's forward cannot reuse them,
            # so its transients are held too.
            persistent, transient = placed.persistent_by_position(n), placed.transient_by_position(n)
            held = [p + t for p, t in zip(persistent, transient, strict=True)]
        left = [b - h for b, h in zip(self.budgets, held, strict=True)]
        # GB with four decimals, rounded down: the allocation TPContext reads back is what the plan emits.
        gpu_split = [math.floor(max(0, x) / GIB * 10000) / 10000 for x in left]
        try:
            fitted = tp.tp_fit(self.spec, left, self.reserves, cache_mode=mode, max_seq_len=seq,
                               max_input_len=chunk, max_batch_size=self.batch,
                               allocation_mb=tp.allocation_from_gpu_split(gpu_split))
        except DoesNotFitError:
            return None
        return TPPoint(gpu_split, fitted, placed, held) if fitted.fits else None

    def max_seq_len(self, mode: str, chunk: int, cap: int) -> int:
        return largest_fitting(lambda n: self.point(mode, n, chunk) is not None, cap, exl2.PAGE_SIZE)


def _sdpa_enabled(facts: Facts, sel: Selection) -> bool:
    """Whether exllamav2's SDPA branch is on: torch has causal_lower_right and no_sdpa is not set."""
    torch = facts.version_of("torch")
    floor = exl2.backend_rules()["sdpa"]["torch_min"]
    return torch is not None and at_least(torch, floor) and not sel.switches.get("no_sdpa", False)


def refusals(facts: Facts, spec: ModelSpec, gpus: list[GPU], sel: Selection, exllamav2: str,
             lora_count: int) -> list[Finding]:
    return tp.tp_refusals(spec, gpu_count=len(gpus), backend=sel.backend,
                          flash_attn_version=facts.version_of("flash-attn"),
                          sdpa_enabled=_sdpa_enabled(facts, sel),
                          exllamav2_version=exllamav2, lora_count=lora_count)


# ---------------------------------------------------------------------------------------------- the rows


def _rows(gpus: list[GPU], budgets: list[int], reserves: list[int], pt: TPPoint, layers: int
          ) -> list[DeviceMemory]:
    by_device = {d.device: d for d in pt.fit.devices}
    draft = cp._draft_beside(pt.draft, len(gpus)) if pt.draft is not None else None
    rows = []
    for i, g in enumerate(gpus):
        d = by_device.get(i)
        if d is None and not pt.held[i]:
            continue
        parts: dict[str, int] = {}
        if d is not None:
            steady = d.total_bytes
            parts = {"weights": d.weights_bytes, "cache": d.cache_bytes, "staging": d.staging_bytes,
                     "tp_scratch": d.scratch_bytes, "rope": d.rope_bytes, "tp_transient": d.transient_bytes,
                     "load_peak": max(0, d.load_bytes - steady)}
        parts["reserve"] = reserves[i]
        if draft is not None and draft[i].held:
            parts |= dict(draft[i].parts)
            parts["draft_transient"] = draft[i].transient
        column = categories(parts)
        rows.append(DeviceMemory(
            gpu_index=g.index, budget_bytes=budgets[i], weights_bytes=column["weights"],
            cache_bytes=column["cache"], scratch_bytes=column["scratch"], reserve_bytes=column["reserve"],
            total_bytes=sum(parts.values()), layers=list(range(layers)) if d is not None else [],
            parts=parts, vision_weights_bytes=0))  # no multimodal architecture sets supports_tp in 0.3.2
    return rows


def _split_text(split: tp.TPSplit, gpus: list[GPU]) -> str:
    def share(kind: str) -> str:
        return " / ".join(str(split.share(kind, i)) for i in range(len(gpus)))

    return (f"KV heads {share('kv')}, Q heads {share('q')}, MLP columns {share('intermediate')}, "
            f"vocabulary columns {share('vocab')} over " + ", ".join(f"#{g.index}" for g in gpus))


# ------------------------------------------------------------------------------------------------ the plan


@dataclass
class _Solved:
    """What assemble.plan_warnings reads of a solve."""

    selection: Selection
    mode: str
    max_seq_len: int
    target: int


def plan_tp(facts: Facts, spec: ModelSpec, gpus: list[GPU], exllamav2: str, req: Request,
            companions: cp.Companions, warnings: list[Finding]) -> Plan:
    """The tensor-parallel Plan over every GPU given. Raises TensorParallelRefusedError (with the coded
    findings: one GPU, an architecture or attention backend the TP path cannot run) or DoesNotFitError."""
    from exlx_autocfg.planner.assemble import computed_for, plan_gpus, plan_warnings
    from exlx_autocfg.planner.core import budget_of, overheads_of, query_for, reserve_of, search_context

    sel = select(query_for(facts, spec, gpus, exllamav2), req.backend)
    refused = refusals(facts, spec, gpus, sel, exllamav2, len(companions.loras))
    if refused:
        raise TensorParallelRefusedError(cp.refusal_line("tensor parallel", refused), refused)
    budgets_kinds = [budget_of(g, req) for g in gpus]
    budgets = [b for b, _ in budgets_kinds]
    reserves = [reserve_of(overheads_of(req)) for _ in gpus]
    solver = TPSolver(spec, sel.backend, budgets, reserves, req.batch_size, companions)
    search = search_context(solver, spec, req)
    allowed = req.allowed_modes()
    if not search.fits(allowed):
        beside = f" with the draft {companions.draft.spec.name} beside it" if companions.draft else ""
        raise DoesNotFitError(
            f"tensor parallel: {spec.name} does not fit on {' + '.join(g.name for g in gpus)} at any context"
            f"{beside} ({', '.join(allowed)} cache; every GPU's slice, TP scratch and cache share checked)")
    mode, max_seq_len, chunk, context_reasons = search.choose(req)
    pt = solver.point(mode, max_seq_len, chunk)
    assert pt is not None  # max_seq_len came from the same point
    split = pt.fit.split

    one = cp.make_solver(spec, sel.backend, budgets[:1], reserves[:1], req.batch_size, companions)
    fits_one = one.max_seq_len(mode, chunk, max_seq_len) >= max_seq_len
    worth = tp.tp_worth_it([(g.name, g.memory_total, g.compute_capability) for g in gpus],
                           fits_one_gpu=fits_one, tp_fits=True)
    weakest = min((g for g in gpus if g.cc), key=lambda g: g.cc, default=None)
    cache_class = exl2.CACHE_CLASS[mode]
    tokens = max_seq_len * req.batch_size
    reasons = [
        decisions.backend_reason(sel, weakest, len(gpus)),
        decisions.switches_reason(sel),
        decisions.paged_reason(sel),
        *context_reasons,
        decisions.budget_reason([k for _, k in budgets_kinds], req.margin_mib),
        Reason("tensor_parallel", "true", worth.code, f"--tensor-parallel: {worth.message}",
               {"fits_one_gpu": fits_one, **worth.evidence}),
        Reason("tp_split", ", ".join(f"{x:g}" for x in pt.gpu_split), "tp.split",
               f"load_tp(gpu_split, expect_cache_tokens={tokens}, expect_cache_base={cache_class}) splits "
               f"{_split_text(split, gpus)}; the gpu_split is each GPU's budget less what the draft holds "
               "there, so the split is the same on every load (without one TPContext reads nvidia-smi's free "
               "memory)", {"split": split.to_dict(), "source": tp.rules()["split"]["source"]}),
    ]
    rows = _rows(gpus, budgets, reserves, pt, spec.num_hidden_layers)
    settings = Settings(backend=sel.backend, cache_mode=mode, max_seq_len=max_seq_len, max_input_len=chunk,
                        max_attention_size=chunk * chunk, max_batch_size=req.batch_size, paged=sel.paged,
                        gpu_split=pt.gpu_split, tensor_parallel=True, **sel.switches)
    solved = _Solved(sel, mode, max_seq_len, search.target)
    found = [*warnings, *plan_warnings(facts, spec, gpus, [], req, rows, solved)]  # type: ignore[arg-type]
    found.append(finding("tp.estimated", "tensor-parallel transients (final-norm broadcast, logits "
                         "slices) and the "
                         "load-time peak are estimates; the split, weights, TP scratch and cache are exact",
                         source=tp.rules()["split"]["source"]))
    plan = Plan(
        model=spec.summary(),
        gpus=plan_gpus(gpus),
        settings=settings,
        kv_cache_bytes_per_token={m: memory.kv_cache_bytes_per_token(spec, m) for m in exl2.CACHE_MODES},
        max_seq_len_by_cache_mode=dict(search.by_mode),
        memory=rows,
        reasons=reasons,
        warnings=list({(w.code, w.message): w for w in found}.values()),
        request=req.to_dict(),
        computed_for=computed_for(facts, exllamav2, req),
        tool_version=__version__,
        tensor_parallel={
            "gpu_split": pt.gpu_split,
            "allocation_mb": pt.fit.allocation_mb,
            "expect_cache_tokens": tokens,
            "expect_cache_base": cache_class,
            "split": split.to_dict(),
            "devices": [{**dataclasses.asdict(d), "gpu_index": gpus[d.device].index} for d in pt.fit.devices],
            "host_pinned_bytes": tp.tp_host_pinned_bytes(spec, chunk),
            "worth_it": {"code": worth.code, "message": worth.message},
            "fits_one_gpu": fits_one,
        },
    )
    if companions.draft is not None and pt.draft is not None:
        found_pair = cp.judge_at(companions, spec, mode=mode, max_seq_len=max_seq_len, batch=req.batch_size)
        draft_settings, draft_reasons = cp.draft_reasons(companions, pt.draft, mode, max_seq_len, plan)
        plan.settings.draft = draft_settings
        plan.reasons += draft_reasons
        plan.draft = cp.draft_section(plan, pt.draft, found_pair)
        plan.draft |= {"path": companions.draft.spec.path, "fingerprint": companions.draft.spec.fingerprint,
                       "architecture": companions.draft.spec.architecture}
        seen = {(w.code, w.message) for w in plan.warnings}
        plan.warnings += [f for f in found_pair if f.code != "draft.context_beyond_trained"
                          and (f.code, f.message) not in seen]
    return plan

