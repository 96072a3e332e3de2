"""Build the Plan from decisions that already carry their reasons: the settings record, the memory table per
GPU, the per-mode figures, the GPU split and the plan-level warnings."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from exlx_autocfg import __version__, exl2
from exlx_autocfg.facts.types import GPU, Facts
from exlx_autocfg.facts.what_if import what_if_gpu_order
from exlx_autocfg.findings import Finding, finding
from exlx_autocfg.planner import decisions, memory
from exlx_autocfg.planner.core import Solved, overheads_of
from exlx_autocfg.planner.fit import categories
from exlx_autocfg.planner.request import Request
from exlx_autocfg.planner.rope import rope_advice, rope_alpha
from exlx_autocfg.planner.split import set_device_map_allocation
from exlx_autocfg.planner.types import DeviceMemory, Plan, PlanGPU, Reason
from exlx_autocfg.settings import Settings
from exlx_autocfg.versions import cc_of

MIB = 1024**2


def memory_rows(gpus: list[GPU], solved: Solved) -> list[DeviceMemory]:
    rows = []
    for gpu, dev in zip(gpus, solved.devices, strict=True):
        parts = dev.parts(solved.costs)
        column = categories(parts)  # what loads beside the model counts in its column (weights, cache...)
        rows.append(
            DeviceMemory(
                gpu_index=gpu.index,
                budget_bytes=dev.budget,
                weights_bytes=column["weights"],
                cache_bytes=column["cache"],
                scratch_bytes=column["scratch"],
                reserve_bytes=column["reserve"],
                total_bytes=dev.total(solved.costs),
                layers=dev.layers,
                parts=parts,
                vision_weights_bytes=parts.get("vision_weights", 0),
            )
        )
    return rows


def plan_warnings(
    facts: Facts, spec: Any, gpus: list[GPU], unused: list[GPU], req: Request, rows: list[DeviceMemory],
    solved: Solved,
) -> list[Finding]:
    out = []
    if solved.max_seq_len < solved.target and (req.context is not None or req.cache):
        out.append(
            finding(
                "context.target_not_reached",
                f"the target context {solved.target} does not fit with {solved.mode} cache; planned "
                f"{solved.max_seq_len}",
                target=solved.target,
                planned=solved.max_seq_len,
                cache_mode=solved.mode,
            )
        )
    trained = spec.max_position_embeddings
    defaulted = bool(getattr(spec, "max_seq_len_defaulted", False))
    if req.context is not None and solved.max_seq_len > trained and not defaulted:
        out.append(finding(
            "context.beyond_trained",
            f"--context {req.context} is beyond the model's trained context {trained} "
            f"(max_position_embeddings); planned {solved.max_seq_len} tokens as asked, but "
            f"{rope_advice(trained, solved.max_seq_len)}",
            context=req.context, trained=trained, planned=solved.max_seq_len,
            rope_alpha=round(rope_alpha(trained, solved.max_seq_len), 2),
        ))
    if defaulted and req.context is None:
        out.append(finding(
            "model.context_defaulted",
            f"{spec.name}: config.json names no context length, so exllamav2 0.3.2 loads it with max_seq_len "
            f"{trained}, its default, and this plan keeps that; pass --context N for the length the model "
            "was trained for (Gemma 3 4B-27B: 131072)",
            default=trained,
        ))
    elif defaulted:
        out.append(finding(
            "model.context_defaulted",
            f"{spec.name}: config.json names no context length (exllamav2 0.3.2 would default to {trained}); "
            f"planned --context {req.context} as asked, with no RoPE scaling advised: the trained length is "
            "not in the files (Gemma 3 4B-27B reach 131072 with the rope_scaling config.json carries)",
            default=trained, context=req.context,
        ))
    out += _vision_warnings(spec, req, solved)
    out += solved.selection.warnings
    if facts.what_if:
        libs = ", ".join(f"{n} {lib.version}" for n, lib in sorted(facts.libraries.items()) if lib.installed)
        out.append(
            finding(
                "plan.what_if",
                f"what-if plan (facts from the GPU table and assumed versions: {libs or 'none'})",
            )
        )
        order = what_if_gpu_order(facts.gpu.gpus) if facts.gpu.source == "table" else None
        if order is not None:
            out.append(order)
    # Judged on every GPU of the machine, not only those in use: a P40 left idle still needs EXL2.
    exl3_floor = exl2.backend_rules()["exl3"]["min_cc"]
    machine = [*gpus, *unused]
    if all(g.vendor == "nvidia" and g.cc is not None and g.cc >= cc_of(exl3_floor) for g in machine):
        out.append(
            finding(
                "plan.exl3_available",
                f"every GPU has compute capability >= {exl3_floor}: ExLlamaV3 (EXL3) runs here, is "
                "maintained and quantizes more accurately; EXL2/exllamav2 is archived",
                min_cc=exl3_floor,
            )
        )
    if req.budget == "total":
        for g, row in zip(gpus, rows, strict=True):
            busy = g.memory_free is not None and g.memory_total - g.memory_free > 512 * MIB
            if busy and g.memory_free is not None and row.total_bytes > g.memory_free:
                out.append(
                    finding(
                        "gpu.busy",
                        f"{g.name} #{g.index} has only {g.memory_free / MIB:,.0f} MiB free now (other "
                        "processes); the plan needs more: pass --budget free",
                        gpu=g.index,
                        free=g.memory_free,
                        needed=row.total_bytes,
                    )
                )
    out += [
        finding(
            "gpu.mig",
            f"{g.name} #{g.index} is in MIG mode: budget from the GPU table may exceed the instance",
            gpu=g.index,
        )
        for g in gpus
        if g.mig_mode
    ]
    return out


def _vision_warnings(spec: Any, req: Request, solved: Solved) -> list[Finding]:
    """A tower the plan leaves out, or one whose attention the chosen backend runs wrongly."""
    from exlx_autocfg.planner import vision as vis

    v = getattr(spec, "vision", None)
    if v is None or spec.rules.vision is None or not vis.vision_tensors_present(spec):
        return []
    backend = solved.selection.backend
    if not req.vision:
        costs = vis.vision_costs(spec, backend=backend, max_seq_len=solved.max_seq_len)
        return [finding(
            "vision.not_planned",
            f"{spec.name} has a {v.model_type} vision tower this plan leaves out (text only); loading it "
            f"takes {costs.weights_bytes / MIB:,.0f} MiB on the first GPU and "
            f"{costs.image_transient_bytes / MIB:,.0f} MiB while embedding an image with {backend}: plan "
            "--vision to include it",
            model_type=v.model_type, weights_bytes=costs.weights_bytes,
            image_transient_bytes=costs.image_transient_bytes,
        )]
    if backend == "xformers" and v.window_size:
        return [finding(
            "vision.windows_ignored",
            f"the {v.model_type} tower attends in windows of {v.window_size} pixels on most layers; "
            "exllamav2 runs it through xformers' memory_efficient_attention, which applies no window "
            "(vision_tower.py), so image embeddings differ from the model's training: install flash-attn "
            "(Ampere or newer)",
            window_size=v.window_size,
        )]
    return []


def plan_gpus(gpus: list[GPU]) -> list[PlanGPU]:
    """The plan's record of the GPUs it was planned on, in the order given (CUDA order)."""
    return [
        PlanGPU(index=g.index, name=g.name, compute_capability=g.compute_capability,
                memory_total=g.memory_total, memory_free=g.memory_free, uuid=g.uuid, pci_bus_id=g.pci_bus_id,
                cuda_index=g.cuda_index, vendor=g.vendor)
        for g in gpus
    ]


