"""Planner benchmark.

1. Plan every catalog model (4.0 bpw) x every GPU in the table x every cache mode (what-if facts, the
   default stack plus xformers where the GPU is NVIDIA); print the count, the wall time and plans/s.
2. For an RTX 2080 Ti 22 GB and Nous-Capybara-34B (Yi-34B-200K) at 4.0 bpw, print the max context with
   xformers vs matmul at each cache mode (the old exllamav2#364 report: xformers fit "1000+ more tokens").

Run: python bench/bench_plan.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exlx_autocfg.errors import DoesNotFitError
from exlx_autocfg.exl2 import CACHE_MODES
from exlx_autocfg.facts.what_if import gpu_table, what_if_facts
from exlx_autocfg.model.catalog import catalog
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.planner.core import plan


def grid() -> None:
    specs = [load_model_spec(f"{model_id}@4.0bpw") for model_id in catalog()]
    facts = {}
    for row in gpu_table():
        assume = (
            ["xformers==0.0.29.post3"]
            if row.vendor == "nvidia"
            else ["xformers==0.0.28.post1", "torch==2.4.1+rocm6.1"]
        )
        facts[row.id] = what_if_facts([row.id], assume)
    planned = does_not_fit = 0
    start = time.perf_counter()
    for spec in specs:
        for f in facts.values():
            for mode in CACHE_MODES:
                try:
                    plan(f, spec, cache=mode)
                    planned += 1
                except DoesNotFitError:
                    does_not_fit += 1
    wall = time.perf_counter() - start
    total = planned + does_not_fit
    print(
        f"grid: {len(specs)} catalog models x {len(facts)} GPUs x {len(CACHE_MODES)} cache modes"
        f" = {total} plans"
    )
    print(
        f"      {planned} planned, {does_not_fit} DoesNotFitError; wall {wall:.2f} s, "
        f"{total / wall:.0f} plans/s, {1000 * wall / total:.1f} ms/plan"
    )


def yi_on_2080ti_22gb() -> None:
    spec = load_model_spec("nous-capybara-34b@4.0bpw")
    stacks = {
        "xformers": what_if_facts(["2080ti-22gb"], ["xformers==0.0.29.post3"]),
        "matmul": what_if_facts(["2080ti-22gb"]),
    }
    print("\nRTX 2080 Ti 22 GB, Nous-Capybara-34B (Yi-34B-200K) 4.0 bpw: max context (tokens)")
    for label, chunk in (("chunk chosen by the planner", None), ("chunk 2048 (exllamav2 default)", 2048)):
        print(f"  {label}:")
        print(f"  {'cache':6} {'xformers':>16} {'matmul':>16} {'xformers - matmul':>18}")
        for mode in CACHE_MODES:
            row = {}
            for name, facts in stacks.items():
                p = plan(facts, spec, cache=mode, chunk_size=chunk)
                assert p.settings.backend == name, (p.settings.backend, name)
                row[name] = (p.max_seq_len_by_cache_mode[mode], p.settings.max_input_len)
            (xf, xf_chunk), (mm, mm_chunk) = row["xformers"], row["matmul"]
            print(f"  {mode:6} {xf:>9} (c{xf_chunk:>4}) {mm:>9} (c{mm_chunk:>4}) {xf - mm:>+18}")


if __name__ == "__main__":
    import argparse

    fmt = argparse.RawDescriptionHelpFormatter
    argparse.ArgumentParser(description=__doc__, formatter_class=fmt).parse_args()
    grid()
    yi_on_2080ti_22gb()
