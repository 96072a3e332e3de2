"""Benchmark: `exlx-autocfg detect --json` against `python -m torch.utils.collect_env` and
`python -m xformers.info`, in the same environment (a real xformers release in front of PYTHONPATH).

    python bench/bench_detect.py [--runs 5] [--xformers 0.0.35]

Runs the commands interleaved, several times each, and prints wall-clock and CPU (user+sys) medians and
the ratios. "cold" re-runs the import checks (--refresh); "cached" reuses them (nothing changed between
runs). Goals: detect >= 5x faster than collect_env (issue 2); `detect --no-import` under 0.3 s; cached
`detect` and `detect --no-import` >= 10x faster than collect_env (issue 10: start-up spent on the work, not
on imports it does not need).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.envs import child_env, xformers_site  # noqa: E402


def _time(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user+sys of the command and its children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-300:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--xformers", default="0.0.35", help="xformers release put in front of PYTHONPATH")
    args = ap.parse_args()

    cache_dir = tempfile.mkdtemp(prefix="exlx-bench-cache-")
    env = child_env(xformers_site(args.xformers), EXLX_CACHE_DIR=cache_dir)
    # Every command runs as after a normal install, with its bytecode cached: the warm-up writes the .pyc
    # files an editable checkout lacks (an environment that forbids them would recompile only our sources
    # on every run, while torch's were compiled when pip installed it).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    exe = str(Path(sys.executable).with_name("exlx-autocfg"))
    commands = {
        "detect --json (cold)": [exe, "detect", "--json", "--refresh"],
        "detect --json (cached)": [exe, "detect", "--json"],
        "detect --json --no-import": [exe, "detect", "--json", "--no-import"],
        "detection API, no import": [sys.executable, "-c",
                                     "import exlx_autocfg; exlx_autocfg.detect(no_import=True)"],
        "torch.utils.collect_env": [sys.executable, "-m", "torch.utils.collect_env"],
        "xformers.info": [sys.executable, "-m", "xformers.info"],
    }
    walls: dict[str, list[float]] = {k: [] for k in commands}
    cpus: dict[str, list[float]] = {k: [] for k in commands}
    for cmd in commands.values():  # warm-up: page cache, .pyc files
        _time(cmd, env)
    for _ in range(args.runs):
        for name, cmd in commands.items():
            wall, cpu = _time(cmd, env)
            walls[name].append(wall)
            cpus[name].append(cpu)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{args.runs} runs each, interleaved; xformers {args.xformers} on PYTHONPATH; "
          f"{os.cpu_count()} CPUs, load average {load:.1f}")
    print(f"{'command':30} {'wall median':>12} {'cpu median':>12}")
    med_wall = {k: statistics.median(v) for k, v in walls.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpus.items()}
    for name in commands:
        print(f"{name:30} {med_wall[name]:>11.3f}s {med_cpu[name]:>11.3f}s")
    for detect in ("detect --json (cold)", "detect --json (cached)", "detect --json --no-import"):
        for other in ("torch.utils.collect_env", "xformers.info"):
            print(f"{other} / {detect}: wall {med_wall[other] / med_wall[detect]:.2f}x, "
                  f"cpu {med_cpu[other] / med_cpu[detect]:.2f}x")
    fast = med_wall["detect --json --no-import"]
    print(f"detect --no-import: {fast:.3f}s wall ({'meets' if fast < 0.3 else 'misses'} the 0.3 s goal)")
    base = med_wall["torch.utils.collect_env"]
    for detect in ("detect --json (cached)", "detect --json --no-import"):
        ratio = base / med_wall[detect]
        print(f"{detect}: {ratio:.1f}x faster than collect_env "
              f"({'meets' if ratio >= 10 else 'misses'} the 10x goal)")


if __name__ == "__main__":
    main()
