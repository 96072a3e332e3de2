"""What loads beside the model, solved with it: a draft model and LoRA adapters in the fit itself.

The order is TabbyAPI's (backends/exllamav2/model.py @ 79126f9, profiles/draft.toml): the draft loads
FIRST, then the model, then the adapters. So at every candidate context the solver places the draft (its
cache at that context, in its cache mode) on the GPUs in order, and the model is fitted around it: the
draft's persistent bytes are a fixed `Beside` per GPU, its transients overlap the model's; each adapter's
tensors ride on the module they attach to, so they are placed where that module lands. The largest
context is then the largest at which the draft, the model and the adapters all fit.

`resolve` reads and judges the companions before any solving (refusals raise, one line, exit 2);
`CompanionSolver` is the `Solver` with them in place; `attach` writes their settings, sections, reasons
and warnings into the assembled Plan. Tensor parallelism has its own solve path (`planner.tp_solve`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from exlx_autocfg import exl2
from exlx_autocfg.errors import DoesNotFitError, DraftRefusedError, LoraRefusedError, OptionError
from exlx_autocfg.findings import Finding, finding
from exlx_autocfg.model.companions import DraftInput, LoraInput, read_draft, read_lora, tokenizer_of
from exlx_autocfg.model.spec import ModelSpec
from exlx_autocfg.planner import draft as dr
from exlx_autocfg.planner import lora as lp
from exlx_autocfg.planner import vision as vis
from exlx_autocfg.planner.fit import Beside, Costs, Module, Placed, fit
from exlx_autocfg.planner.rope import rope_alpha
from exlx_autocfg.planner.solver import Solver
from exlx_autocfg.planner.split import set_device_map_allocation
from exlx_autocfg.planner.types import Plan, Reason
from exlx_autocfg.settings import DraftSettings, LoraSettings

GIB = 1024**3
MIB = 1024**2


@dataclass
class Companions:
    """The draft and adapters of one plan request, read and judged once."""

    draft: DraftInput | None = None
    draft_cache: str | None = None  # forced draft cache mode (None: the model's)
    tensor_parallel: bool = False
    loras: list[LoraInput] = field(default_factory=list)
    lora_plans: list[lp.LoraPlan] = field(default_factory=list)
    vision: bool = False  # the vision tower loads too (after the draft, before the model: TabbyAPI)
    model_tokenizer: Any = None
    warnings: list[Finding] = field(default_factory=list)  # from judging the pair and the adapters

    @property
    def any(self) -> bool:
        return self.draft is not None or bool(self.loras) or self.tensor_parallel or self.vision

    @property
    def solved_with(self) -> bool:
        """Whether the layer-split solve places something beside the model (TP has its own path)."""
        return self.draft is not None or bool(self.loras) or self.vision

    def draft_mode(self, mode: str) -> str:
        """The draft's cache mode when the model's is `mode`: forced, else the same policy's answer."""
        return self.draft_cache or mode


def resolve(req: Any, spec: ModelSpec) -> Companions:
    """Read the request's draft and adapters (references or inputs already read) and judge what does not
    depend on the context: a draft that cannot draft for `spec` (DraftRefusedError) and adapters
    ExLlamaV2Lora cannot load on it (LoraRefusedError)."""
    out = Companions(draft_cache=req.draft_cache, tensor_parallel=bool(req.tensor_parallel))
    if getattr(req, "vision", False):
        check_vision(spec)
        out.vision = True
    out.loras = [read_lora(x) for x in req.loras]
    for item in out.loras:
        planned = checked_lora(item.adapter, spec, item.scale, f"LoRA {item.reference}")
        out.lora_plans.append(planned)
        out.warnings += planned.findings
    if req.draft is not None:
        out.draft = read_draft(req.draft)
        out.model_tokenizer = tokenizer_of(spec)
        # Context-free judgement (the cache lengths are judged again at the planned context).
        refuse_draft(dr.judge_draft(spec, out.draft.spec, cache_size=_PAGE_PROBE, cache_mode="FP16",
                                    draft_cache_mode="FP16", model_tokenizer=out.model_tokenizer,
                                    draft_tokenizer=out.draft.tokenizer, lora_count=len(out.loras)),
                     f"draft {out.draft.reference}")
    return out


_PAGE_PROBE = 256  # a context every draft is trained for: the first judgement leaves the context out


