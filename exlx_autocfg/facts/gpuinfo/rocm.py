"""AMD GPUs: the amdsmi Python bindings when importable, else the JSON output of `rocm-smi` or `amd-smi`.

None of them gives a CUDA-style compute capability; `architecture` carries the gfx target ("gfx1100"),
which is what ROCm builds of torch and flash-attn key on.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from typing import Any

from exlx_autocfg.facts.types import GPU, GPUReport

MIB = 1024 * 1024
TOOL_TIMEOUT_S = 10.0


def read_rocm() -> GPUReport:
    """AMD GPUs from the first reader that works; each reader's failure is a problem line."""
    problems: list[str] = []
    for reader in (read_amdsmi, read_rocm_smi, read_amd_smi):
        report = reader()
        if report.gpus:
            report.problems[:0] = [p for p in problems if p not in report.problems]
            return report
        problems.extend(report.problems)
    return GPUReport(source=None, problems=problems)


# -- amdsmi (Python bindings shipped with ROCm >= 6) ----------------------------------------------------


def read_amdsmi() -> GPUReport:
    report = GPUReport(source="amdsmi")
    try:
        import amdsmi  # type: ignore[import-not-found]
    except ImportError:
        return report  # not installed: nothing to say, the next reader tries
    except Exception as exc:  # the bindings load librocm_smi/libamd_smi at import
        report.problems.append(f"amdsmi failed to load: {type(exc).__name__}: {exc}")
        return report
    try:
        amdsmi.amdsmi_init()
    except Exception as exc:
        report.problems.append(f"amdsmi failed to initialise: {type(exc).__name__}: {exc}")
        return report
    try:
        for index, handle in enumerate(amdsmi.amdsmi_get_processor_handles()):
            report.gpus.append(_amdsmi_gpu(amdsmi, index, handle, report))
    except Exception as exc:
        report.problems.append(f"amdsmi query failed: {type(exc).__name__}: {exc}")
    finally:
        with contextlib.suppress(Exception):
            amdsmi.amdsmi_shut_down()
    return report


def _amdsmi_gpu(amdsmi: Any, index: int, handle: Any, report: GPUReport) -> GPU:
    def query(what: str, name: str) -> Any:
        try:
            return getattr(amdsmi, name)(handle)
        except Exception as exc:
            report.problems.append(f"AMD GPU {index}: amdsmi {what} failed: {type(exc).__name__}: {exc}")
            return None

    asic = query("ASIC info", "amdsmi_get_gpu_asic_info") or {}
    vram = query("VRAM usage", "amdsmi_get_gpu_vram_usage") or {}
    driver = query("driver info", "amdsmi_get_gpu_driver_info") or {}
    if driver.get("driver_version") and not report.driver_version:
        report.driver_version = str(driver["driver_version"])
    total = _int(vram.get("vram_total"))
    used = _int(vram.get("vram_used"))
    return GPU(
        index=index,
        name=str(asic.get("market_name") or f"AMD GPU {index}"),
        vendor="amd",
        memory_total=(total or 0) * MIB,  # amdsmi reports MB
        memory_used=used * MIB if used is not None else None,
        memory_free=(total - used) * MIB if total is not None and used is not None else None,
        architecture=_gfx(asic.get("target_graphics_version")),
        uuid=_str(query("UUID", "amdsmi_get_gpu_device_uuid")),
        pci_bus_id=_str(query("PCI bus id", "amdsmi_get_gpu_device_bdf")),
        source="amdsmi",
    )


# -- rocm-smi --json ------------------------------------------------------------------------------------

ROCM_SMI_ARGS = ["--showproductname", "--showmeminfo", "vram", "--showbus", "--showuniqueid",
                 "--showdriverversion", "--json"]


def read_rocm_smi() -> GPUReport:
    report = GPUReport(source="rocm-smi")
    data = _run_json("rocm-smi", ROCM_SMI_ARGS, report)
    if not isinstance(data, dict):
        return report
    return parse_rocm_smi(data, report)


def parse_rocm_smi(data: dict[str, Any], report: GPUReport | None = None) -> GPUReport:
    """`rocm-smi ... --json`: {"card0": {"Card Series": ..., "VRAM Total Memory (B)": "...", ...},
    "system": {"Driver version": ...}}. Key spelling varies between ROCm releases: matched case-blind."""
    report = report or GPUReport(source="rocm-smi")
    cards = sorted(
        ((k, v) for k, v in data.items() if k.lower().startswith("card") and isinstance(v, dict)),
        key=lambda kv: _int(kv[0][4:]) or 0,
    )
    system = {k.lower(): v for k, v in (data.get("system") or {}).items()}
    if system.get("driver version"):
        report.driver_version = str(system["driver version"])
    for key, fields in cards:
        f = {k.lower(): v for k, v in fields.items()}
        index = _int(key[4:])
        total = _int(f.get("vram total memory (b)"))
        used = _int(f.get("vram total used memory (b)"))
        name = f.get("card series") or f.get("card sku") or f.get("card model") or f"AMD GPU {index}"
        report.gpus.append(
            GPU(
                index=index if index is not None else len(report.gpus),
                name=str(name),
                vendor="amd",
                memory_total=total or 0,
                memory_used=used,
                memory_free=total - used if total is not None and used is not None else None,
                architecture=_gfx(f.get("gfx version")),
                uuid=_str(f.get("unique id")),
                pci_bus_id=_str(f.get("pci bus")),
                source="rocm-smi",
            )
        )
        if total is None:
            report.problems.append(f"AMD GPU {index}: rocm-smi did not report VRAM size; treated as 0 bytes")
    return report


