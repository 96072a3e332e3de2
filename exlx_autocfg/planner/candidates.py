"""Which quant to download: plan every EXL2 branch of a Hub repo, then choose one. Pure: specs in, plans
and a choice out (the branches were read by `model.hub`).

The rule: the highest bitrate that reaches the target context within the cache policy (`--cache`,
`--min-cache-precision`, else any cache mode down to Q4), since bits per weight buy quality and the plan
already picks the most precise cache that reaches the target. When no branch reaches it, the branch with
the longest context (ties: the higher bitrate). A branch that fits at no context is listed, not chosen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from exlx_autocfg.errors import DoesNotFitError, NoCandidateError
from exlx_autocfg.facts.types import Facts
from exlx_autocfg.findings import finding
from exlx_autocfg.model.spec import ModelSpec
from exlx_autocfg.planner import decisions
from exlx_autocfg.planner.core import plan
from exlx_autocfg.planner.request import Request
from exlx_autocfg.planner.types import Plan, Reason


class BranchLike(Protocol):
    revision: str
    commit: str
    spec: ModelSpec | None
    skipped: str | None
    skip_code: str | None
    download_bytes: int


@dataclass
class Candidate:
    """One branch in the quant table (`plan --json` `candidates[]`)."""

    revision: str
    commit: str
    status: str  # "planned" | "does_not_fit" | "skipped"
    code: str  # finding code of the status or the verdict (findings.CODES)
    why: str = ""  # why chosen, why not, or why skipped
    chosen: bool = False
    bits_per_weight: float | None = None
    weights_bytes: int = 0  # tensor bytes exllamav2 loads (the headers' spans)
    download_bytes: int = 0  # size of the branch's *.safetensors files
    cache_mode: str | None = None  # the plan's choice for this branch
    max_seq_len: int = 0  # the plan's max_seq_len (capped at the target)
    reaches_target: bool = False
    max_seq_len_by_cache_mode: dict[str, int] = field(default_factory=dict)  # 0 = does not fit
    bytes_read: int = 0  # network bytes spent reading this branch


@dataclass
class Choice:
    revision: str
    plan: Plan  # the chosen branch's plan, with a `revision` reason added
    candidates: list[Candidate]
    target: int
    target_why: str
    code: str
    why: str
    plans: dict[str, Plan] = field(default_factory=dict, repr=False)  # every planned branch


def target_context(spec: ModelSpec, context: int | None) -> tuple[int, str]:
    """The context a branch must reach: the planner's own target for that branch."""
    return decisions.target_context(spec.max_position_embeddings, Request(context=context))


def _policy(request: dict[str, Any]) -> str:
    if request.get("cache"):
        return f"cache {str(request['cache']).upper()} (--cache)"
    if request.get("min_cache_precision"):
        return f"caches down to {str(request['min_cache_precision']).upper()} (--min-cache-precision)"
    return "any cache mode down to Q4"


def _bpw(c: Candidate) -> float:
    return c.bits_per_weight if c.bits_per_weight is not None else 0.0


def fmt_bpw(bpw: float | None) -> str:
    """4.0, 6.5, 4.65: how EXL2 branches name their bitrates."""
    if bpw is None:
        return "?"
    return f"{bpw:.1f}" if round(bpw, 1) == bpw else f"{bpw:.2f}"


