"""Each planner decision as a pure function that returns its choice together with its coded reason.

The solver supplies the numbers (max context per cache mode and chunk); these functions apply the policy
(the most precise cache that reaches the target, the largest chunk that does not cost context) and say why,
so that assembling the Plan only collects decisions that already carry their reasons.
"""

from __future__ import annotations

from typing import Any

from exlx_autocfg import exl2
from exlx_autocfg.data import load_data
from exlx_autocfg.findings import finding
from exlx_autocfg.planner.backends import Selection
from exlx_autocfg.planner.request import Request
from exlx_autocfg.planner.types import Reason

CHUNK_SIZES = (2048, 1024, 512, 256)  # exllamav2 default max_input_len first; TabbyAPI needs multiples of 256
CHUNK_TOLERANCE = 0.03  # context a bigger chunk may give up (see choose_chunk)
MAX_CONTEXT = 1 << 22  # search ceiling when the target is absurdly large


def round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def target_context(max_position_embeddings: int, req: Request) -> tuple[int, str]:
    """The context the plan aims for, as a whole number of pages, and where it comes from."""
    page = exl2.PAGE_SIZE
    if req.context is not None:
        return min(round_up(req.context, page), MAX_CONTEXT), f"--context {req.context}"
    mpe = max(page, max_position_embeddings // page * page)
    return min(mpe, MAX_CONTEXT), f"the model's max_position_embeddings ({max_position_embeddings})"


# ------------------------------------------------------------------------------------------------ backend


def backend_reason(sel: Selection, weakest: Any, gpu_count: int) -> Reason:
    if sel.forced:
        code, why = "backend.forced", f"forced by --backend {sel.backend} (valid here)"
    else:
        code = "backend.highest_valid"
        why = f"the highest-ranked valid backend in exllamav2's precedence ({' > '.join(exl2.BACKENDS)})"
    evidence: dict[str, Any] = {"valid": list(sel.valid), "precedence": list(exl2.BACKENDS)}
    if weakest is not None and gpu_count > 1:
        why += f"; judged on the weakest GPU in use, {weakest.name} (CC {weakest.compute_capability})"
        evidence["weakest_gpu"] = weakest.name
    return Reason("backend", sel.backend, code, why, evidence, {k: list(v) for k, v in sel.rejected.items()})


def switches_reason(sel: Selection) -> Reason:
    on = [flag for flag, value in sel.switches.items() if value]
    return Reason(
        "switches",
        ", ".join(on) or "none",
        "switches.realise_backend",
        f"exllamav2 tries {' > '.join(exl2.BACKENDS)} at every forward; these switches make it "
        f"land on {sel.backend} and keep it off invalid backends for padded batches",
        {"switches": dict(sel.switches), "env": exl2.env_for(sel.switches)},
    )


def paged_reason(sel: Selection) -> Reason:
    floor = exl2.backend_rules()["flash_attn"]["paged_min_version"]
    if sel.paged:
        return Reason(
            "paged",
            "true",
            "paged.enabled",
            f"flash-attn >= {floor}: the dynamic generator can run paged (batching)",
        )
    if sel.backend != "flash_attn":
        return Reason(
            "paged",
            "false",
            "paged.no_flash_attn",
            f"paged attention needs flash-attn >= {floor}; unpaged, batch size 1",
        )
    return Reason(
        "paged", "false", "paged.flash_attn_too_old", f"this flash-attn has no paged attention (< {floor})"
    )


# -------------------------------------------------------------------------------------------- cache mode


def sufficient_context() -> int:
    """The context past which the default policy keeps precision rather than chase length
    (profiles/policy.toml `[cache]`)."""
    return int(load_data("policy.toml")["cache"]["sufficient_context"])


def choose_cache_mode(by_mode: dict[str, int], req: Request, target: int, target_why: str
                      ) -> tuple[str, Reason]:
    """The cache mode by the policy in profiles/policy.toml: the most precise allowed mode that reaches the
    target context; when none does, the longest context if the user asked for that context, else (the target
    is the model's own) the most precise mode that reaches the sufficient context, then the longest. Every
    other mode comes with why it was not chosen."""
    modes = exl2.CACHE_MODES
    allowed = req.allowed_modes()
    reaching = [mode for mode in allowed if by_mode[mode] >= target]
    longest = max(allowed, key=lambda md: (by_mode[md], -modes.index(md)))
    enough = min(sufficient_context(), target)
    sufficient = [mode for mode in allowed if by_mode[mode] >= enough]
    if req.cache:
        mode, code, why = req.cache, "cache.forced", f"forced by --cache {req.cache}"
    elif reaching:
        mode, code = reaching[0], "cache.target_reached"
        why = f"the most precise cache that reaches the target context {target} ({target_why})"
    elif req.context is None and sufficient and sufficient[0] != longest:
        mode, code = sufficient[0], "cache.sufficient_context"
        why = (f"no cache mode reaches the target {target} ({target_why}); {mode} is the most precise that "
               f"reaches {enough} tokens, the context past which the planner keeps precision rather than "
               f"chase length ({longest} would reach {by_mode[longest]}: pass --context {by_mode[longest]} "
               f"or --cache {longest} for that)")
    else:
        mode, code = longest, "cache.longest_context"
        why = f"no cache mode reaches the target {target} ({target_why}); {mode} gives the longest context"
    rejected = {}
    for other in modes:
        if other == mode:
            continue
        if other not in allowed:
            text = (f"--cache {req.cache} given" if req.cache
                    else f"not allowed by --min-cache-precision {req.min_cache_precision}")
            rejected[other] = [finding("cache.not_allowed", text, mode=other)]
        elif by_mode[other] == 0:
            rejected[other] = [finding("cache.does_not_fit", "does not fit at any context", mode=other)]
        elif modes.index(other) < modes.index(mode):
            rejected[other] = [finding("cache.shorter_context", f"reaches only {by_mode[other]} tokens",
                                       mode=other, max_seq_len=by_mode[other])]
        elif code == "cache.sufficient_context" and by_mode[other] > by_mode[mode]:
            rejected[other] = [finding("cache.precision_kept", f"coarser than {mode}, which already reaches "
                                       f"{enough} tokens (it would reach {by_mode[other]})", mode=other,
                                       max_seq_len=by_mode[other])]
        else:
            more = f" (reaches {by_mode[other]})" if by_mode[other] != by_mode[mode] else ""
            rejected[other] = [finding("cache.coarser", f"coarser than {mode}{more}", mode=other,
                                       max_seq_len=by_mode[other])]
    evidence = {"target": target, "max_seq_len_by_cache_mode": dict(by_mode), "sufficient_context": enough}
    return mode, Reason("cache_mode", mode, code, why, evidence, rejected)


def max_seq_len_reason(max_seq_len: int, target: int, target_why: str) -> Reason:
    page = exl2.PAGE_SIZE
    if max_seq_len >= target:
        return Reason(
            "max_seq_len",
            str(max_seq_len),
            "max_seq_len.capped",
            f"capped by the target {target} ({target_why}); it fits within every GPU's budget",
            {"target": target},
        )
    return Reason(
        "max_seq_len",
        str(max_seq_len),
        "max_seq_len.fit_limit",
        f"the largest multiple of {page} tokens at which every GPU stays within its budget "
        f"(+{page} does not fit)",
        {"target": target},
    )


# -------------------------------------------------------------------------------------------------- chunk


def pick_chunk(per_chunk: dict[int, int], target: int) -> int:
    """The largest chunk whose context is within CHUNK_TOLERANCE of the best chunk's (or reaches the target):
    prefill speed grows with the chunk; a couple of percent of context is not worth a 4x slower prefill."""
    page = exl2.PAGE_SIZE
    best = max(per_chunk.values())
    goal = min(target, best - int(best * CHUNK_TOLERANCE) // page * page)
    return max(ch for ch, n in per_chunk.items() if n >= goal)


def chunk_reason(chunk: int, per_chunk: dict[int, int], forced: bool, used: int) -> Reason:
    """`chunk` as picked; `used` is what exllamav2 gets (it clamps max_input_len to max_seq_len)."""
    evidence = {"max_seq_len_by_chunk": {str(k): v for k, v in per_chunk.items()}, "picked": chunk}
    if forced:
        return Reason("chunk_size", str(used), "chunk.forced", f"forced by --chunk-size {chunk}", evidence)
    others = ", ".join(f"{ch} reaches {n}" for ch, n in per_chunk.items() if ch != chunk)
    tolerance = f"{CHUNK_TOLERANCE:.0%}"
    if chunk == max(per_chunk):
        code = "chunk.default"
        why = f"exllamav2's default max_input_len: a smaller chunk gains under {tolerance} context"
    else:
        code = "chunk.smaller"
        why = (
            f"the largest chunk within {tolerance} of the longest context any chunk reaches: "
            "the attention transients grow with chunk x context"
        )
    return Reason("chunk_size", str(used), code, f"{why} ({others})", evidence)


# -------------------------------------------------------------------------------------------- budget, GPUs


def budget_reason(kinds: list[str], margin_mib: int) -> Reason:
    unique = sorted(set(kinds))
    return Reason(
        "budget",
        "/".join(unique),
        "budget.vram",
        f"per GPU: {' / '.join(unique)} VRAM minus a {margin_mib} MiB safety margin; the CUDA context "
        "and the allocator's slack are planned as reserve",
        {"margin_mib": margin_mib},
    )


def gpus_reason(used: list[Any], unused: list[Any]) -> Reason:
    return Reason(
        "gpus",
        ", ".join(f"#{g.index}" for g in used),
        "gpus.unused",
        f"the model and its cache fit on {len(used)} GPU(s) in exllamav2's order; not needed: "
        + ", ".join(f"#{g.index} {g.name}" for g in unused),
        {"used": [g.index for g in used], "unused": [g.index for g in unused]},
    )


def gpu_split_reason(split: list[float], gpus: list[Any], layers: list[list[int]]) -> Reason:
    placed = ", ".join(
        f"{g.name} #{g.index}: layers {ls[0]}-{ls[-1]}" if ls else f"{g.name}: none"
        for g, ls in zip(gpus, layers, strict=True)
    )
    return Reason(
        "gpu_split",
        ", ".join(f"{x:g}" for x in split),
        "gpu_split.placed",
        "modules placed in exllamav2's order (layers in file order, lm_head last), each "
        f"GPU filled to its budget with its layers' cache: {placed}; values are GB for "
        "model.load(gpu_split) so that set_device_map reproduces this placement",
        {"gpu_split": list(split), "layers": [[ls[0], ls[-1]] if ls else [] for ls in layers]},
    )
