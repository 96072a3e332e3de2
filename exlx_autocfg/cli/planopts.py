"""The plan options shared by `plan`, `profile` and `emit`, and one function that turns them into a Plan.

Use in a command:

    @app.command()
    def emit(model: ModelArg, gpu: GpuOpt = None, assume: AssumeOpt = None,
             context: ContextOpt = None, cache: CacheOpt = None, backend: BackendOpt = None,
             min_cache_precision: MinCacheOpt = None, budget: BudgetOpt = "total",
             margin_mib: MarginOpt = DEFAULT_MARGIN_MIB, batch_size: BatchOpt = 1,
             chunk_size: ChunkOpt = None, bpw: BpwOpt = None, python: PythonOpt = None, ...):
        plan = plan_from_options(model, gpu=gpu, assume=assume, context=context, cache=cache, ...)

`plan_from_options` is the stable entry point (keyword-only after MODEL); `facts_from_options` gives the
facts alone (for commands that record them, like `profile`). For `hf:ORG/REPO` without a revision it reads
every branch and plans the best quant (`choice_from_options` also returns the quant table).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from exlx_autocfg.errors import OptionError
from exlx_autocfg.facts.types import Facts
from exlx_autocfg.model.spec import ModelSpec
from exlx_autocfg.planner.core import DEFAULT_MARGIN_MIB
from exlx_autocfg.planner.types import Plan

if TYPE_CHECKING:
    from exlx_autocfg.cli.hub_view import HubChoice

__all__ = [
    "DEFAULT_MARGIN_MIB",
    "AssumeOpt",
    "BackendOpt",
    "BatchOpt",
    "BpwOpt",
    "BudgetOpt",
    "CacheOpt",
    "ChunkOpt",
    "ContextOpt",
    "DraftCacheOpt",
    "DraftOpt",
    "GpuOpt",
    "LoraOpt",
    "MarginOpt",
    "MinCacheOpt",
    "ModelArg",
    "PythonOpt",
    "TensorParallelOpt",
    "VisionOpt",
    "check_plan_options",
    "facts_from_options",
    "plan_from_options",
]

ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="Model directory (config.json + *.safetensors), Hugging Face repo hf:ORG/REPO[@REVISION] "
        "(headers only; no revision: every EXL2 branch, the best one planned) or catalog reference, "
        "e.g. yi-34b@4.0bpw."
    ),
]
GpuOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--gpu",
        help="What-if: plan for this GPU from the table instead of this machine's; NAME or "
        "NAMExN, repeatable (e.g. --gpu 3090x2 --gpu p40).",
        show_default=False,
    ),
]
AssumeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--assume",
        help="What-if: assume PKG==VERSION (torch, exllamav2, flash-attn, xformers; "
        "VERSION 'none' = not installed), repeatable.",
        show_default=False,
    ),
]
ContextOpt = Annotated[
    int | None,
    typer.Option(
        "--context",
        help="Target context in tokens (default: the model's max_position_embeddings).",
        show_default=False,
    ),
]
CacheOpt = Annotated[
    str | None, typer.Option("--cache", help="Force the cache mode: FP16, Q8, Q6 or Q4.", show_default=False)
]
BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="Force the attention backend: flash_attn, xformers, sdpa, matmul (or auto); "
        "refused with reasons when it is not valid here.",
        show_default=False,
    ),
]
MinCacheOpt = Annotated[
    str | None,
    typer.Option(
        "--min-cache-precision",
        help="Never choose a cache coarser than this (FP16, Q8, Q6, Q4).",
        show_default=False,
    ),
]
BudgetOpt = Annotated[
    str,
    typer.Option(
        "--budget", help="Plan against each GPU's total VRAM or the VRAM free right now (total|free)."
    ),
]
MarginOpt = Annotated[int, typer.Option("--margin-mib", help="Safety margin kept free on every GPU, MiB.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Cache batch size (max_batch_size).")]
ChunkOpt = Annotated[
    int | None,
    typer.Option(
        "--chunk-size",
        help="Force max_input_len (a multiple of 256; default: chosen to fit).",
        show_default=False,
    ),
]
BpwOpt = Annotated[
    float | None,
    typer.Option(
        "--bpw", help="Bits per weight for a catalog model (same as MODEL@BPW).", show_default=False
    ),
]
DraftOpt = Annotated[
    str | None,
    typer.Option(
        "--draft",
        help="A draft model for speculative decoding (directory, catalog reference or hf:ORG/REPO@REV), "
        "loaded first as TabbyAPI does; the context is solved with its weights and cache in place.",
        show_default=False,
    ),
]
DraftCacheOpt = Annotated[
    str | None,
    typer.Option(
        "--draft-cache",
        help="Force the draft's cache mode: FP16, Q8, Q6 or Q4 (default: the mode chosen for the model).",
        show_default=False,
    ),
]
TensorParallelOpt = Annotated[
    bool,
    typer.Option(
        "--tensor-parallel",
        help="Plan exllamav2's tensor-parallel load (load_tp) over the GPUs; refused with the reasons when "
        "its TP path cannot run the model here.",
    ),
]
VisionOpt = Annotated[
    bool,
    typer.Option(
        "--vision",
        help="Load the model's vision tower and projector too (TabbyAPI `vision: true`): planned on the "
        "first GPU with their weights and one image's embedding at the largest image size.",
    ),
]
LoraOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--lora",
        help="A LoRA adapter directory, DIR[:SCALE] (scale default 1.0), applied after the model; "
        "repeatable. Its tensors are planned on the GPUs of the modules they attach to.",
        show_default=False,
    ),
]
PythonOpt = Annotated[
    str | None,
    typer.Option(
        "--python",
        help="Interpreter that will run exllamav2 (its libraries are probed); default: this one.",
        show_default=False,
    ),
]


def check_plan_options(*, gpu: list[str] | None = None, python: str | None = None) -> None:
    """Refuse option combinations a plan would silently ignore; cheap, so commands run it before probing."""
    if gpu and python is not None:
        raise OptionError("python", python, "applies only to a plan for this machine: a what-if plan (--gpu) "
                          "does not probe an interpreter; give its libraries with --assume PKG==VERSION")


def preload_model(model: str, bpw: float | None = None, progress: bool | None = False) -> str | ModelSpec:
    """The model read before any probing, so that bad model input fails first; a Hub repo without a
    revision stays a reference (plan_from_options compares its branches: the quant table)."""
    from exlx_autocfg.model.hub import is_hub_ref, parse_hub_ref

    hub_ref = parse_hub_ref(model) if is_hub_ref(model) else None
    if hub_ref is not None and bpw is not None:
        raise _hub_bpw(hub_ref, bpw)
    if hub_ref is not None and hub_ref.revision is None:
        return model
    if hub_ref is not None:
        from exlx_autocfg.cli.hub_view import hub_progress
        from exlx_autocfg.model.hub import read_hub_spec

        with hub_progress(progress) as report:
            return read_hub_spec(hub_ref, progress=report)
    from exlx_autocfg.model.load import load_model_spec

    return load_model_spec(model, bpw=bpw)


def preload_companions(*, draft: Any = None, draft_cache: str | None = None, tensor_parallel: bool = False,
                       loras: list[Any] | None = None, vision: bool = False) -> dict[str, Any]:
    """The plan request's companions, read once before any probing (a bad draft or adapter fails first;
    a Hub quant table plans every branch against the same reads). Inputs already read pass through."""
    from exlx_autocfg.model.companions import read_draft, read_lora

    out: dict[str, Any] = {}
    if draft_cache is not None and draft is None:
        raise OptionError("draft_cache", draft_cache, "applies only with --draft")
    if draft is not None:
        out["draft"] = read_draft(draft)
        out["draft_cache"] = draft_cache
    if tensor_parallel:
        out["tensor_parallel"] = True
    if loras:
        out["loras"] = [read_lora(x) for x in loras]
    if vision:
        out["vision"] = True
    return out


def _hub_bpw(hub_ref: Any, bpw: float) -> OptionError:
    return OptionError("bpw", bpw, f"applies only to catalog models; a Hub repo's bitrates are its branches "
                       f"(give hf:{hub_ref.repo}@REVISION, or hf:{hub_ref.repo} to compare them)")


def facts_from_options(
    *,
    gpu: list[str] | None = None,
    assume: list[str] | None = None,
    python: str | None = None,
) -> Facts:
    """Facts for a plan: from the GPU table when `--gpu` is given (libraries: the default what-if stack, the
    attention libraries recommended for those GPUs, then `--assume`), else `detect()` on this machine for
    `python` (with `--assume` applied on top)."""
    from exlx_autocfg.facts.what_if import what_if_facts

    check_plan_options(gpu=gpu, python=python)
    if gpu:
        return what_if_facts(gpu, assume, recommended=True)
    from exlx_autocfg.facts.detect import detect

    facts = detect(python=python)
    return what_if_facts(None, assume, base=facts) if assume else facts


def plan_with_facts(
    model: str, *, gpu: list[str] | None = None, assume: list[str] | None = None, python: str | None = None,
    bpw: float | None = None, draft: Any = None, draft_cache: str | None = None,
    tensor_parallel: bool = False, loras: list[Any] | None = None, vision: bool = False, **request: Any,
) -> tuple[Plan, Facts]:
    """The model, its companions, then the facts (bad input fails before any probing), then the plan."""
    check_plan_options(gpu=gpu, python=python)
    spec = preload_model(model, bpw)
    beside = preload_companions(draft=draft, draft_cache=draft_cache, tensor_parallel=tensor_parallel,
                                loras=loras, vision=vision)
    facts = facts_from_options(gpu=gpu, assume=assume, python=python)
    return plan_from_options(spec, facts=facts, bpw=bpw, **request, **beside), facts


def plan_from_options(
    model: str | ModelSpec,
    *,
    gpu: list[str] | None = None,
    assume: list[str] | None = None,
    context: int | None = None,
    cache: str | None = None,
    backend: str | None = None,
    min_cache_precision: str | None = None,
    budget: str = "total",
    margin_mib: int = DEFAULT_MARGIN_MIB,
    batch_size: int = 1,
    chunk_size: int | None = None,
    bpw: float | None = None,
    python: str | None = None,
    facts: Facts | None = None,
    progress: bool | None = None,
    draft: Any = None,
    draft_cache: str | None = None,
    tensor_parallel: bool = False,
    loras: list[Any] | None = None,
    vision: bool = False,
) -> Plan:
    """The model spec (a loaded `ModelSpec` is used as it is), facts (given, what-if or detected), then
    `planner.plan`. Raises ExlxError subclasses only (UsageError and its OptionError, ModelSpecError,
    SpecialFileError, HubError, BackendRefusedError, DoesNotFitError, ProbeError).
    `progress`: show reading progress for Hub models on stderr (default: when stderr is a terminal)."""
    return choice_from_options(
        model, gpu=gpu, assume=assume, context=context, cache=cache, backend=backend,
        min_cache_precision=min_cache_precision, budget=budget, margin_mib=margin_mib, batch_size=batch_size,
        chunk_size=chunk_size, bpw=bpw, python=python, facts=facts, progress=progress, draft=draft,
        draft_cache=draft_cache, tensor_parallel=tensor_parallel, loras=loras, vision=vision,
    )[0]


def choice_from_options(
    model: str | ModelSpec,
    *,
    gpu: list[str] | None = None,
    assume: list[str] | None = None,
    context: int | None = None,
    cache: str | None = None,
    backend: str | None = None,
    min_cache_precision: str | None = None,
    budget: str = "total",
    margin_mib: int = DEFAULT_MARGIN_MIB,
    batch_size: int = 1,
    chunk_size: int | None = None,
    bpw: float | None = None,
    python: str | None = None,
    facts: Facts | None = None,
    progress: bool | None = None,
    draft: Any = None,
    draft_cache: str | None = None,
    tensor_parallel: bool = False,
    loras: list[Any] | None = None,
    vision: bool = False,
) -> tuple[Plan, HubChoice | None]:
    """`plan_from_options`, plus the quant table when MODEL is `hf:ORG/REPO` without a revision."""
    from exlx_autocfg.planner.core import plan

    check_plan_options(gpu=gpu, python=python)
    request = dict(context=context, cache=cache, backend=backend, min_cache_precision=min_cache_precision,
                   budget=budget, margin_mib=margin_mib, batch_size=batch_size, chunk_size=chunk_size,
                   **preload_companions(draft=draft, draft_cache=draft_cache, tensor_parallel=tensor_parallel,
                                        loras=loras, vision=vision))
    spec = model if isinstance(model, ModelSpec) else preload_model(model, bpw, progress)
    if isinstance(spec, str):  # hf:ORG/REPO without a revision: plan every branch, keep the best
        from exlx_autocfg.cli.hub_view import HubChoice, hub_progress
        from exlx_autocfg.model.hub import parse_hub_ref, read_hub_branches
        from exlx_autocfg.planner.candidates import choose_candidate

        with hub_progress(progress) as report:
            listing = read_hub_branches(parse_hub_ref(spec).repo, progress=report)
        if facts is None:
            facts = facts_from_options(gpu=gpu, assume=assume, python=python)
        choice = choose_candidate(facts, listing.branches, **request)
        return choice.plan, HubChoice(listing, choice)
    if facts is None:
        facts = facts_from_options(gpu=gpu, assume=assume, python=python)
    return plan(facts, spec, **request), None