def refuse_draft(found: list[Finding], subject: str) -> list[Finding]:
    """`found` (the pair's judgement), or DraftRefusedError in one line when any of it is a refusal."""
    refusals = [f for f in found if dr.is_refusal(f)]
    if refusals:
        raise DraftRefusedError(refusal_line(subject, refusals), refusals)
    return found


def checked_lora(adapter: Any, spec: ModelSpec, scale: float, subject: str) -> lp.LoraPlan:
    """The adapter planned on `spec`, or LoraRefusedError in one line for what ExLlamaV2Lora would refuse."""
    planned = lp.plan_lora(adapter, spec, scale=scale)
    refusals = [f for f in planned.findings if lp.is_refusal(f)]
    if refusals:
        raise LoraRefusedError(refusal_line(subject, refusals), refusals)
    return planned


def refusal_line(subject: str, refusals: list[Finding]) -> str:
    """One line for the refusals: the first of each code, and how many there are in all."""
    first = list({f.code: f for f in reversed(refusals)}.values())[::-1]
    text = "; ".join(f.message for f in first)
    more = f" ({len(refusals)} refusals in all)" if len(refusals) > len(first) else ""
    return f"{subject}: {text}{more}"


# ------------------------------------------------------------------------------------------------- draft


def _draft_beside(plan: dr.DraftPlan, n: int) -> list[Beside]:
    out = [Beside()] * n
    for d in plan.devices:
        out[d.position] = Beside(
            parts=(("draft_weights", d.weights_bytes), ("draft_cache", d.cache_bytes),
                   ("draft_staging", d.staging_bytes), ("draft_scratch", d.scratch_bytes),
                   ("draft_rope", d.rope_bytes)),
            transient=d.transient_bytes,
        )
    return out


def draft_gpu_split(draft: ModelSpec, positions: list[int], *, backend: str, seq: int, chunk: int,
                    batch: int) -> list[float]:
    """GB per GPU for the draft's `set_device_map` that reproduces `positions` (the GPU of each of its GPU
    modules, in order): split.set_device_map_allocation on the draft, the last GPU given what its modules
    need, rounded up to the next hundredth of a GB plus one (so the rounding never takes from it)."""
    last = max(positions)
    devices = [Placed(i, 0, 0) for i in range(last + 1)]
    for i, pos in enumerate(positions):
        devices[pos].modules.append(Module(str(i), "", None, 0, 0, False))
    split = set_device_map_allocation(draft, backend, devices, seq, chunk, batch)
    split[-1] = math.ceil(split[-1] * 100) / 100 + 0.01
    return [round(x, 4) for x in split]


def place_draft(draft: ModelSpec, budgets: Sequence[int], reserves: Sequence[int], *, cache_mode: str,
                seq: int, chunk: int, backend: str, batch: int) -> dr.DraftPlan:
    """The draft as the plan loads it, first, at this point: where TabbyAPI's autosplit puts it (GPUs in
    order, each filled before the next), with exact bytes. On one GPU that is load_autosplit itself; on
    several, the plan pins it with a draft_gpu_split that makes set_device_map land it there (exact, and
    the same on every load). Raises DoesNotFitError."""
    free = [b - r for b, r in zip(budgets, reserves, strict=True)]
    auto = dr.place_draft_autosplit(draft, free, cache_mode=cache_mode, max_seq_len=seq, chunk_size=chunk,
                                    backend=backend, batch_size=batch)
    if len(budgets) == 1:
        return auto
    positions = list(auto.positions)
    split = draft_gpu_split(draft, positions, backend=backend, seq=seq, chunk=min(chunk, seq), batch=batch)
    return dr.place_draft_gpu_split(draft, split, cache_mode=cache_mode, max_seq_len=seq, chunk_size=chunk,
                                    backend=backend, batch_size=batch)




# -------------------------------------------------------------------------------------------------- vision


def check_vision(spec: ModelSpec) -> None:
    """--vision needs a tower exllamav2 builds and a checkpoint that carries it (OptionError otherwise)."""
    if spec.vision is None or spec.rules.vision is None:
        raise OptionError("vision", True, f"{spec.name} ({spec.architecture}) has no vision tower exllamav2 "
                          "0.3.2 loads (its config.json names no vision_config model type)")
    if not vis.vision_tensors_present(spec):
        raise OptionError("vision", True, f"{spec.name} carries no vision tower tensors (quantized without "
                          "them): ExLlamaV2VisionTower cannot load")


