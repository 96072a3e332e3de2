"""`exlx-autocfg plan MODEL`: plan backend, cache mode, context, chunk size and GPU split, and say why."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from exlx_autocfg.cli.app import app
from exlx_autocfg.cli.planopts import (
    DEFAULT_MARGIN_MIB,
    AssumeOpt,
    BackendOpt,
    BatchOpt,
    BpwOpt,
    BudgetOpt,
    CacheOpt,
    ChunkOpt,
    ContextOpt,
    DraftCacheOpt,
    DraftOpt,
    GpuOpt,
    LoraOpt,
    MarginOpt,
    MinCacheOpt,
    ModelArg,
    PythonOpt,
    TensorParallelOpt,
    VisionOpt,
    choice_from_options,
)


def _list_gpus(value: bool) -> None:
    if not value:
        return
    from exlx_autocfg.facts.what_if import gpu_table

    for row in gpu_table():
        arch = f"CC {row.cc}" if row.cc else row.gfx
        print(f"{row.id:18} {row.name:40} {row.memory_mib:>7} MiB  {arch:8} {row.architecture}")
    raise typer.Exit(0)


@app.command("plan")
def plan_command(
    model: ModelArg,
    gpu: GpuOpt = None,
    assume: AssumeOpt = None,
    context: ContextOpt = None,
    cache: CacheOpt = None,
    backend: BackendOpt = None,
    min_cache_precision: MinCacheOpt = None,
    budget: BudgetOpt = "total",
    margin_mib: MarginOpt = DEFAULT_MARGIN_MIB,
    batch_size: BatchOpt = 1,
    chunk_size: ChunkOpt = None,
    bpw: BpwOpt = None,
    python: PythonOpt = None,
    draft: DraftOpt = None,
    draft_cache: DraftCacheOpt = None,
    tensor_parallel: TensorParallelOpt = False,
    lora: LoraOpt = None,
    vision: VisionOpt = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the plan as one JSON document.")] = False,
    list_gpus: Annotated[
        bool,
        typer.Option(
            "--list-gpus", help="List the GPU table for --gpu and exit.", is_eager=True, callback=_list_gpus
        ),
    ] = False,
) -> None:
    """Plan the best ExLlamaV2 settings for MODEL on this machine (or a what-if machine), with reasons.
    For hf:ORG/REPO without a revision: the quant table of its EXL2 branches, then the best one's plan."""
    plan, hub_choice = choice_from_options(
        model,
        gpu=gpu,
        assume=assume,
        context=context,
        cache=cache,
        backend=backend,
        min_cache_precision=min_cache_precision,
        budget=budget,
        margin_mib=margin_mib,
        batch_size=batch_size,
        chunk_size=chunk_size,
        bpw=bpw,
        python=python,
        progress=False if json_out else None,
        draft=draft,
        draft_cache=draft_cache,
        tensor_parallel=tensor_parallel,
        loras=lora,
        vision=vision,
    )
    if json_out:
        doc = plan.to_dict() | (hub_choice.json_extra() if hub_choice else {})
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    from rich.console import Console

    from exlx_autocfg.cli.plan_view import print_plan

    console = Console(width=max(Console().width, 120))
    if hub_choice is not None or plan.model.hub is not None:
        from exlx_autocfg.cli.hub_view import quant_table, source_line

        if hub_choice is not None:
            console.print(quant_table(hub_choice, plan))
        if plan.model.hub is not None:
            console.print(source_line(plan.model.hub))
    print_plan(plan, console)
