"""The Plan: the settings the planner decides, with their context (GPUs, model, memory) and the reasons.

`exlx_autocfg.planner.core.plan(facts, model, **request) -> Plan` produces it (pure). The profile stores
its `settings` record, the loader applies them, the emitters render them. `Plan.to_dict()` is the
`plan --json` document (schema documented in docs/plan-json.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from exlx_autocfg.findings import Finding, messages
from exlx_autocfg.model.spec import ModelSummary
from exlx_autocfg.serde import from_data, to_data
from exlx_autocfg.settings import Settings

PLAN_SCHEMA = 2


def in_cuda_order(gpus: list[Any]) -> list[Any]:
    """GPUs (PlanGPU or GPUStamp) in CUDA order, the order of gpu_split, when every CUDA index is known;
    else as given."""
    if gpus and all(g.cuda_index is not None for g in gpus):
        return sorted(gpus, key=lambda g: g.cuda_index)
    return list(gpus)


@dataclass
class Reason:
    """One decision: what was chosen, why (coded), and why each alternative was not."""

    decision: str  # "backend", "cache_mode", "max_seq_len", "chunk_size", "gpu_split", ...
    choice: str
    code: str  # exlx_autocfg.findings.CODES
    why: str
    evidence: dict[str, Any] = field(default_factory=dict)
    rejected: dict[str, list[Finding]] = field(default_factory=dict)  # alternative -> why not

    def rejected_text(self, alternative: str) -> str:
        return messages(self.rejected.get(alternative, []))


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
    vision_weights_bytes: int = 0  # the vision tower's and projector's weights here (in weights_bytes)


@dataclass
class Plan:
    model: ModelSummary
    gpus: list[PlanGPU]  # the GPUs in use, in CUDA order (the order of settings.gpu_split)
    settings: Settings
    kv_cache_bytes_per_token: dict[str, int] = field(default_factory=dict)  # per cache mode
    max_seq_len_by_cache_mode: dict[str, int] = field(default_factory=dict)  # 0 = does not fit
    memory: list[DeviceMemory] = field(default_factory=list)
    reasons: list[Reason] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    request: dict[str, Any] = field(default_factory=dict)  # the options the user gave
    # What loads beside the model (docs/plan-json.md): the draft's figures and placement, the
    # tensor-parallel split, the adapters. None / empty when not asked for.
    draft: dict[str, Any] | None = None
    tensor_parallel: dict[str, Any] | None = None
    loras: list[dict[str, Any]] = field(default_factory=list)
    vision: dict[str, Any] | None = None  # the vision tower's figures (plan --vision)
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
