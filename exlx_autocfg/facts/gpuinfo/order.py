"""Map NVML's GPU numbering (PCI bus order) to the one CUDA/torch will use in the model's process.

CUDA numbers devices FASTEST_FIRST unless CUDA_DEVICE_ORDER=PCI_BUS_ID, then keeps only the devices named
in CUDA_VISIBLE_DEVICES (indices into that order, or GPU-/MIG- UUIDs), renumbered from 0. A per-GPU
setting (gpu_split) is written in CUDA's numbering, so every GPU gets a `cuda_index` here.

When the probe's torch saw the devices with their UUID or PCI bus id, the mapping is exact. Otherwise
FASTEST_FIRST is predicted the way the CUDA driver behaves in practice: higher compute capability first,
PCI order among equals (identical GPUs keep PCI order).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exlx_autocfg.facts.types import GPU, DeviceOrder, GPUReport


def _norm_uuid(value: str | None) -> str | None:
    if not value:
        return None
    text = value.strip().lower()
    return text[4:] if text.startswith("gpu-") else text


def _norm_bus(value: str | None) -> str | None:
    """'00000000:01:00.0' and '0000:01:00.0' compare equal."""
    if not value:
        return None
    domain, _, rest = value.strip().lower().partition(":")
    try:
        return f"{int(domain, 16):08x}:{rest}"
    except ValueError:
        return value.strip().lower()


def _cc_key(gpu: GPU) -> tuple[int, int]:
    return gpu.cc or (0, 0)


def predicted_enumeration(gpus: list[GPU], order: str | None) -> list[GPU]:
    """CUDA's enumeration before CUDA_VISIBLE_DEVICES: PCI order, or the FASTEST_FIRST prediction."""
    by_pci = sorted(gpus, key=lambda g: (_norm_bus(g.pci_bus_id) or "", g.index))
    if (order or "").upper() == "PCI_BUS_ID":
        return by_pci
    return sorted(by_pci, key=_cc_key, reverse=True)  # stable: PCI order among equals


def apply_visible(enumeration: list[GPU], visible: str | None) -> tuple[list[GPU], str | None]:
    """The GPUs left by CUDA_VISIBLE_DEVICES, in their new order, and a note when an entry is invalid.
    Like the CUDA runtime, parsing stops at the first entry that names no device."""
    if visible is None:
        return list(enumeration), None
    out: list[GPU] = []
    for raw in visible.split(","):
        entry = raw.strip()
        if not entry:
            break
        found: GPU | None = None
        if entry.lstrip("-").isdigit():
            position = int(entry)
            found = enumeration[position] if 0 <= position < len(enumeration) else None
        elif entry.lower().startswith(("gpu-", "mig-")):
            wanted = (_norm_uuid(entry) or "").removeprefix("mig-")
            matches = [g for g in enumeration if (_norm_uuid(g.uuid) or "").startswith(wanted)]
            found = matches[0] if len(matches) == 1 else None
        if found is None:
            return out, f"CUDA_VISIBLE_DEVICES entry {entry!r} names no GPU: CUDA ignores it and all after it"
        if found not in out:
            out.append(found)
    return out, None


def _match_torch(gpus: list[GPU], torch_devices: list[Mapping[str, Any]]) -> dict[int, int] | None:
    """NVML index -> torch index from the UUIDs or PCI bus ids torch reported; None if they do not say."""
    mapping: dict[int, int] = {}
    for dev in torch_devices:
        uuid, bus = _norm_uuid(dev.get("uuid")), _norm_bus(dev.get("pci_bus_id"))
        for gpu in gpus:
            if (uuid and uuid == _norm_uuid(gpu.uuid)) or (bus and bus == _norm_bus(gpu.pci_bus_id)):
                mapping[gpu.index] = int(dev["index"])
                break
        else:
            return None
    return mapping if mapping else None


