"""Planner benchmark.

1. Plan every catalog model (4.0 bpw) x every GPU in the table x every cache mode (what-if facts, the
   default stack plus xformers where the GPU is NVIDIA); print the count, the wall time and plans/s.
2. Plan one sparse model directory of each of the 28 architectures exllamav2 0.3.2 recognises (the catalog's
   models where it has one, published-shaped fixture configs otherwise; the directories' tensors come from
   the real exllamav2 wheel's module graph, tests/support) on one GPU per cache mode; print how many of the
   28 plan, and their plans/s.
3. For an RTX 2080 Ti 22 GB and Nous-Capybara-34B (Yi-34B-200K) at 4.0 bpw, print the max context with
   xformers vs matmul at each cache mode (the old exllamav2#364 report: xformers fit "1000+ more tokens").

Run: python bench/bench_plan.py   (part 2 needs the dev install: pip install -e '.[test]')
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exlx_autocfg.errors import DoesNotFitError
from exlx_autocfg.exl2 import CACHE_MODES
from exlx_autocfg.facts.what_if import gpu_table, what_if_facts
from exlx_autocfg.model.architectures import supported_architectures
from exlx_autocfg.model.catalog import catalog
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.planner.core import plan


def _facts_per_gpu() -> dict:
    facts = {}
    for row in gpu_table():
        assume = (
            ["xformers==0.0.29.post3"]
            if row.vendor == "nvidia"
            else ["xformers==0.0.28.post1", "torch==2.4.1+rocm6.1"]
        )
        facts[row.id] = what_if_facts([row.id], assume)
    return facts


def grid() -> None:
    specs = [load_model_spec(f"{model_id}@4.0bpw") for model_id in catalog()]
    facts = _facts_per_gpu()
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
    archs = sorted({s.architecture for s in specs})
    print(
        f"grid: {len(specs)} catalog models ({len(archs)} architectures) x {len(facts)} GPUs x "
        f"{len(CACHE_MODES)} cache modes = {total} plans"
    )
    print(
        f"      {planned} planned, {does_not_fit} DoesNotFitError; wall {wall:.2f} s, "
        f"{total / wall:.0f} plans/s, {1000 * wall / total:.1f} ms/plan"
    )


def every_architecture() -> None:
    try:
        from tests.support.arch_models import ARCHITECTURES
        from tests.support.model_dirs import make_model_dir
    except ImportError as exc:  # the exllamav2 wheel and the test support are dev-only
        print(f"\narchitectures: skipped ({exc}); install with pip install -e '.[test]'")
        return
    facts = what_if_facts(["h100-80gb"])
    covered: list[str] = []
    failed: dict[str, str] = {}
    plans = 0
    with tempfile.TemporaryDirectory(prefix="exlx-bench-") as root:
        specs = {}
        for arch, (model, overrides) in ARCHITECTURES.items():
            specs[arch] = load_model_spec(make_model_dir(Path(root), model, bpw=4.0, **overrides))
        start = time.perf_counter()
        for arch, spec in specs.items():
            try:
                for mode in CACHE_MODES:
                    plan(facts, spec, cache=mode)
                    plans += 1
                covered.append(arch)
            except DoesNotFitError as exc:
                failed[arch] = exc.one_line()
        wall = time.perf_counter() - start
    recognised = len(supported_architectures())
    print(
        f"\narchitectures: {len(covered)} of {recognised} planned from a model directory on an H100 80 GB "
        f"({plans} plans, {plans / wall:.0f} plans/s)"
    )
    for arch, why in failed.items():
        print(f"  {arch}: {why}")


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
    every_architecture()
    yi_on_2080ti_22gb()
