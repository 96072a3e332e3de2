"""Concurrent `emit -f textgen --out config-user.yaml` writers: how many entries survive.

    python bench/concurrent_emit.py [--writers 2,3,4,5,6] [--runs 5] [--per-writer 3] [--code-root DIR]

For each writer count, `--runs` times: that many real interpreters, released at once, each merging
`--per-writer` models (one profile each) into one file (tests/support/concurrency.py). Prints, per writer
count, the runs, the entries written and kept, and the runs that lost any. `--code-root` runs the writers
on another checkout of exlx-autocfg (e.g. one from before the lock, to see the loss it fixed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.concurrency import concurrent_textgen_emits  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writers", default="2,3,4,5,6")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--per-writer", type=int, default=3)
    ap.add_argument("--code-root", type=Path, default=ROOT)
    args = ap.parse_args()
    print(f"code: {args.code_root}")
    print(f"{'writers':>7} {'runs':>4} {'entries written':>15} {'entries kept':>12} {'runs losing':>11}")
    total_written = total_kept = 0
    for writers in (int(w) for w in args.writers.split(",")):
        written = kept = losing = 0
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="exlx-concurrent-") as tmp:
                out = concurrent_textgen_emits(Path(tmp), writers, args.per_writer, code_root=args.code_root)
            written += out.expected
            kept += out.kept
            losing += out.kept < out.expected
        total_written += written
        total_kept += kept
        print(f"{writers:>7} {args.runs:>4} {written:>15} {kept:>12} {losing:>11}")
    print(f"{'all':>7} {'':>4} {total_written:>15} {total_kept:>12}")


if __name__ == "__main__":
    main()
