"""The human report of `exlx-autocfg detect`: a pure function of the facts, drawn with rich."""

from __future__ import annotations

import re

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from exlx_autocfg.facts.types import Facts, LibraryFacts

GIB = 1024**3


def print_facts(facts: Facts) -> None:
    Console(highlight=False, soft_wrap=False).print(render_facts(facts))


def render_facts(facts: Facts) -> Group:
    """The human report: interpreter, GPUs, libraries, problems."""
    parts: list[object] = []
    py = facts.python
    took = f", probe {facts.probe_seconds:.1f}s" if facts.probe_seconds is not None else ""
    if facts.probe_cached:
        took += f", import results cached {facts.probe_cached} (--refresh to re-run)"
    parts.append(Text(f"Python {py.version} ({py.implementation}, {py.platform}): {py.executable}{took}"))
    parts.append(_gpu_table(facts))
    parts.append(_library_table(facts))
    problems = facts.gpu.problems + facts.problems
    if problems:
        parts.append(Text("Problems found:", style="bold"))
        parts.extend(Text(f"  - {p}") for p in problems)
    else:
        parts.append(Text("No problems found."))
    return Group(*parts)


def _gpu_table(facts: Facts) -> Table | Text:
    gpu = facts.gpu
    driver = ", ".join(
        x
        for x in (
            f"driver {gpu.driver_version}" if gpu.driver_version else "",
            f"CUDA driver {gpu.cuda_driver_version}" if gpu.cuda_driver_version else "",
            f"ROCm {gpu.rocm_version}" if gpu.rocm_version else "",
        )
        if x
    )
    if not gpu.gpus:
        return Text(f"GPUs: none found{' (' + driver + ')' if driver else ''}")
    order = gpu.device_order
    caption = order.note or ""
    if order.cuda_device_order or order.cuda_visible_devices is not None:
        visible = order.cuda_visible_devices
        env = f"CUDA_DEVICE_ORDER={order.cuda_device_order}, CUDA_VISIBLE_DEVICES={visible}"
        caption += f" [{env}]"
    table = Table(
        title=f"GPUs (from {gpu.source}{'; ' + driver if driver else ''})",
        caption=caption or None,
        title_justify="left",
        caption_justify="left",
    )
    for col in ("#", "CUDA", "Name", "CC / arch", "VRAM total", "free", "PCI bus", "UUID", "MIG"):
        table.add_column(col, justify="right" if col in ("#", "CUDA", "VRAM total", "free") else "left")
    for g in gpu.gpus:
        arch = " ".join(x for x in (g.compute_capability, g.architecture) if x) or "?"
        table.add_row(
            str(g.index),
            "-" if g.cuda_index is None else str(g.cuda_index),
            g.name,
            arch,
            _gib(g.memory_total),
            _gib(g.memory_free),
            g.pci_bus_id or "?",
            (g.uuid or "?")[:13],
            {None: "-", True: "on", False: "off"}[g.mig_mode],
        )
    return table


def _library_table(facts: Facts) -> Table:
    table = Table(title="Libraries", title_justify="left")
    for col in ("Library", "Version", "Build", "Status", "Details"):
        table.add_column(col, overflow="fold")
    for lib in facts.libraries.values():
        if not lib.installed:
            table.add_row(lib.name, "-", "", Text("not installed", style="dim"), "")
            continue
        build = ", ".join(f"{k} {v}" for k, v in lib.build.items()) or (lib.local_tag or "")
        table.add_row(lib.name, lib.version or "?", build, _status(lib), _details(lib))
    return table


def _status(lib: LibraryFacts) -> Text:
    style = {"ok": "green", "error": "red", "timeout": "red", "crashed": "red"}.get(lib.import_status, "dim")
    label = {"not-tried": "not imported"}.get(lib.import_status, lib.import_status)
    if lib.import_seconds is not None:
        label += f" ({lib.import_seconds:.1f}s)"
    return Text(label, style=style)


def _details(lib: LibraryFacts) -> Text:
    d = lib.details
    lines: list[str] = []
    if lib.import_error:
        lines.append(lib.import_error)
    if lib.name == "torch" and "cuda_available" in d:
        backend = f"CUDA {d['cuda_version']}" if d.get("cuda_version") else (
            f"HIP {d['hip_version']}" if d.get("hip_version") else "CPU only"
        )
        lines.append(f"{backend}; devices: {d.get('device_count', 0)}; causal_lower_right: "
                     f"{'yes' if d.get('has_causal_lower_right') else 'no'}")
        if d.get("arch_list"):
            lines.append("arch: " + " ".join(d["arch_list"]))
    if lib.name == "xformers" and "import_paths" in d:
        # "xformers.ops." is common to every path: drop it so each fits on one line.
        short = {p: p.removeprefix("xformers.").removeprefix("ops.") for p in d["import_paths"]}
        lines.append("resolves: " + ", ".join(short[p] for p, ok in d["import_paths"].items() if ok))
        missing = [short[p] for p, ok in d["import_paths"].items() if not ok]
        if missing:
            lines.append("does NOT resolve: " + ", ".join(missing))
        if "has_cpp_library" in d:
            lines.append(f"C++/CUDA ops: {'loaded' if d['has_cpp_library'] else 'NOT loaded'}")
        if d.get("built_for_warning"):
            lines.append("warning: " + _built_for(d["built_for_warning"]))
    if lib.name == "flash-attn" and d.get("features"):
        lines.append("features: " + ", ".join(k for k, v in d["features"].items() if v))
    if d.get("ext"):
        jit = d.get("jit") or {}
        lines.append(f"extension: {d['ext']}" + (f" ({d['ext_error']})" if d.get("ext_error") else ""))
        if d["ext"] == "jit-needed":
            lines.append(
                f"nvcc {jit.get('nvcc_version') or ('found' if jit.get('nvcc') else 'missing')}, "
                f"ninja {'found' if jit.get('ninja') else 'missing'}, "
                f"compiler {'found' if jit.get('compiler') else 'missing'}"
            )
    return Text("\n".join(lines))


def _built_for(warning: str) -> str:
    """xformers' multi-sentence "can't load C++/CUDA extensions" warning, cut to what it was built for."""
    match = re.search(r"built for:\s*(PyTorch .*?\))\s*(Python .*?\))?", warning)
    if not match:
        return warning
    return "built for " + "; ".join(part for part in match.groups() if part)


def _gib(value: int | None) -> str:
    return "?" if value is None else f"{value / GIB:.1f} GiB"
