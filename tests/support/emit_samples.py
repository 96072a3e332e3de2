"""Plans for the emitter tests, shaped as `planner.plan` returns them: a pre-Ampere card, an Ampere card,
a mixed split where CUDA order differs from PCI order, and an autosplit over two cards.

GPU values are those of the fake NVML scenarios (tests/support/nvml_scenarios.py) and the GPU table.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from exlx_autocfg.findings import Finding
from exlx_autocfg.planner.types import ModelSummary, Plan, PlanGPU, Reason
from exlx_autocfg.settings import Settings

MIB = 1024**2


def gpu(name: str, cc: str, total_mib: int, index: int = 0, cuda_index: int | None = 0, **kw: Any) -> PlanGPU:
    return PlanGPU(index=index, name=name, compute_capability=cc, memory_total=total_mib * MIB,
                   memory_free=(total_mib - 300) * MIB, uuid=f"GPU-{index:08d}-emit-{cc.replace('.', '')}",
                   pci_bus_id=f"00000000:{index + 1:02x}:00.0", cuda_index=cuda_index, **kw)


RTX_2080TI_22G = gpu("NVIDIA GeForce RTX 2080 Ti (22 GB mod)", "7.5", 22528)
RTX_3090 = gpu("NVIDIA GeForce RTX 3090", "8.6", 24576)
RTX_4090 = gpu("NVIDIA GeForce RTX 4090", "8.9", 24564)
TESLA_P40 = gpu("Tesla P40", "6.1", 24576)


def model(path: str | None = "/srv/models/Llama-3.1-8B-Instruct-exl2-4.0bpw") -> ModelSummary:
    name = path.rsplit("/", 1)[-1] if path else "llama3.1-8b"
    return ModelSummary(name=name, path=path, architecture="LlamaForCausalLM", layers=32, hidden_size=4096,
                        attention_heads=32, kv_heads=8, head_dim=128, vocab_size=128256,
                        max_position_embeddings=131072, bits_per_weight=4.0, fingerprint="cd" * 32)


def switches(backend: str) -> dict[str, bool]:
    order = ["flash_attn", "xformers", "sdpa", "matmul"]
    ahead = order[: order.index(backend)]
    return {f"no_{name}": name in ahead for name in ("flash_attn", "xformers", "sdpa")}


SETTINGS_FIELDS = {f.name for f in dataclasses.fields(Settings)}


def plan(backend: str = "sdpa", cache_mode: str = "Q6", max_seq_len: int = 16384, *,
         gpus: list[PlanGPU] | None = None, **kw: Any) -> Plan:
    """A Plan; keyword arguments are Settings fields (the switches follow `backend` unless given) or Plan
    fields."""
    settings_kw = {k: kw.pop(k) for k in list(kw) if k in SETTINGS_FIELDS}
    defaults = {"max_input_len": 2048, "max_attention_size": 2048**2, **switches(backend)}
    settings = Settings(backend=backend, cache_mode=cache_mode, max_seq_len=max_seq_len,
                        **{**defaults, **settings_kw})
    base = dict(
        model=model(),
        gpus=list(gpus) if gpus is not None else [RTX_2080TI_22G],
        settings=settings,
        reasons=[
            Reason("backend", backend, "backend.highest_valid",
                   "flash-attn needs compute capability 8.0; the 2080 Ti has 7.5",
                   rejected={"flash_attn": [Finding("backend.flash_attn.compute_capability",
                                                    "compute capability 7.5 < 8.0")]}),
            Reason("cache_mode", cache_mode, "cache.target_reached",
                   f"the most precise mode that reaches {max_seq_len} tokens"),
        ],
        tool_version="0.1.0",
    )
    base.update(kw)
    return Plan(**base)


def turing_plan(**kw: Any) -> Plan:
    """RTX 2080 Ti 22GB: no flash-attn (sm 7.5), xformers off, SDPA, unpaged."""
    return plan(**kw)


def ampere_plan(**kw: Any) -> Plan:
    """RTX 3090 with flash-attn 2.6: paged, batched, FP16 cache."""
    base = dict(backend="flash_attn", cache_mode="FP16", max_seq_len=32768, gpus=[RTX_3090], paged=True,
                max_batch_size=8,
                reasons=[Reason("backend", "flash_attn", "backend.highest_valid",
                                "flash-attn 2.6.3 works on sm 8.6 and is fastest"),
                         Reason("cache_mode", "FP16", "cache.target_reached",
                                "FP16 reaches the requested 32768 tokens")])
    base.update(kw)
    return plan(**base)


def mixed_split_plan(**kw: Any) -> Plan:
    """3090 + P40: NVML (PCI) puts the P40 first, CUDA (fastest first) the 3090; split in CUDA order."""
    gpus = [dataclasses.replace(TESLA_P40, index=0, cuda_index=1),
            dataclasses.replace(RTX_3090, index=1, cuda_index=0, uuid="GPU-00000001-emit-86")]
    base = dict(backend="sdpa", cache_mode="Q8", max_seq_len=32768, gpus=gpus, gpu_split=[21.5, 7.25])
    base.update(kw)
    return plan(**base)


def autosplit_plan(**kw: Any) -> Plan:
    gpus = [dataclasses.replace(RTX_3090, index=0, cuda_index=0),
            dataclasses.replace(RTX_4090, index=1, cuda_index=1)]
    base = dict(backend="flash_attn", cache_mode="Q4", max_seq_len=65536, gpus=gpus, autosplit=True,
                reserve_bytes=[192 * MIB + 1, 64 * MIB], paged=True)
    base.update(kw)
    return plan(**base)
