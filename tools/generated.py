"""The shared ending of the scripts that generate a docs page: write it, or with --check say whether the
page on disk is what they would write (exit 1 when it is not)."""

from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(doc: Path, text: str, module: str, argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--check" in argv:
        current = doc.read_text(encoding="utf-8") if doc.exists() else ""
        if current != text:
            print(f"{doc} is out of date: run python -m {module}", file=sys.stderr)
            return 1
        return 0
    doc.parent.mkdir(parents=True, exist_ok=True)
    tmp = doc.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(doc)
    print(f"wrote {doc}")
    return 0
