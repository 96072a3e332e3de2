"""GPU facts: NVML through the real nvidia-ml-py over a fake libnvidia-ml (scenarios), ROCm tool output,
torch's view, and the NVML -> CUDA device-order mapping."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exlx_autocfg.facts.gpuinfo import device_order, fill_from_torch, read_gpu_report, read_nvml
from exlx_autocfg.facts.gpuinfo.order import apply_visible, predicted_enumeration
from exlx_autocfg.facts.gpuinfo.rocm import parse_amd_smi, parse_rocm_smi
from exlx_autocfg.facts.types import GPU, GPUReport
from tests.support.fake_pynvml import use_fake_nvml, with_memory

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("scenario", "name", "cc", "arch", "total_mib", "mig"),
    [
        ("2080ti-22gb", "NVIDIA GeForce RTX 2080 Ti", "7.5", "turing", 22528, None),
        ("p40", "Tesla P40", "6.1", "pascal", 24576, None),
        ("h100", "NVIDIA H100 80GB HBM3", "9.0", "hopper", 81559, False),
    ],
)
def test_single_gpu_scenarios(
    monkeypatch: pytest.MonkeyPatch,
    scenario: str,
    name: str,
    cc: str,
    arch: str,
    total_mib: int,
    mig: bool | None,
) -> None:
    use_fake_nvml(monkeypatch, scenario)
    report = read_nvml()
    assert report.problems == []
    (gpu,) = report.gpus
    assert (gpu.name, gpu.compute_capability, gpu.architecture, gpu.mig_mode) == (name, cc, arch, mig)
    assert gpu.memory_total == total_mib * MIB
    assert gpu.memory_free is not None and gpu.memory_used is not None
    assert gpu.memory_free + gpu.memory_used == gpu.memory_total
    assert isinstance(gpu.pci_bus_id, str) and gpu.pci_bus_id.endswith(":00.0")  # decoded from bytes
    assert gpu.uuid and gpu.uuid.startswith("GPU-")
    assert report.driver_version and report.cuda_driver_version in ("12.4", "12.8")


def test_less_vram_variant(monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_nvml(monkeypatch, with_memory("3090+p40", 1, used_mib=20000))
    p40, rtx3090 = read_nvml().gpus
    assert rtx3090.memory_free == (24576 - 20000) * MIB
    assert p40.memory_free == (24576 - 156) * MIB


def test_mixed_rig_cuda_order_differs_from_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_nvml(monkeypatch, "3090+p40")
    report = read_gpu_report()
    order = device_order(report, {})
    p40, rtx3090 = report.gpus
    assert (p40.index, rtx3090.index) == (0, 1)  # NVML: PCI bus order
    assert (rtx3090.cuda_index, p40.cuda_index) == (0, 1)  # CUDA FASTEST_FIRST: the 3090 first
    assert order.pci_order_matches_cuda is False
    assert any("CUDA_DEVICE_ORDER=PCI_BUS_ID" in p for p in report.problems)


def test_pci_bus_id_order_and_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_nvml(monkeypatch, "3090+p40")
    report = read_gpu_report()
    order = device_order(report, {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"})
    assert [g.cuda_index for g in report.gpus] == [0, 1] and order.pci_order_matches_cuda
    assert report.problems == []

    report = read_gpu_report()
    device_order(report, {"CUDA_VISIBLE_DEVICES": "1"})  # index 1 of FASTEST_FIRST = the P40
    assert [g.cuda_index for g in report.gpus] == [0, None]

    report = read_gpu_report()
    device_order(report, {"CUDA_VISIBLE_DEVICES": "GPU-3090aaaa"})  # UUID prefix, as CUDA accepts
    assert [g.cuda_index for g in report.gpus] == [None, 0]

    report = read_gpu_report()
    order = device_order(report, {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1,7,0"})
    assert [g.cuda_index for g in report.gpus] == [None, 0]  # parsing stops at the invalid "7"
    assert "'7' names no GPU" in (order.note or "")


def test_torch_uuids_make_the_mapping_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_nvml(monkeypatch, "3090+p40")
    report = read_gpu_report()
    # torch reports UUIDs without the GPU- prefix; here CUDA happened to keep PCI order.
    torch_devices = [
        {"index": 0, "name": "Tesla P40", "uuid": "0c1d2e3f-4a5b-6c7d-8e9f-a40000000001"},
        {"index": 1, "name": "NVIDIA GeForce RTX 3090", "uuid": "3090aaaa-bbbb-4ccc-8ddd-eeeeffff0002"},
    ]
    order = device_order(report, {}, torch_devices)
    assert [g.cuda_index for g in report.gpus] == [0, 1]
    assert order.pci_order_matches_cuda is True and "exact" in (order.note or "")


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ("no-library", "NVIDIA driver not found: NVML library libnvidia-ml.so.1 could not be loaded"),
        ("driver-mismatch", "NVIDIA driver/library version mismatch (NVML: RM has detected an NVML/RM"),
        ("driver-not-loaded", "NVIDIA kernel driver is not loaded (NVML: Driver Not Loaded)"),
        ("none", "NVIDIA driver loaded, but NVML reports no GPU"),
    ],
)
def test_nvml_errors_are_facts(monkeypatch: pytest.MonkeyPatch, scenario: str, expected: str) -> None:
    use_fake_nvml(monkeypatch, scenario)
    monkeypatch.setenv("PATH", "/nonexistent")  # no rocm-smi / amd-smi either
    report = read_gpu_report()
    assert report.gpus == []
    assert any(p.startswith(expected) for p in report.problems), report.problems


def test_a_lost_gpu_is_listed_with_a_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_nvml(monkeypatch, "gpu-lost")
    report = read_nvml()
    assert len(report.gpus) == 2 and report.gpus[1].memory_total == 0
    assert any("NVMLError_GpuIsLost: GPU is lost" in p for p in report.problems)


def test_mig_enabled_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake_nvml(monkeypatch, "h100-mig")
    report = read_gpu_report()
    order = device_order(report, {})
    assert report.gpus[0].mig_mode is True
    assert "MIG" in (order.note or "") and any("MIG mode is enabled" in p for p in report.problems)


def test_missing_pynvml_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    report = read_nvml()
    assert report.gpus == [] and "pynvml (nvidia-ml-py) is missing" in report.problems[0]


def test_rocm_smi_json() -> None:
    data = {
        "card0": {
            "Card Series": "Navi 31 [Radeon RX 7900 XTX]",
            "Card Model": "0x744c",
            "GFX Version": "gfx1100",
            "VRAM Total Memory (B)": "25753026560",
            "VRAM Total Used Memory (B)": "1073741824",
            "PCI Bus": "0000:03:00.0",
            "Unique ID": "0x8f1e2c3d4b5a6978",
        },
        "system": {"Driver version": "6.8.5"},
    }
    report = parse_rocm_smi(data)
    (gpu,) = report.gpus
    assert (gpu.vendor, gpu.architecture, gpu.compute_capability) == ("amd", "gfx1100", None)
    assert gpu.memory_total == 25753026560 and gpu.memory_free == 25753026560 - 1073741824
    assert report.driver_version == "6.8.5"


def test_amd_smi_json() -> None:
    static = [{"gpu": 0, "asic": {"market_name": "AMD Instinct MI300X", "target_graphics_version": "gfx942"},
               "bus": {"bdf": "0000:0c:00.0"}, "vram": {"size": {"value": 196592, "unit": "MB"}}}]
    usage = [{"gpu": 0, "mem_usage": {"total_vram": {"value": 196592, "unit": "MB"},
                                      "used_vram": {"value": 283, "unit": "MB"}}}]
    (gpu,) = parse_amd_smi(static, usage).gpus
    assert gpu.name == "AMD Instinct MI300X" and gpu.architecture == "gfx942"
    assert gpu.memory_total == 196592 * MIB and gpu.memory_used == 283 * MIB


def test_torch_view_fills_in_for_rocm() -> None:
    report = GPUReport(problems=["NVIDIA driver not found"])
    torch = {"hip_version": "6.2.41133", "devices": [
        {"index": 0, "name": "AMD Radeon RX 7900 XTX", "capability": "11.0", "total_memory": 25753026560,
         "gcn_arch": "gfx1100"}]}
    assert fill_from_torch(report, torch)
    (gpu,) = report.gpus
    assert gpu.source == "torch" and gpu.vendor == "amd" and gpu.compute_capability is None
    assert gpu.architecture == "gfx1100" and gpu.memory_free is None


def _gpu(i: int, cc: tuple[int, int], bus: int) -> GPU:
    return GPU(
        index=i, name=f"GPU cc{cc}", vendor="nvidia", memory_total=1, compute_capability=f"{cc[0]}.{cc[1]}",
        pci_bus_id=f"00000000:{bus:02X}:00.0", uuid=f"GPU-{i:08x}-0000-0000-0000-000000000000",
    )


@settings(max_examples=60, deadline=None)
@given(
    ccs=st.lists(st.sampled_from([(6, 1), (7, 5), (8, 6), (8, 9), (9, 0)]), min_size=1, max_size=6),
    pci=st.booleans(),
    data=st.data(),
)
def test_cuda_indices_are_a_renumbering(ccs: list[tuple[int, int]], pci: bool, data: st.DataObject) -> None:
    gpus = [_gpu(i, cc, bus=i + 1) for i, cc in enumerate(ccs)]
    visible_idx = data.draw(st.lists(st.integers(0, len(gpus) - 1), unique=True, max_size=len(gpus)))
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"} if pci else {}
    if data.draw(st.booleans()):
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, visible_idx))
    report = GPUReport(gpus=gpus)
    device_order(report, env)
    seen = sorted(g.cuda_index for g in gpus if g.cuda_index is not None)
    assert seen == list(range(len(seen)))  # CUDA renumbers from 0 without gaps
    enumeration = predicted_enumeration(gpus, env.get("CUDA_DEVICE_ORDER"))
    kept, _ = apply_visible(enumeration, env.get("CUDA_VISIBLE_DEVICES"))
    assert [g.index for g in sorted(kept, key=lambda g: g.cuda_index or 0)] == [g.index for g in kept]
    if pci and "CUDA_VISIBLE_DEVICES" not in env:
        assert all(g.cuda_index == g.index for g in gpus)
    if not pci:  # FASTEST_FIRST: never a slower GPU before a faster one
        ordered = [g.cc for g in sorted(kept, key=lambda g: g.cuda_index or 0)]
        if "CUDA_VISIBLE_DEVICES" not in env:
            assert ordered == sorted(ordered, reverse=True)


def test_amdsmi_bindings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The amdsmi Python bindings (ROCm >= 6), stood in at their documented API: dicts, VRAM in MB."""
    import types

    amdsmi = types.ModuleType("amdsmi")
    calls: list[str] = []
    amdsmi.amdsmi_init = lambda *a: calls.append("init")  # type: ignore[attr-defined]
    amdsmi.amdsmi_shut_down = lambda: calls.append("shut_down")  # type: ignore[attr-defined]
    amdsmi.amdsmi_get_processor_handles = lambda: ["h0"]  # type: ignore[attr-defined]
    amdsmi.amdsmi_get_gpu_asic_info = lambda h: {  # type: ignore[attr-defined]
        "market_name": "Radeon RX 7900 XTX", "target_graphics_version": "gfx1100", "device_id": "0x744c"}
    amdsmi.amdsmi_get_gpu_vram_usage = lambda h: {"vram_total": 24560, "vram_used": 512}  # type: ignore[attr-defined]
    amdsmi.amdsmi_get_gpu_device_bdf = lambda h: "0000:03:00.0"  # type: ignore[attr-defined]
    amdsmi.amdsmi_get_gpu_device_uuid = lambda h: "5fff744c-0000-1000-80ea-f9b3b1c7c1a3"  # type: ignore[attr-defined]

    def driver_info(h: str) -> dict[str, str]:
        raise RuntimeError("AMDSMI_STATUS_NOT_SUPPORTED")

    amdsmi.amdsmi_get_gpu_driver_info = driver_info  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "amdsmi", amdsmi)
    use_fake_nvml(monkeypatch, "no-library")
    report = read_gpu_report()
    (gpu,) = report.gpus
    assert report.source == "amdsmi" and calls == ["init", "shut_down"]
    assert (gpu.vendor, gpu.architecture, gpu.pci_bus_id) == ("amd", "gfx1100", "0000:03:00.0")
    assert gpu.memory_total == 24560 * MIB and gpu.memory_free == (24560 - 512) * MIB
    assert any("driver info failed" in p for p in report.problems)
    assert not any("NVIDIA driver not found" in p for p in report.problems)  # expected on an AMD box
    order = device_order(report, {"HIP_VISIBLE_DEVICES": "0"})
    assert gpu.cuda_index == 0 and "ROCm" in (order.note or "")
