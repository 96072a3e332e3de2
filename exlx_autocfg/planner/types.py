"""The Plan: every decision the planner makes, the arithmetic behind it and the reasons.

`exlx_autocfg.planner.core.plan(facts, model, **request) -> Plan` produces it (pure). Profiles store it,
`apply` realises it, `emit` renders it for other tools. `Plan.to_dict()` is the `plan --json` document
(schema documented in docs/plan-json.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from exlx_autocfg.model.spec import ModelSummary
from exlx_autocfg.serde import from_data, to_data

PLAN_SCHEMA = 1

Backend = Literal["flash_attn", "xformers", "sdpa", "matmul"]
CacheMode = Literal["FP16", "Q8", "Q6", "Q4"]
BACKENDS: tuple[str, ...] = ("flash_attn", "xformers", "sdpa", "matmul")  # exllamav2's own precedence
CACHE_MODES: tuple[str, ...] = ("FP16", "Q8", "Q6", "Q4")  # most precise first


@dataclass
class Reason:
    """One decision, what was chosen, why, and why each alternative was not."""

    decision: str  # "backend", "cache_mode", "max_seq_len", "chunk_size", "gpu_split", ...
    choice: str
    why: str
    rejected: dict[str, str] = field(default_factory=dict)  # alternative -> why not


@dataclass
class PlanGPU:
    index: int  # NVML index
    name: str
    compute_capability: str | None
    memory_total: int
    memory_free: int | None
    uuid: str | None = None
    pci_bus_id: str | None = None
    cuda_index: int | None = None
    vendor: str = "nvidia"


@dataclass
class DeviceMemory:
    """Bytes planned on one GPU at the chosen max_seq_len; total_bytes <= budget_bytes."""

    gpu_index: int
    budget_bytes: int  # what the plan may use on this GPU (total or free, minus the safety margin)
    weights_bytes: int
    cache_bytes: int  # K/V (and scales) for the layers on this GPU, plus the quantized cache's FP16 staging
    scratch_bytes: int  # fixed module scratch, RoPE tables, attention transients for the backend
    reserve_bytes: int  # CUDA context, allocator slack, exllamav2's own reserves
    total_bytes: int
    layers: list[int] = field(default_factory=list)  # decoder layers placed on this GPU
    parts: dict[str, int] = field(default_factory=dict)  # finer breakdown, for the VRAM bar and bench


@dataclass
class Plan:
    model: ModelSummary
    gpus: list[PlanGPU]
    backend: str  # one of BACKENDS
    cache_mode: str  # one of CACHE_MODES
    max_seq_len: int
    chunk_size: int  # = exllamav2 max_input_len
    max_attention_size: int
    max_batch_size: int = 1
    paged: bool = False  # dynamic generator paged mode (needs flash-attn >= 2.5.7)
    no_flash_attn: bool = False
    no_xformers: bool = False
    no_sdpa: bool = False
    gpu_split: list[float] | None = None  # GB per GPU (exllamav2's unit), in CUDA order; None = one GPU
    autosplit: bool = False
    autosplit_reserve_bytes: list[int] = field(default_factory=list)
    kv_cache_bytes_per_token: dict[str, int] = field(default_factory=dict)  # per cache mode
    max_seq_len_by_cache_mode: dict[str, int] = field(default_factory=dict)  # 0 = does not fit
    memory: list[DeviceMemory] = field(default_factory=list)
    reasons: list[Reason] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    request: dict[str, Any] = field(default_factory=dict)  # the options the user gave
    computed_for: dict[str, Any] = field(default_factory=dict)  # library versions/tags, exllamav2, what_if
    tool_version: str = ""
    schema: int = PLAN_SCHEMA

    def reason(self, decision: str) -> Reason | None:
        return next((r for r in self.reasons if r.decision == decision), None)

    def to_dict(self) -> dict[str, Any]:
        return to_data(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return from_data(cls, data)