def vision_beside(costs: vis.VisionCosts, n: int) -> list[Beside]:
    """The tower on its device: weights and the text model's RoPE tables built again there, held; one
    image's embedding as the transient (its scratch tensor is allocated only for a quantized tower)."""
    out = [Beside()] * n
    out[costs.device] = Beside(
        parts=(("vision_weights", costs.weights_bytes), ("vision_rope", costs.rope_bytes)),
        transient=costs.image_transient_bytes,
        transient_part="vision_transient",
    )
    return out


def vision_reason(costs: vis.VisionCosts, plan: Plan) -> Reason:
    h, w = costs.max_image
    return Reason(
        "vision", costs.model_type, "vision.planned",
        f"the {costs.model_type} vision tower and projector load on {_gpu_name(plan, costs.device)} after "
        "the draft and before the model (TabbyAPI; ExLlamaV2VisionTower.load() puts every module on the "
        f"first CUDA device): {costs.weights_bytes / MIB:,.0f} MiB of fp16 weights, "
        f"{costs.rope_bytes / MIB:,.1f} MiB of RoPE tables built again there, and "
        f"{costs.image_transient_bytes / MIB:,.0f} MiB while "
        f"embedding one {w}x{h} image ({costs.patches} patches, {costs.image_tokens} tokens of context) "
        f"with {costs.backend} attention",
        {"model_type": costs.model_type, "device": costs.device, "weights_bytes": costs.weights_bytes,
         "rope_bytes": costs.rope_bytes, "image_transient_bytes": costs.image_transient_bytes,
         "max_image": [h, w], "patches": costs.patches, "image_tokens": costs.image_tokens,
         "backend": costs.backend, "source": exl2.backend_rules()["model_features"]["vision"]["source"]},
    )


def vision_section(costs: vis.VisionCosts, plan: Plan) -> dict[str, Any]:
    """plan --json's `vision`: the tower's figures, and the GPU it loads on."""
    position = costs.device
    return {
        "model_type": costs.model_type,
        "gpu_index": plan.gpus[position].index if position < len(plan.gpus) else None,
        "weights_bytes": costs.weights_bytes,
        "footprint_bytes": costs.footprint_bytes,
        "rope_bytes": costs.rope_bytes,
        "scratch_fixed_bytes": costs.scratch_fixed_bytes,
        "scratch_bytes": costs.scratch_bytes,
        "image_transient_bytes": costs.image_transient_bytes,
        "backend": costs.backend,
        "max_image": list(costs.max_image),
        "patches": costs.patches,
        "image_tokens": costs.image_tokens,
    }


# ------------------------------------------------------------------------------------------------ adapters


def _owner(key: str, layer: int, keys: set[str]) -> str:
    """The exllamav2 module whose device an adapter tensor lands on (a parallel decoder holds both)."""
    part = "self_attn" if ".self_attn." in key else "mlp"
    own = f"model.layers.{layer}.{part}"
    return own if own in keys else f"model.layers.{layer}"


def with_adapters(modules: list[Module], plans: list[lp.LoraPlan]) -> list[Module]:
    """The model's modules with each adapter's tensors added to the module they attach to."""
    if not plans:
        return modules
    keys = {m.key for m in modules}
    extra: dict[str, int] = {}
    for p in plans:
        for m in p.modules:
            owner = _owner(m.key, m.layer, keys)
            extra[owner] = extra.get(owner, 0) + m.gpu_bytes
        if p.head_bytes:
            extra["lm_head"] = extra.get("lm_head", 0) + p.head_bytes
    return [replace(m, lora_bytes=m.lora_bytes + extra[m.key]) if m.key in extra else m for m in modules]


# -------------------------------------------------------------------------------------------------- solver