def choose_candidate(facts: Facts, branches: Sequence[BranchLike], **request: Any) -> Choice:
    """Plan each branch with a spec (`planner.core.plan(facts, spec, **request)`) and choose one.

    Raises NoCandidateError when no branch holds an EXL2 model, DoesNotFitError when none fits at all;
    option errors (UsageError, BackendRefusedError) from the planner propagate: they hold for every branch.
    """
    candidates: list[Candidate] = []
    plans: dict[str, Plan] = {}
    targets: dict[str, tuple[int, str]] = {}
    for b in branches:
        if b.spec is None:
            candidates.append(Candidate(b.revision, b.commit, "skipped", b.skip_code or "hub.skip.not_exl2",
                                        why=b.skipped or "", download_bytes=b.download_bytes,
                                        bytes_read=getattr(b, "bytes_read", 0)))
            continue
        spec = b.spec
        entry = Candidate(
            b.revision, b.commit, "planned", "candidates.planned",
            bits_per_weight=spec.bits_per_weight, weights_bytes=spec.total_tensor_bytes,
            download_bytes=b.download_bytes, bytes_read=getattr(b, "bytes_read", 0),
        )
        target = targets[b.revision] = target_context(spec, request.get("context"))
        try:
            p = plan(facts, spec, **request)
        except DoesNotFitError as exc:
            entry.status, entry.code, entry.why = "does_not_fit", "candidates.does_not_fit", exc.one_line()
            candidates.append(entry)
            continue
        plans[b.revision] = p
        entry.cache_mode, entry.max_seq_len = p.settings.cache_mode, p.settings.max_seq_len
        entry.max_seq_len_by_cache_mode = dict(p.max_seq_len_by_cache_mode)
        entry.reaches_target = p.settings.max_seq_len >= target[0]
        candidates.append(entry)

    planned = [c for c in candidates if c.status == "planned"]
    if not planned:
        if any(c.status == "does_not_fit" for c in candidates):
            raise DoesNotFitError(
                "no branch fits on these GPUs: "
                + "; ".join(f"{c.revision}: {c.why}" for c in candidates if c.status == "does_not_fit")
            )
        skipped = "; ".join(f"{c.revision}: {c.why}" for c in candidates) or "the repo has no branches"
        raise NoCandidateError(f"no branch holds an EXL2 model ({skipped})")

    policy = _policy(request)
    reaching = [c for c in planned if c.reaches_target]
    if reaching:
        best = max(reaching, key=lambda c: (_bpw(c), c.weights_bytes, c.revision))
        target, target_why = targets[best.revision]
        code = "candidates.highest_reaching"
        why = (f"{best.revision}: the highest bitrate ({fmt_bpw(best.bits_per_weight)} bpw) that reaches "
               f"the target context {target} ({target_why}) with {policy}; cache {best.cache_mode}")
    else:
        best = max(planned, key=lambda c: (c.max_seq_len, _bpw(c), c.revision))
        target, target_why = targets[best.revision]
        code = "candidates.longest_context"
        why = (f"no branch reaches the target context {target} ({target_why}) with {policy}; "
               f"{best.revision} gives the longest: {best.max_seq_len} tokens with cache {best.cache_mode}")
    for c in candidates:
        if c is best:
            c.chosen, c.code, c.why = True, code, why
        elif c.status == "planned":
            c.code, c.why = _not_chosen(c, best)
    chosen = dataclasses.replace(plans[best.revision])
    rejected = {c.revision: [finding(c.code, c.why, revision=c.revision)] for c in candidates if not c.chosen}
    evidence = {"target": target, "candidates": [c.revision for c in candidates]}
    chosen.reasons = [Reason("revision", best.revision, code, why, evidence, rejected), *chosen.reasons]
    return Choice(best.revision, chosen, candidates, target, target_why, code, why, plans)


def _not_chosen(c: Candidate, best: Candidate) -> tuple[str, str]:
    if _bpw(c) > _bpw(best) and not c.reaches_target:
        return "candidates.short_context", f"reaches only {c.max_seq_len} tokens (cache {c.cache_mode})"
    if not best.reaches_target:
        return "candidates.short_context", f"reaches {c.max_seq_len} tokens, less than {best.revision}"
    return "candidates.lower_bitrate", (f"a lower bitrate ({fmt_bpw(c.bits_per_weight)} bpw) than "
                                        f"{best.revision} ({fmt_bpw(best.bits_per_weight)} bpw), which also "
                                        "reaches the target")
