"""Readable rendering of a Plan: decisions with reasons and rejected alternatives, the max context for each
cache mode, and a VRAM bar per GPU (weights / cache / scratch / reserve / free)."""

from __future__ import annotations

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from exlx_autocfg import exl2
from exlx_autocfg.planner.types import DeviceMemory, Plan

MIB = 1024**2
BAR_WIDTH = 48
# (part, glyph, style): glyphs keep the bar readable without colour (pipes, NO_COLOR, logs).
SEGMENTS = (
    ("weights", "█", "blue"),
    ("cache", "▓", "green"),
    ("scratch", "▒", "yellow"),
    ("reserve", "░", "magenta"),
    ("free", "·", "dim"),
)


def _mib(n: int) -> str:
    return f"{n / MIB:,.0f} MiB"


def _segments(row: DeviceMemory, memory_total: int) -> dict[str, int]:
    used = {
        "weights": row.weights_bytes,
        "cache": row.cache_bytes,
        "scratch": row.scratch_bytes,
        "reserve": row.reserve_bytes,
    }
    used["free"] = max(memory_total - sum(used.values()), 0)
    return used


def vram_bar(row: DeviceMemory, memory_total: int, width: int = BAR_WIDTH) -> Text:
    """One GPU's VRAM as a bar of `width` cells; each non-zero part gets at least one cell."""
    parts = _segments(row, memory_total)
    total = max(sum(parts.values()), 1)
    cells = {k: (max(1, round(v * width / total)) if v else 0) for k, v in parts.items()}
    # Give rounding leftovers to (or take them from) the largest part so the bar is exactly `width`.
    largest = max(cells, key=lambda k: parts[k])
    cells[largest] += width - sum(cells.values())
    bar = Text()
    for name, glyph, style in SEGMENTS:
        bar.append(glyph * max(cells[name], 0), style=style)
    return bar


def plan_renderable(plan: Plan) -> Group:
    m = plan.model
    head = Text()
    head.append(f"{m.name}", style="bold")
    bpw = f" {m.bits_per_weight:g} bpw" if m.bits_per_weight else ""
    head.append(
        f"  {m.architecture}{bpw}, {m.layers} layers, {m.kv_heads} KV heads x {m.head_dim}, "
        f"max_position_embeddings {m.max_position_embeddings}\n"
    )
    gpus = ", ".join(
        f"#{g.index} {g.name} ({_mib(g.memory_total)}"
        + (f", CC {g.compute_capability}" if g.compute_capability else "")
        + ")"
        for g in plan.gpus
    )
    head.append(f"GPUs: {gpus}\n")
    head.append("Plan: ", style="bold")
    s = plan.settings
    head.append(
        f"backend {s.backend}, cache {s.cache_mode}, max_seq_len {s.max_seq_len}, chunk {s.max_input_len}"
    )
    if s.gpu_split:
        head.append(f", gpu_split {s.gpu_split}")
    flags = [switch for switch, on in s.switches.items() if on]
    if flags:
        head.append(f", {' '.join(flags)}")
    head.append(f", paged {str(s.paged).lower()}\n")
    for line in beside_lines(plan):
        head.append(line + "\n")

    decisions = Table(title="Decisions", title_justify="left", show_lines=False, expand=False)
    decisions.add_column("decision", style="bold", no_wrap=True)
    decisions.add_column("choice", no_wrap=True)
    decisions.add_column("why / rejected")
    for r in plan.reasons:
        why = Text(r.why)
        for alt in r.rejected:
            why.append(f"\n  ✗ {alt}: ", style="red")
            why.append(r.rejected_text(alt))
        decisions.add_row(r.decision, r.choice, why)

    contexts = Table(title="Max context per cache mode", title_justify="left")
    contexts.add_column("cache")
    contexts.add_column("bytes/token", justify="right")
    contexts.add_column("max_seq_len", justify="right")
    contexts.add_column("")
    for mode in exl2.CACHE_MODES:
        n = plan.max_seq_len_by_cache_mode.get(mode, 0)
        per_token = plan.kv_cache_bytes_per_token.get(mode)
        mark = "◀ chosen" if mode == plan.settings.cache_mode else ""
        contexts.add_row(
            mode, f"{per_token:,}" if per_token else "?", f"{n:,}" if n else "does not fit", mark
        )

    bars = Text("VRAM per GPU", style="italic")
    bars.append("\n")
    by_index = {g.index: g for g in plan.gpus}
    for row in plan.memory:
        gpu = by_index.get(row.gpu_index)
        total = gpu.memory_total if gpu else row.budget_bytes
        seg = _segments(row, total)
        bars.append(f"#{row.gpu_index} {gpu.name if gpu else ''}", style="bold")
        layers = f", layers {row.layers[0]}-{row.layers[-1]}" if row.layers else ""
        bars.append(f"  {_mib(row.total_bytes)} planned of {_mib(row.budget_bytes)} budget{layers}\n  ")
        bars.append_text(vram_bar(row, total))
        bars.append("\n  " + "  ".join(f"{name} {_mib(seg[name])}" for name, _, _ in SEGMENTS) + "\n")
        held = beside_bytes(row)
        if held:
            bars.append("  of which " + ", ".join(f"{k} {_mib(v)}" for k, v in held.items()) + "\n")
    legend = Text("bar: ")
    for name, glyph, style in SEGMENTS:
        legend.append(glyph, style=style)
        legend.append(f" {name}  ")
    items: list = [head, decisions, contexts, bars, legend]
    if plan.warnings:
        warn = Text("\n")
        for w in plan.warnings:
            warn.append("warning: ", style="bold yellow")
            warn.append(w.message + "\n")
        items.append(warn)
    return Group(*items)


def beside_lines(plan: Plan) -> list[str]:
    """What loads beside the model, one line each (the decisions table has the why)."""
    s, out = plan.settings, []
    if s.tensor_parallel:
        out.append(f"Tensor parallel: load_tp(gpu_split {s.gpu_split}), ExLlamaV2Cache_TP")
    if s.draft is not None:
        d = s.draft
        load = f"draft_gpu_split {d.gpu_split}" if d.gpu_split else "autosplit"
        out.append(f"Draft: {d.name}, cache {d.cache_mode}, {load}, rope alpha {d.rope_alpha:g}, "
                   "loaded first")
    if s.loras:
        out.append("LoRA: " + ", ".join(f"{x.name} (scale {x.scale:g})" for x in s.loras))
    return out


def beside_bytes(row: DeviceMemory) -> dict[str, int]:
    """The bytes of the draft and the adapters in a GPU's figures."""
    draft = sum(v for k, v in row.parts.items() if k.startswith("draft_"))
    lora = row.parts.get("lora", 0) + row.parts.get("lora_transient", 0)
    return {k: v for k, v in (("draft", draft), ("LoRA", lora)) if v}


def print_plan(plan: Plan, console: Console | None = None) -> None:
    (console or Console()).print(plan_renderable(plan))