class CompanionSolver(Solver):
    """`Solver` with the draft placed first at every candidate point and the adapters on their modules."""

    def __init__(self, spec: Any, backend: str, budgets: list[int], reserves: list[int], batch: int,
                 companions: Companions) -> None:
        super().__init__(spec, backend, budgets, reserves, batch)
        self.companions = companions
        self._draft_cache: dict[tuple[str, int, int], dr.DraftPlan | None] = {}
        self._vision_cache: dict[tuple[int, int], vis.VisionCosts] = {}
        self._with: dict[int, list[Module]] = {}

    def modules(self, chunk: int) -> list[Module]:
        if chunk not in self._with:
            self._with[chunk] = with_adapters(super().modules(chunk), self.companions.lora_plans)
        return self._with[chunk]

    def costs(self, mode: str, seq_len: int, chunk: int) -> Costs:
        c = super().costs(mode, seq_len, chunk)
        plans = self.companions.lora_plans
        if not plans:
            return c
        # Adapters run one after another; each forward's buffer is freed before the next (attn.py, mlp.py).
        return replace(c, lora_transient=max(p.transient_bytes(chunk, self.batch) for p in plans))

    def draft_at(self, mode: str, seq_len: int, chunk: int) -> dr.DraftPlan | None:
        """The draft's placement at this point (None: it does not fit, or there is no draft)."""
        draft = self.companions.draft
        if draft is None:
            return None
        key = (mode, seq_len, min(chunk, seq_len))
        if key not in self._draft_cache:
            try:
                self._draft_cache[key] = place_draft(
                    draft.spec, self.budgets, self.reserves, cache_mode=self.companions.draft_mode(mode),
                    seq=seq_len, chunk=key[2], backend=self.backend, batch=self.batch)
            except DoesNotFitError:
                self._draft_cache[key] = None
            if len(self._draft_cache) > 4096:
                self._draft_cache = {key: self._draft_cache[key]}
        return self._draft_cache[key]

    def vision_at(self, seq_len: int, chunk: int) -> vis.VisionCosts | None:
        """The vision tower's costs at this point (None: no tower asked for)."""
        if not self.companions.vision:
            return None
        key = (seq_len, min(chunk, seq_len))
        if key not in self._vision_cache:
            self._vision_cache[key] = vis.vision_costs(self.spec, backend=self.backend, max_seq_len=seq_len,
                                                       max_input_len=key[1], max_batch_size=self.batch)
        return self._vision_cache[key]

    def beside_at(self, mode: str, seq_len: int, chunk: int) -> list[Beside] | None:
        n = len(self.budgets)
        beside = [Beside()] * n
        if self.companions.draft is not None:
            placed = self.draft_at(mode, seq_len, chunk)
            if placed is None:
                return None
            beside = _draft_beside(placed, n)
        tower = self.vision_at(seq_len, chunk)
        if tower is not None:
            if tower.device >= n:
                return None
            beside = [b.plus(v) for b, v in zip(beside, vision_beside(tower, n), strict=True)]
        return beside

    def place(self, mode: str, seq_len: int, chunk: int) -> list[Placed] | None:
        chunk = min(chunk, seq_len)
        beside = self.beside_at(mode, seq_len, chunk)
        if beside is None:
            return None
        plain = self.companions.draft is None and not self.companions.vision
        return fit(self.budgets, self.reserves, self.modules(chunk), self.costs(mode, seq_len, chunk),
                   None if plain else beside)

    def what_is_beside(self) -> str:
        """For a does-not-fit message: what was planned beside the model."""
        parts = []
        if self.companions.draft is not None:
            parts.append(f"the draft {self.companions.draft.spec.name}")
        if self.companions.loras:
            parts.append(f"{len(self.companions.loras)} LoRA adapter(s)")
        if self.companions.vision:
            tower = self.vision_at(self.spec.max_position_embeddings, 2048)
            assert tower is not None
            parts.append(f"the vision tower ({tower.weights_bytes / MIB:,.0f} MiB, "
                         f"{tower.image_transient_bytes / MIB:,.0f} MiB per image with {self.backend})")
        return " and ".join(parts)


def make_solver(spec: Any, backend: str, budgets: list[int], reserves: list[int], batch: int,
                companions: Companions | None) -> Solver:
    if companions is None or not companions.solved_with:
        return Solver(spec, backend, budgets, reserves, batch)
    return CompanionSolver(spec, backend, budgets, reserves, batch, companions)


# -------------------------------------------------------------------------------------------------- attach


def _gpu_name(plan: Plan, position: int) -> str:
    g = plan.gpus[position] if position < len(plan.gpus) else None
    return f"#{g.index} {g.name}" if g else f"GPU {position}"


