"""A profile as the Plan the emitters render.

A profile (profile.py) keeps the settings, the GPUs and the model it was computed for, and the reasons;
it does not keep the model's shape (layers, heads...) or the memory table, so those fields stay zero/empty
here and `emit --format json` leaves out the full plan for a profile source. Only the GPUs the plan put
something on are carried over; the count of all GPUs the machine had is returned beside it, because it
decides whether the other tools need device pinning.
"""

from __future__ import annotations

from exlx_autocfg.planner.types import ModelSummary, Plan, PlanGPU
from exlx_autocfg.profile.format import Profile


def plan_from_profile(profile: Profile) -> tuple[Plan, int]:
    """(the Plan the profile records, how many GPUs the machine had when it was made)."""
    s, cf = profile.settings, profile.computed_for
    model = ModelSummary(
        name=cf.model.name, path=cf.model.dir, architecture=cf.model.architecture, layers=0, hidden_size=0,
        attention_heads=0, kv_heads=0, head_dim=0, vocab_size=0, max_position_embeddings=0,
        fingerprint=cf.model.fingerprint, source="directory" if cf.model.dir else "catalog",
    )
    gpus = [
        PlanGPU(index=g.index, name=g.name, compute_capability=g.compute_capability,
                memory_total=g.memory_total, memory_free=None, uuid=g.uuid, pci_bus_id=g.pci_bus_id,
                cuda_index=g.cuda_index, vendor=g.vendor)
        for g in cf.gpus if g.used
    ]
    plan = Plan(
        model=model,
        gpus=gpus,
        backend=s.backend,
        cache_mode=s.cache_mode,
        max_seq_len=s.max_seq_len,
        chunk_size=s.max_input_len,
        max_attention_size=s.max_attention_size,
        max_batch_size=s.max_batch_size,
        paged=s.paged,
        no_flash_attn=s.no_flash_attn,
        no_xformers=s.no_xformers,
        no_sdpa=s.no_sdpa,
        gpu_split=list(s.gpu_split) if s.gpu_split is not None else None,
        autosplit=s.autosplit,
        autosplit_reserve_bytes=list(s.reserve_bytes),
        reasons=list(profile.reasons),
        warnings=list(profile.warnings),
        request=dict(profile.request),
        computed_for={"what_if": cf.what_if},
        tool_version=profile.tool_version,
    )
    return plan, len(cf.gpus)
