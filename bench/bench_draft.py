"""Qwen2.5-72B 4.25 bpw on 2x RTX 3090, with and without a Qwen2.5-0.5B draft: max context per cache mode.

How it is composed (phase 1: the planner does not know drafts yet, so this script wraps it):
1. Without the draft: the current planner (`planner.core.plan`, what-if facts `3090x2` with the
   recommended attention libraries), chunk 2048 (TabbyAPI's default), one plan per cache mode.
2. With the draft, per cache mode (the draft's cache mode = the model's, the policy the issue asks for),
   for a candidate context C (a multiple of 256): place the draft as TabbyAPI loads it, FIRST, by
   exllamav2's autosplit (`planner.draft.place_draft_autosplit`) on each GPU's plan budget minus the
   planner's reserve (CUDA context + allocator slack), with the draft at max_seq_len = C and the same
   chunk; take its persistent bytes (weights, cache, FP16 staging, its scratch tensor, RoPE tables) off that
   GPU's VRAM, plus any excess of its transients over the model's on that GPU (none here: checked); plan
   the model again with `context=C`. C fits when that plan reaches C. Binary search for the largest C.
3. Tensor parallelism (no draft): `planner.tensor_parallel.max_tp_seq_len` on the same budgets.

Run: python bench/bench_draft.py [--draft-bpw 4.0]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exlx_autocfg.errors import DoesNotFitError
from exlx_autocfg.facts.what_if import what_if_facts
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.planner import draft as dr
from exlx_autocfg.planner import memory
from exlx_autocfg.planner import tensor_parallel as tp
from exlx_autocfg.planner.core import DEFAULT_MARGIN_MIB, plan

MIB = 1024**2
PAGE = 256
CHUNK = 2048
MODES = ("FP16", "Q8", "Q6", "Q4")


def reserve_bytes() -> int:
    o = memory.DEFAULT_OVERHEADS
    return o.cuda_context_bytes + o.allocator_slack_bytes


def with_draft(facts, model, draft, mode: str, cap: int) -> tuple[int, dr.DraftPlan | None]:
    gpus = sorted(facts.gpu.gpus, key=lambda g: g.cuda_index)
    budgets = [g.memory_total - DEFAULT_MARGIN_MIB * MIB for g in gpus]
    free_before_model = [b - reserve_bytes() for b in budgets]

    def attempt(c: int) -> dr.DraftPlan | None:
        try:
            dplan = dr.place_draft_autosplit(
                draft,
                free_before_model,
                cache_mode=mode,
                max_seq_len=c,
                chunk_size=CHUNK,
                backend="flash_attn",
            )
        except DoesNotFitError:
            return None
        shrunk = copy.deepcopy(facts)
        main_transient = memory.attention_transient_bytes(
            model, "flash_attn", CHUNK, CHUNK * CHUNK, c
        ) + memory.forward_activation_bytes(model, CHUNK)
        for g in shrunk.gpu.gpus:
            pos = g.cuda_index
            held = dplan.persistent_by_position(len(gpus))[pos]
            excess = max(0, dplan.transient_by_position(len(gpus))[pos] - main_transient)
            assert excess == 0, "draft transients exceed the model's: compose with max(), not a sum"
            g.memory_total -= held + excess
        try:
            p = plan(shrunk, model, cache=mode, context=c, chunk_size=CHUNK)
        except DoesNotFitError:
            return None
        return dplan if p.settings.max_seq_len >= c else None

    lo, hi, best = 1, cap // PAGE, None
    while lo <= hi:
        mid = (lo + hi) // 2
        got = attempt(mid * PAGE)
        if got is not None:
            best, lo = (mid * PAGE, got), mid + 1
        else:
            hi = mid - 1
    return best if best else (0, None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draft-bpw", type=float, default=4.0)
    args = ap.parse_args()
    facts = what_if_facts(["3090x2"], recommended=True)
    model = load_model_spec("qwen2.5-72b@4.25bpw")
    draft = load_model_spec(f"qwen2.5-0.5b@{args.draft_bpw}bpw")
    print(f"{model.name} on 2x RTX 3090 (24 GiB), chunk {CHUNK}, flash-attn (what-if stack), manual split")
    print(
        f"draft {draft.name}: {dr.draft_weights_bytes(draft) / MIB:,.0f} MiB of GPU weights, "
        "cache bytes/token "
        + ", ".join(f"{m} {v:,}" for m, v in dr.draft_kv_cache_bytes_per_token(draft).items())
    )
    rows: dict[str, dict[str, int]] = {"without draft": {}, "with 0.5B draft": {}, "tensor parallel": {}}
    held: dict[str, int] = {}
    gpus = sorted(facts.gpu.gpus, key=lambda g: g.cuda_index)
    budgets = [g.memory_total - DEFAULT_MARGIN_MIB * MIB for g in gpus]
    for mode in MODES:
        base = plan(facts, model, cache=mode, chunk_size=CHUNK)
        cap = base.max_seq_len_by_cache_mode[mode]
        rows["without draft"][mode] = cap
        ctx, dplan = with_draft(facts, model, draft, mode, cap)
        rows["with 0.5B draft"][mode] = ctx
        held[mode] = dplan.persistent_by_position(2)[0] if dplan else 0
        rows["tensor parallel"][mode] = tp.max_tp_seq_len(
            model,
            budgets,
            [reserve_bytes()] * 2,
            cache_mode=mode,
            max_input_len=CHUNK,
            cap=model.max_position_embeddings,
        )
    print()
    print("| | " + " | ".join(MODES) + " |")
    print("|---|" + "---:|" * len(MODES))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[m]:,}" for m in MODES) + " |")
    print("| draft bytes on GPU 0 (MiB) | " + " | ".join(f"{held[m] / MIB:,.0f}" for m in MODES) + " |")
    print(
        "| context lost to the draft | "
        + " | ".join(f"{rows['without draft'][m] - rows['with 0.5B draft'][m]:,}" for m in MODES)
        + " |"
    )
    print()
    for mode in MODES:
        ctx = rows["with 0.5B draft"][mode]
        for f in dr.judge_draft(model, draft, cache_size=ctx, cache_mode=mode, draft_cache_mode=mode):
            print(f"{mode} at {ctx:,}: [{f.code}] {f.message}")


if __name__ == "__main__":
    main()
