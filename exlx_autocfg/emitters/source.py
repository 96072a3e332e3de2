"""What the emitters render: the settings record with the context a config file needs.

A fresh Plan and a profile both hold the settings record, the GPUs it is for (in CUDA order), the model's
name and directory, the reasons and the warnings; `EmitInput.from_plan` and `EmitInput.from_profile` take
those parts, nothing is reconstructed. Only a fresh plan has the full memory table (`plan`), which
`--format json` includes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from exlx_autocfg.findings import Finding
from exlx_autocfg.planner.types import Plan, Reason, in_cuda_order
from exlx_autocfg.settings import Settings

if TYPE_CHECKING:
    from exlx_autocfg.profile.format import Profile


class GpuRef(Protocol):
    """The GPU fields emitters read (PlanGPU of a plan, GPUStamp of a profile)."""

    index: int
    name: str
    vendor: str
    compute_capability: str | None
    memory_total: int
    cuda_index: int | None
    uuid: str | None


@dataclass
class EmitInput:
    settings: Settings
    gpus: list[GpuRef]  # the GPUs the settings use, in CUDA order
    model_name: str
    model_path: str | None  # None for catalog and Hub models
    model_source: str | None = None  # where a model with no local path comes from ("hf:org/repo@rev, ...")
    reasons: list[Reason] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    tool_version: str = ""
    machine_gpu_count: int | None = None  # all GPUs of the machine (decides device pinning)
    plan: Plan | None = None  # the whole plan, when rendering a fresh one

    @classmethod
    def from_plan(cls, plan: Plan, machine_gpu_count: int | None = None) -> EmitInput:
        return cls(
            settings=plan.settings,
            gpus=in_cuda_order(plan.gpus),
            model_name=plan.model.name,
            model_path=plan.model.path,
            model_source=_hub_label(plan.model.hub),
            reasons=list(plan.reasons),
            warnings=list(plan.warnings),
            tool_version=plan.tool_version,
            machine_gpu_count=machine_gpu_count,
            plan=plan,
        )

    @classmethod
    def from_profile(cls, profile: Profile) -> EmitInput:
        cf = profile.computed_for
        return cls(
            settings=profile.settings,
            gpus=cf.used_gpus(),
            model_name=cf.model.name,
            model_path=cf.model.dir,
            model_source=_stamp_label(cf.model),
            reasons=list(profile.reasons),
            warnings=list(profile.warnings),
            tool_version=profile.tool_version,
            machine_gpu_count=len(cf.gpus),
        )


def as_input(source: Any, machine_gpu_count: int | None = None) -> EmitInput:
    """An EmitInput from a Plan, a Profile or an EmitInput."""
    if isinstance(source, EmitInput):
        return source
    if isinstance(source, Plan):
        return EmitInput.from_plan(source, machine_gpu_count)
    from exlx_autocfg.profile.format import Profile

    if isinstance(source, Profile):
        return EmitInput.from_profile(source)
    raise TypeError(f"cannot emit a {type(source).__name__}: give a Plan, a Profile or an EmitInput")


def _hub_label(hub: Any) -> str | None:
    return f"{hub.reference}, commit {hub.commit[:12]}, not downloaded" if hub else None


def _stamp_label(model: Any) -> str | None:
    if not model.hf_repo or model.dir:
        return None
    return f"hf:{model.hf_repo}@{model.hf_revision}, commit {(model.hf_commit or '')[:12]}, not downloaded"