def device_order(
    report: GPUReport, env: Mapping[str, str], torch_devices: list[Mapping[str, Any]] | None = None
) -> DeviceOrder:
    """Set `cuda_index` on each GPU of `report` (None when CUDA will not see it) and describe the mapping."""
    order = DeviceOrder(
        cuda_device_order=env.get("CUDA_DEVICE_ORDER"),
        cuda_visible_devices=env.get("CUDA_VISIBLE_DEVICES"),
        hip_visible_devices=env.get("HIP_VISIBLE_DEVICES") or env.get("ROCR_VISIBLE_DEVICES"),
    )
    gpus = report.gpus
    if not gpus:
        return order
    notes: list[str] = []
    if all(g.vendor == "amd" for g in gpus):
        visible = order.hip_visible_devices or order.cuda_visible_devices
        kept, problem = apply_visible(sorted(gpus, key=lambda g: g.index), visible)
        for gpu in gpus:
            gpu.cuda_index = kept.index(gpu) if gpu in kept else None
        order.pci_order_matches_cuda = all(g.cuda_index in (None, g.index) for g in gpus)
        notes.append("ROCm: HIP is assumed to number GPUs as the SMI tool does")
        if problem:
            notes.append(problem)
        order.note = "; ".join(notes)
        return order

    mapping = _match_torch(gpus, torch_devices or [])
    if mapping is not None:
        for gpu in gpus:
            gpu.cuda_index = mapping.get(gpu.index)
        notes.append("exact: matched by UUID/PCI bus id with torch's devices")
    else:
        enumeration = predicted_enumeration(gpus, order.cuda_device_order)
        kept, problem = apply_visible(enumeration, order.cuda_visible_devices)
        for gpu in gpus:
            gpu.cuda_index = kept.index(gpu) if gpu in kept else None
        if problem:
            notes.append(problem)
        mixed = len({(g.name, g.compute_capability) for g in gpus}) > 1
        pci = (order.cuda_device_order or "").upper() == "PCI_BUS_ID"
        if pci:
            notes.append("CUDA_DEVICE_ORDER=PCI_BUS_ID: CUDA numbers GPUs as NVML does")
        elif mixed:
            notes.append("predicted: CUDA's FASTEST_FIRST order is not reported without CUDA")
        else:
            notes.append("identical GPUs: FASTEST_FIRST keeps PCI order")
        if torch_devices and len(torch_devices) == len(kept):
            names = [str(d.get("name")) for d in torch_devices]
            agree = names == [g.name for g in kept]
            notes.append("torch's device names " + ("agree" if agree else "DISAGREE with this order"))
    visible = [g for g in gpus if g.cuda_index is not None]
    order.pci_order_matches_cuda = all(g.cuda_index == g.index for g in visible)
    in_cuda_order = [g.index for g in sorted(visible, key=lambda g: g.cuda_index or 0)]
    if any(g.mig_mode for g in gpus):
        notes.append("MIG enabled: CUDA enumerates MIG instances, not whole GPUs")
    order.note = "; ".join(notes)
    if in_cuda_order != sorted(in_cuda_order):  # not just fewer GPUs: a different order
        listing = ", ".join(
            f"cuda{g.cuda_index} = {g.name} [nvml {g.index}]"
            for g in sorted(visible, key=lambda g: g.cuda_index or 0)
        )
        report.problems.append(
            f"CUDA numbers these GPUs differently from nvidia-smi ({listing}); per-GPU settings use CUDA's "
            "numbering. Set CUDA_DEVICE_ORDER=PCI_BUS_ID to make both agree"
        )
    return order


def fill_from_torch(report: GPUReport, torch_details: Mapping[str, Any]) -> bool:
    """When no SMI reader found GPUs, take torch's view (the probe's `devices`). True if it added any."""
    if report.gpus or not torch_details.get("devices"):
        return False
    hip = bool(torch_details.get("hip_version"))
    for dev in torch_details["devices"]:
        cc = str(dev.get("capability") or "") or None
        report.gpus.append(
            GPU(
                index=int(dev["index"]),
                name=str(dev.get("name") or f"GPU {dev['index']}"),
                vendor="amd" if hip else "nvidia",
                memory_total=int(dev.get("total_memory") or 0),
                compute_capability=None if hip else cc,  # on ROCm torch's "major.minor" is the gfx major
                architecture=dev.get("gcn_arch") if hip else None,
                uuid=dev.get("uuid"),
                pci_bus_id=dev.get("pci_bus_id"),
                cuda_index=int(dev["index"]),
                source="torch",
            )
        )
    report.source = "torch"
    report.problems.append("GPU list from torch (no SMI reader answered): free memory is unknown")
    return True
