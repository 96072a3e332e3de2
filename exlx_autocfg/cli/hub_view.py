"""Hub models in the CLI: reading progress on a terminal, the quant table of `plan hf:ORG/REPO`, the
`hub` line of a plan read from a revision, and the extra keys of `plan --json` for a quant choice."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from exlx_autocfg.exl2 import CACHE_MODES
from exlx_autocfg.model.hub import BranchListing, Progress
from exlx_autocfg.model.spec import HubSource
from exlx_autocfg.planner.candidates import Choice, fmt_bpw
from exlx_autocfg.planner.types import Plan
from exlx_autocfg.serde import to_data


@dataclass
class HubChoice:
    listing: BranchListing
    choice: Choice

    def json_extra(self) -> dict[str, Any]:
        """The keys `plan --json` adds for `hf:ORG/REPO`: revision, candidates, choice, hub (the listing)."""
        c, listing = self.choice, self.listing
        weights = sum(b.download_bytes for b in listing.branches if b.spec is not None)
        return {
            "revision": c.revision,
            "candidates": [to_data(x) for x in c.candidates],
            "choice": {"revision": c.revision, "code": c.code, "why": c.why, "target_context": c.target},
            "hub": {
                "repo": listing.repo,
                "endpoint": listing.endpoint,
                "branches": [b.revision for b in listing.branches],
                "bytes_read": listing.bytes_read,
                "bytes_cached": listing.bytes_cached,
                "weights_bytes": weights,
                "offline": listing.offline,
            },
        }


@contextmanager
def hub_progress(enabled: bool | None) -> Iterator[Progress | None]:
    """A rich progress bar on stderr while Hub files are read (default: only when stderr is a terminal)."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
    from rich.progress import Progress as RichProgress

    bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       console=Console(stderr=True), transient=True)
    tasks: dict[str, Any] = {}

    def report(what: str, done: int, total: int) -> None:
        # One bar per level: the branches of a repo, the headers of one revision.
        level = "branches" if ": branch " in what or what.endswith(" branches") else "files"
        if level not in tasks:
            tasks[level] = bar.add_task(what, total=total)
        bar.update(tasks[level], description=what, completed=done, total=total)

    with bar:
        yield report


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n else "-"


def _ctx(n: int | None) -> str:
    return f"{n:,}" if n else "no fit"


def quant_table(hub: HubChoice, plan: Plan) -> Group:
    c, listing = hub.choice, hub.listing
    gpus = ", ".join(f"{g.name} ({g.memory_total / 1024**2:,.0f} MiB)" for g in plan.gpus)
    title = (f"Quants of {listing.repo} on {gpus}: target context {c.target} ({c.target_why})")
    table = Table(title=title, title_justify="left")
    for col in ("revision", "bpw", "weights", "download"):
        table.add_column(col, justify="left" if col == "revision" else "right")
    for mode in CACHE_MODES:
        table.add_column(mode, justify="right")
    table.add_column("plan", justify="right")
    table.add_column("")
    for cand in c.candidates:
        mark = Text("◀ chosen", style="bold green") if cand.chosen else Text(cand.why, style="dim")
        if cand.status == "skipped":
            table.add_row(cand.revision, "-", "-", _gb(cand.download_bytes), *["" for _ in CACHE_MODES], "",
                          Text(f"skipped: {cand.why}", style="dim"))
            continue
        by_mode = [_ctx(cand.max_seq_len_by_cache_mode.get(m)) for m in CACHE_MODES]
        planned = f"{cand.cache_mode} {cand.max_seq_len:,}" if cand.cache_mode else "-"
        if cand.status == "does_not_fit":
            by_mode, planned = ["no fit"] * len(CACHE_MODES), "-"
            mark = Text(cand.why, style="red")
        table.add_row(cand.revision, fmt_bpw(cand.bits_per_weight), _gb(cand.weights_bytes),
                      _gb(cand.download_bytes), *by_mode, planned, mark)
    chosen = Text("Chosen: ", style="bold")
    chosen.append(c.why)
    weights = sum(b.download_bytes for b in listing.branches if b.spec is not None)
    read = Text(_read_line(listing.bytes_read, listing.bytes_cached, weights, len(listing.branches),
                           listing.offline), style="italic")
    return Group(table, chosen, read, Text(""))


def _read_line(read: int, cached: int, weights: int, branches: int | None, offline: bool) -> str:
    what = f"{branches} branches" if branches is not None else "this revision"
    share = f" ({read / weights:.4%} of {weights / 1e9:.2f} GB of weights)" if weights and read else ""
    cache = f", {cached:,} from the cache" if cached else ""
    mode = " (offline: HF_HUB_OFFLINE)" if offline else ""
    return f"Read {read:,} bytes from the Hub for {what}{share}{cache}{mode}"


def source_line(hub: HubSource) -> Text:
    line = Text(f"{hub.reference} (commit {hub.commit[:12]}): ", style="bold")
    line.append(_read_line(hub.bytes_read, hub.bytes_cached, hub.weights_bytes, None, hub.offline))
    line.append(f"; files: {', '.join(hub.files)}")
    return line