def draft_section(plan: Plan, placed: dr.DraftPlan, findings: list[Finding]) -> dict[str, Any]:
    """plan --json's `draft`: the draft's figures with the same meaning as the model's, and per GPU."""
    doc = placed.to_dict()
    for d in doc["devices"]:
        pos = d["position"]
        d["gpu_index"] = plan.gpus[pos].index if pos < len(plan.gpus) else None
    doc["path"] = None
    doc["fingerprint"] = None
    doc["findings"] = [{"code": f.code, "message": f.message} for f in findings]
    return doc


def judge_at(companions: Companions, spec: ModelSpec, *, mode: str, max_seq_len: int, batch: int,
             ) -> list[Finding]:
    """The pair judged at the planned context and cache modes; refusals raise DraftRefusedError."""
    draft = companions.draft
    assert draft is not None
    dmode = companions.draft_mode(mode)
    found = dr.judge_draft(spec, draft.spec, cache_size=max_seq_len, cache_mode=mode, draft_cache_mode=dmode,
                           model_tokenizer=companions.model_tokenizer, draft_tokenizer=draft.tokenizer,
                           lora_count=len(companions.loras))
    pool = max_seq_len * batch  # a paged cache is one pool of this many tokens, for both caches
    if batch > 1 and dr.cache_length(spec, mode, pool) != dr.cache_length(draft.spec, dmode, pool):
        found.append(finding("draft.cache_length_mismatch",
                             f"at cache_size {pool} the {mode} model cache and the {dmode} draft cache "
                             "round to "
                             "different lengths: exllamav2's dynamic generator asserts they are equal",
                             source=dr.rules()["requires"]["cache_dims_source"]))
    return refuse_draft(found, f"draft {draft.reference}")


def draft_reasons(companions: Companions, placed: dr.DraftPlan, mode: str, max_seq_len: int,
                  plan: Plan) -> tuple[DraftSettings, list[Reason]]:
    draft = companions.draft
    assert draft is not None
    spec = draft.spec
    dmode = companions.draft_mode(mode)
    where = "; ".join(
        f"{_gpu_name(plan, d.position)}: "
        + (f"layers {d.layers[0]}-{d.layers[-1]}" if d.layers else "head only")
        + f", {d.persistent_bytes / MIB:,.0f} MiB held" for d in placed.devices)
    load = ("draft_gpu_split " + ", ".join(f"{x:g}" for x in placed.gpu_split or []) + " GB (set_device_map "
            "lands it where planned)") if placed.load == "gpu_split" else "autosplit on the first GPU"
    reasons = [Reason(
        "draft", spec.name, "draft.placed",
        f"loaded before the model, as TabbyAPI does, at the model's max_seq_len {max_seq_len} and chunk "
        f"{placed.chunk_size}; {load}: {where}; the model is fitted into what is left",
        {"devices": [d.to_dict() for d in placed.devices], "load": placed.load, "gpu_split": placed.gpu_split,
         "source": dr.rules()["load"]["order_source"]},
    )]
    if companions.draft_cache:
        reasons.append(Reason("draft_cache_mode", dmode, "draft.cache.forced",
                              f"forced by --draft-cache {dmode}", {"mode": dmode}))
    else:
        reasons.append(Reason(
            "draft_cache_mode", dmode, "draft.cache.follows_model",
            f"the cache mode chosen for the model ({mode}): the context was solved with the draft's cache in "
            "the same mode (written out: TabbyAPI's own default is "
            f"{dr.rules()['settings']['tabby_default_cache_mode']})", {"mode": dmode}))
    trained = spec.max_position_embeddings
    alpha = round(rope_alpha(trained, max_seq_len), 4)
    if alpha > 1.0:
        reasons.append(Reason(
            "draft_rope_alpha", f"{alpha:g}", "draft.rope.alpha",
            f"max_seq_len {max_seq_len} exceeds the draft's trained context {trained}: NTK alpha from the "
            "draft's own length (exllamav2 examples/chat.py; TabbyAPI's 'auto' would use the model's)",
            {"draft_trained": trained, "source": dr.rules()["rope_alpha"]["source"]}))
    else:
        reasons.append(Reason("draft_rope_alpha", "1", "draft.rope.native",
                              f"max_seq_len {max_seq_len} is within the draft's trained context {trained}",
                              {"draft_trained": trained}))
    settings = DraftSettings(
        name=_tabby_name(spec), cache_mode=dmode, path=spec.path,
        gpu_split=list(placed.gpu_split) if placed.load == "gpu_split" else None,
        autosplit=placed.load == "autosplit", rope_scale=1.0, rope_alpha=alpha)
    return settings, reasons