def computed_for(facts: Facts, exllamav2: str, req: Request) -> dict[str, Any]:
    torch = facts.lib("torch")
    return {
        "exllamav2": exllamav2,
        "libraries": {
            n: {"version": lib.version, "local_tag": lib.local_tag}
            for n, lib in sorted(facts.libraries.items())
            if lib.installed
        },
        "what_if": facts.what_if,
        "torch_cuda": (torch.build or {}).get("cuda"),
        "overheads": asdict(overheads_of(req)),
    }


def assemble(
    facts: Facts,
    spec: Any,
    gpus: list[GPU],
    unused: list[GPU],
    exllamav2: str,
    req: Request,
    solved: Solved,
    warnings: list[Finding],
) -> Plan:
    sel = solved.selection
    weakest = min((g for g in gpus if g.cc), key=lambda g: g.cc, default=None)
    reasons: list[Reason] = []
    if unused:
        reasons.append(decisions.gpus_reason(gpus, unused))
    reasons += [
        decisions.backend_reason(sel, weakest, len(gpus)),
        decisions.switches_reason(sel),
        decisions.paged_reason(sel),
        *solved.reasons,
        decisions.budget_reason(solved.budget_kinds, req.margin_mib),
    ]
    rows = memory_rows(gpus, solved)
    gpu_split = None
    if len(gpus) > 1:
        gpu_split = set_device_map_allocation(
            spec, sel.backend, solved.devices, solved.max_seq_len, solved.chunk, req.batch_size
        )
        reasons.append(decisions.gpu_split_reason(gpu_split, gpus, [row.layers for row in rows]))
    settings = Settings(
        backend=sel.backend,
        cache_mode=solved.mode,
        max_seq_len=solved.max_seq_len,
        max_input_len=solved.chunk,
        max_attention_size=solved.chunk * solved.chunk,
        max_batch_size=req.batch_size,
        paged=sel.paged,
        gpu_split=gpu_split,
        **sel.switches,
    )
    all_warnings = [*warnings, *plan_warnings(facts, spec, gpus, unused, req, rows, solved)]
    unique = list({(w.code, w.message): w for w in all_warnings}.values())
    return Plan(
        model=spec.summary(),
        gpus=plan_gpus(gpus),
        settings=settings,
        kv_cache_bytes_per_token={m: memory.kv_cache_bytes_per_token(spec, m) for m in exl2.CACHE_MODES},
        max_seq_len_by_cache_mode=dict(solved.by_mode),
        memory=rows,
        reasons=reasons,
        warnings=unique,
        request=req.to_dict(),
        computed_for=computed_for(facts, exllamav2, req),
        tool_version=__version__,
    )