# -- amd-smi --json (ROCm >= 6.1 CLI) -------------------------------------------------------------------


def read_amd_smi() -> GPUReport:
    report = GPUReport(source="amd-smi")
    static = _run_json("amd-smi", ["static", "--asic", "--bus", "--vram", "--json"], report)
    if static is None:
        return report
    usage = _run_json("amd-smi", ["metric", "--mem-usage", "--json"], report)
    return parse_amd_smi(static, usage, report)


def parse_amd_smi(static: Any, usage: Any, report: GPUReport | None = None) -> GPUReport:
    """`amd-smi static --json` (a list of {"gpu": i, "asic": {...}, "bus": {...}, "vram": {...}}) and
    `amd-smi metric --mem-usage --json` ({"gpu": i, "mem_usage": {"total_vram": {"value", "unit"}, ...}})."""
    report = report or GPUReport(source="amd-smi")
    static_rows = static if isinstance(static, list) else (static or {}).get("gpu_data", [static])
    usage_rows = usage if isinstance(usage, list) else (usage or {}).get("gpu_data", [usage] if usage else [])
    used_by_gpu = {}
    for row in usage_rows:
        if isinstance(row, dict) and isinstance(row.get("mem_usage"), dict):
            mem = row["mem_usage"]
            used_by_gpu[row.get("gpu")] = (_bytes(mem.get("total_vram")), _bytes(mem.get("used_vram")))
    for position, row in enumerate(r for r in static_rows if isinstance(r, dict)):
        index = _int(row.get("gpu"))
        index = position if index is None else index
        asic = row.get("asic") or {}
        total, used = used_by_gpu.get(row.get("gpu"), (None, None))
        total = total or _bytes((row.get("vram") or {}).get("size"))
        report.gpus.append(
            GPU(
                index=index,
                name=str(asic.get("market_name") or f"AMD GPU {index}"),
                vendor="amd",
                memory_total=total or 0,
                memory_used=used,
                memory_free=total - used if total is not None and used is not None else None,
                architecture=_gfx(asic.get("target_graphics_version")),
                pci_bus_id=_str((row.get("bus") or {}).get("bdf")),
                source="amd-smi",
            )
        )
    return report


# -- helpers --------------------------------------------------------------------------------------------


def _run_json(tool: str, args: list[str], report: GPUReport) -> Any:
    exe = shutil.which(tool)
    if exe is None:
        return None  # tool not installed: not a problem on a machine without ROCm
    try:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        report.problems.append(f"{tool} did not answer within {TOOL_TIMEOUT_S:g}s")
        return None
    except OSError as exc:
        report.problems.append(f"{tool} could not run: {exc}")
        return None
    text = proc.stdout.strip()
    start = min((i for i in (text.find("{"), text.find("[")) if i >= 0), default=-1)
    try:
        if start < 0:
            raise ValueError("no JSON in its output")
        return json.loads(text[start:])  # some releases print a banner line before the JSON
    except ValueError as exc:
        detail = (proc.stderr.strip().splitlines() or [str(exc)])[-1]
        report.problems.append(f"{tool} gave no usable JSON (exit {proc.returncode}): {detail}")
        return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip().split()[0], 0) if value is not None and str(value).strip() else None
    except (ValueError, IndexError):
        return None


def _bytes(value: Any) -> int | None:
    """amd-smi sizes: {"value": 24560, "unit": "MB"} or "24560 MB"."""
    if isinstance(value, dict):
        number, unit = value.get("value"), str(value.get("unit", "MB"))
    elif isinstance(value, str) and value.strip():
        parts = value.split()
        number, unit = parts[0], parts[1] if len(parts) > 1 else "MB"
    else:
        return None
    n = _int(number)
    if n is None:
        return None
    scale = {"B": 1, "KB": 1024, "MB": MIB, "MIB": MIB, "GB": 1024 * MIB, "GIB": 1024 * MIB}
    return n * scale.get(unit.upper(), MIB)


def _gfx(value: Any) -> str | None:
    text = _str(value)
    return text.lower() if text else None


def _str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text if text and text.upper() not in ("N/A", "NA") else None
