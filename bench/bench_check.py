"""Benchmark: where `exlx-autocfg check` spends its time, measured in one run.

    python bench/bench_check.py [--runs 3] [--xformers 0.0.26.post1]

Per run: one `detect()` (the probe imports torch, xformers ... in child processes), one child
`import exllamav2` with the plan's switches (the stand-in extension on PYTHONPATH, so it imports), the pure
`run_checks` on those facts, and the whole `exlx-autocfg check` command. Prints medians and the part of the
command that is neither the probe nor the import it must try. Goal (issue 6): that overhead stays well under
a few seconds; the pure checks take milliseconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exlx_autocfg.checks import import_plan, run_checks  # noqa: E402
from exlx_autocfg.checks.importer import try_import  # noqa: E402
from exlx_autocfg.facts.detect import detect  # noqa: E402
from tests.support.envs import xformers_site  # noqa: E402
from tests.support.standin import STANDIN_SITE  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--xformers", default="0.0.26.post1", help="xformers release put in front of PYTHONPATH")
    args = ap.parse_args()
    os.environ["PYTHONPATH"] = os.pathsep.join([str(STANDIN_SITE), str(xformers_site(args.xformers))])
    exe = str(Path(sys.executable).with_name("exlx-autocfg"))

    rows: dict[str, list[float]] = {"detect": [], "child import": [], "run_checks": [], "check command": []}
    for _ in range(args.runs):
        t = time.perf_counter()
        facts = detect()
        rows["detect"].append(time.perf_counter() - t)
        switches, _ = import_plan(facts)
        t = time.perf_counter()
        result = try_import(facts.python.executable, switches)
        rows["child import"].append(time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(20):
            run_checks(facts, result)
        rows["run_checks"].append((time.perf_counter() - t) / 20)
        t = time.perf_counter()
        subprocess.run([exe, "check"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows["check command"].append(time.perf_counter() - t)

    med = {k: statistics.median(v) for k, v in rows.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.runs} runs; xformers {args.xformers}; {os.cpu_count()} CPUs, load average {load:.1f}")
    for name, value in med.items():
        print(f"{name:15} {value * 1000:10.1f} ms")
    overhead = med["check command"] - med["detect"] - med["child import"]
    print(f"check command beyond probe + import: {overhead:.2f} s "
          f"({overhead / med['check command']:.0%} of the command); run_checks / command: "
          f"{med['run_checks'] / med['check command']:.4f}")


if __name__ == "__main__":
    main()