def _tabby_name(spec: ModelSpec) -> str:
    if spec.path:
        return spec.path.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    if spec.hub is not None:
        return spec.hub.reference
    return spec.name


def lora_reason(companions: Companions, plan: Plan, devices: list[Placed]) -> Reason:
    layer_pos = {m.layer: i for i, d in enumerate(devices) for m in d.modules if m.layer is not None}
    head_pos = next(i for i, d in enumerate(devices) if any(m.kind == "lm_head" for m in d.modules))
    per_gpu: dict[int, int] = {}
    for p in companions.lora_plans:
        for pos, n in p.bytes_by_position(layer_pos, head_pos).items():
            per_gpu[pos] = per_gpu.get(pos, 0) + n
    where = ", ".join(f"{_gpu_name(plan, pos)}: {n / MIB:,.1f} MiB" for pos, n in sorted(per_gpu.items()))
    names = ", ".join(f"{p.name}:{p.scale:g}" for p in companions.lora_plans)
    return Reason(
        "loras", names, "lora.placed",
        "ExLlamaV2Lora keeps every lora_A/lora_B in fp16 on the GPU of the module it attaches to; "
        "placed with "
        f"those modules and planned with them: {where}",
        {"bytes_by_gpu": {str(plan.gpus[pos].index): n for pos, n in per_gpu.items()},
         "source": lp.rules()["tensors"]["gpu_bytes_source"]},
    )


def lora_settings(companions: Companions) -> list[LoraSettings]:
    return [LoraSettings(path=item.reference, scale=item.scale, name=item.adapter.name)
            for item in companions.loras]


def lora_sections(companions: Companions) -> list[dict[str, Any]]:
    return [{**p.to_dict(), "path": item.reference}
            for p, item in zip(companions.lora_plans, companions.loras, strict=True)]


def attach(plan: Plan, companions: Companions, solver: Solver, spec: ModelSpec, devices: list[Placed]
           ) -> Plan:
    """Write the draft, adapters and vision tower into an assembled layer-split Plan: settings, sections,
    reasons and warnings (the memory rows already hold their bytes: the solver placed them)."""
    s = plan.settings
    extra_warnings = list(companions.warnings)
    if companions.draft is not None:
        assert isinstance(solver, CompanionSolver)
        # max_input_len is the chunk the solve placed with (already clamped to max_seq_len)
        placed = solver.draft_at(s.cache_mode, s.max_seq_len, s.max_input_len)
        assert placed is not None  # the plan's placement held it
        found = judge_at(companions, spec, mode=s.cache_mode, max_seq_len=s.max_seq_len,
                         batch=s.max_batch_size)
        settings, reasons = draft_reasons(companions, placed, s.cache_mode, s.max_seq_len, plan)
        s.draft = settings
        plan.reasons += reasons
        plan.draft = draft_section(plan, placed, found)
        plan.draft |= {"path": companions.draft.spec.path, "fingerprint": companions.draft.spec.fingerprint,
                       "architecture": companions.draft.spec.architecture}
        extra_warnings += [f for f in found if f.code != "draft.context_beyond_trained"]
    if companions.loras:
        dirs = sorted({os.path.dirname(os.path.abspath(x.reference)) for x in companions.loras})
        if len(dirs) > 1:
            extra_warnings.append(finding(
                "lora.not_in_one_dir", f"the adapters live in {', '.join(dirs)}: TabbyAPI reads every LoRA "
                "from one lora_dir (text-generation-webui from one --lora-dir); move them into one folder",
                dirs=dirs))
        s.loras = lora_settings(companions)
        plan.loras = lora_sections(companions)
        plan.reasons.append(lora_reason(companions, plan, devices))
    if companions.vision:
        assert isinstance(solver, CompanionSolver)
        tower = solver.vision_at(s.max_seq_len, s.max_input_len)
        assert tower is not None
        s.vision = True
        plan.vision = vision_section(tower, plan)
        plan.reasons.append(vision_reason(tower, plan))
    seen = {(w.code, w.message) for w in plan.warnings}
    plan.warnings += [w for w in extra_warnings if (w.code, w.message) not in seen]
    plan.request = {**plan.request}
    return plan
