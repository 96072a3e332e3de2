"""The planner: (facts, model, request) -> Plan. Pure: no probing, no files (except loading a model given
by reference), no exllamav2.

Decisions, in order, each with its reason and the alternatives it rejected:
1. backend (backends.py: each backend validates itself; exllamav2's precedence ranks the valid ones),
   judged against the GPUs in use (the weakest decides);
2. for each cache mode and chunk size, the largest max_seq_len (a multiple of 256: the dynamic generator's
   page size and TabbyAPI's cache rounding) at which every GPU's planned bytes stay within its budget;
   the memory arithmetic is memory.py's, placed module by module in exllamav2's order;
3. the cache mode (default: the most precise one that reaches the target context, else the longest
   context), the chunk size (the largest that does not cost context below the target);
4. the GPU split, as exllamav2's `set_device_map` needs it to place exactly the planned layers.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from exlx_autocfg import __version__
from exlx_autocfg.errors import BackendRefusedError, DoesNotFitError, OptionError, UsageError
from exlx_autocfg.facts.types import GPU, Facts
from exlx_autocfg.options import check_kinds
from exlx_autocfg.planner import memory
from exlx_autocfg.planner.backends import LATEST_EXLLAMAV2, BackendQuery, Selection, rules, select, version_of
from exlx_autocfg.planner.types import (
    BACKENDS,
    CACHE_MODES,
    DeviceMemory,
    Plan,
    PlanGPU,
    Reason,
)

MIB = 1024**2
GIB = 1024**3
PAGE = 256  # exllamav2 dynamic generator PAGED_PAGE_SIZE; TabbyAPI rounds cache_size to it
CHUNK_SIZES = (2048, 1024, 512, 256)  # exllamav2 default max_input_len first; TabbyAPI needs multiples of 256
DEFAULT_MARGIN_MIB = 256
CHUNK_TOLERANCE = 0.03  # context a bigger chunk may give up (see _pick_chunk)
MAX_CONTEXT = 1 << 22  # search ceiling when the target is absurdly large


# ------------------------------------------------------------------------------------------------ request

# The types a Python caller must pass (the CLI parser gives them already).
REQUEST_KINDS: dict[str, type] = {"context": int, "cache": str, "backend": str, "min_cache_precision": str,
                                  "budget": str, "margin_mib": int, "batch_size": int, "chunk_size": int}


@dataclass(frozen=True)
class Request:
    """What the user asked for. Every field is optional; `plan()` takes them as keyword arguments."""

    context: int | None = None  # target max_seq_len (default: the model's max_position_embeddings)
    cache: str | None = None  # force a cache mode
    backend: str | None = None  # force a backend ("auto" = None)
    min_cache_precision: str | None = None  # never pick a cache coarser than this
    budget: str = "total"  # "total" VRAM or "free" VRAM (as detected) per GPU
    margin_mib: int = DEFAULT_MARGIN_MIB  # safety margin per GPU, on top of the overheads
    batch_size: int = 1  # cache batch size / max_batch_size
    chunk_size: int | None = None  # force max_input_len
    overheads: Any = None  # memory.Overheads; None = memory.DEFAULT_OVERHEADS

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> Request:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise UsageError(
                f"unknown plan option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        req = cls(**{k: v for k, v in kwargs.items() if v is not None})
        return req.normalised()

    def normalised(self) -> Request:
        """Checked and canonical (upper-case cache modes, `auto` backend as None). Raises OptionError
        naming the keyword argument (the CLI shows it as the flag)."""
        check_kinds(asdict(self), REQUEST_KINDS)
        changes: dict[str, Any] = {}
        for name in ("cache", "min_cache_precision"):
            value = getattr(self, name)
            if value is not None:
                upper = str(value).upper()
                if upper not in CACHE_MODES:
                    raise OptionError(name, value, f"choose one of {', '.join(CACHE_MODES)}")
                changes[name] = upper
        if self.backend is not None:
            from exlx_autocfg.planner.backends import check_name

            changes["backend"] = None if str(self.backend).lower() == "auto" else check_name(self.backend)
        if self.budget not in ("total", "free"):
            raise OptionError("budget", self.budget, "choose total or free")
        if self.context is not None and self.context < 1:
            raise OptionError("context", self.context, "must be a positive number of tokens")
        if self.margin_mib < 0:
            raise OptionError("margin_mib", self.margin_mib, "must be >= 0")
        if self.batch_size < 1:
            raise OptionError("batch_size", self.batch_size, "must be >= 1")
        if self.chunk_size is not None and (self.chunk_size < PAGE or self.chunk_size % PAGE):
            raise OptionError("chunk_size", self.chunk_size, f"must be a multiple of {PAGE}")
        cache, floor = changes.get("cache"), changes.get("min_cache_precision")
        if cache and floor and CACHE_MODES.index(cache) > CACHE_MODES.index(floor):
            raise OptionError("cache", cache,
                              f"is coarser than the minimum cache precision {floor} also given")
        return Request(**{**asdict(self), "overheads": self.overheads, **changes})

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None and k != "overheads"}
        return out


# ------------------------------------------------------------------------------------------ model adapter


@dataclass(frozen=True)
class _Model:
    """The ModelSpec fields the planner reads (one place to adapt to memory/modelspec)."""

    spec: Any
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    max_position_embeddings: int
    softcap: bool
    sliding_window: bool


def _model(spec: Any) -> _Model:
    return _Model(
        spec=spec,
        layers=spec.num_hidden_layers,
        hidden_size=spec.hidden_size,
        heads=spec.num_attention_heads,
        kv_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        softcap=bool(spec.attn_logit_softcapping),
        sliding_window=bool(spec.uses_swa),
    )


# ------------------------------------------------------------------------------------------ memory per GPU


@dataclass(frozen=True)
class _Module:
    key: str
    kind: str  # attn | mlp | moe | parallel_decoder | norm | lm_head (memory.ModuleCost.kind)
    layer: int | None
    weight_bytes: int
    scratch_fixed_bytes: int
    has_cache: bool  # holds one layer of the KV cache


@dataclass
class _Device:
    """One GPU while placing modules: what is on it and what it costs at the context being tried."""

    index: int
    budget: int
    reserve: int
    modules: list[_Module] = field(default_factory=list)
    weights: int = 0
    attn_layers: int = 0
    scratch_fixed: int = 0

    def total(self, c: _Costs) -> int:
        return sum(self.parts(c).values())

    def parts(self, c: _Costs) -> dict[str, int]:
        return _parts(c, self.weights, self.attn_layers, self.scratch_fixed, self.reserve, bool(self.modules))


def _parts(
    c: _Costs, weights: int, cache_layers: int, scratch_fixed: int, reserve: int, in_use: bool
) -> dict[str, int]:
    """A GPU's planned bytes by part; a GPU holding no module costs nothing (it is left out of the plan)."""
    if not in_use:
        return dict.fromkeys(PARTS, 0)
    has_cache = cache_layers > 0
    return {
        "weights": weights,
        "cache": cache_layers * c.cache_per_layer,
        "staging": c.staging if has_cache else 0,
        "scratch_fixed": scratch_fixed,
        "rope": c.rope,
        "activations": c.activations,
        "attention": c.attention if has_cache else 0,
        "reserve": reserve,
    }


@dataclass(frozen=True)
class _Costs:
    """Context-dependent costs at one (cache mode, max_seq_len, chunk) point."""

    cache_per_layer: int  # K/V (+ scales) of one layer
    staging: int  # the quantized cache's FP16 staging pair, once per device holding attention
    rope: int
    activations: int  # the hidden state of a chunk and its residual
    attention: int  # attention transients for the backend


PARTS = ("weights", "cache", "staging", "scratch_fixed", "rope", "activations", "attention", "reserve")


_MODULE_CACHE: dict[tuple[int, int, int], tuple[Any, list[_Module]]] = {}


def _gpu_modules(spec: Any, chunk: int, batch: int) -> list[_Module]:
    """memory.module_costs without the CPU-resident embedding (embed_cpu=True in every loader). Memoised per
    spec object: the benchmark and the what-if grid plan one model many times."""
    key = (id(spec), chunk, batch)
    hit = _MODULE_CACHE.get(key)
    if hit is not None and hit[0] is spec:
        return hit[1]
    mods = [
        _Module(c.key, c.kind, c.layer, c.weight_bytes, c.scratch_fixed_bytes, c.has_cache)
        for c in memory.module_costs(spec, max_input_len=chunk, max_batch_size=batch)
        if not c.on_cpu
    ]
    if len(_MODULE_CACHE) > 256:
        _MODULE_CACHE.clear()
    _MODULE_CACHE[key] = (spec, mods)
    return mods


class _Solver:
    """Places modules and evaluates memory for one model, backend and GPU set."""

    def __init__(
        self, m: _Model, backend: str, budgets: list[int], reserves: list[int], req: Request
    ) -> None:
        self.m = m
        self.backend = backend
        self.budgets = budgets
        self.reserves = reserves
        self.req = req
        self._modules: dict[int, list[_Module]] = {}

    def modules(self, chunk: int) -> list[_Module]:
        if chunk not in self._modules:
            self._modules[chunk] = _gpu_modules(self.m.spec, chunk, self.req.batch_size)
        return self._modules[chunk]

    def costs(self, mode: str, seq_len: int, chunk: int) -> _Costs:
        spec, batch = self.m.spec, self.req.batch_size
        cache = memory.kv_cache_bytes(spec, mode, seq_len, batch_size=batch)
        return _Costs(
            cache_per_layer=cache // self.m.layers,
            staging=memory.kv_staging_bytes(spec, mode, seq_len, batch_size=batch),
            rope=memory.rope_bytes(spec, seq_len),
            activations=memory.forward_activation_bytes(spec, chunk, batch),
            attention=memory.attention_transient_bytes(
                spec,
                self.backend,
                max_input_len=chunk,
                max_attention_size=chunk * chunk,
                max_seq_len=seq_len,
                batch_size=batch,
            ),
        )

    def place(self, mode: str, seq_len: int, chunk: int) -> list[_Device] | None:
        """Next-fit in exllamav2's module order (layers in file order, lm_head last); None: does not fit."""
        chunk = min(chunk, seq_len)  # exllamav2 clamps max_input_len to max_seq_len
        c = self.costs(mode, seq_len, chunk)
        devices = [_Device(i, b, r) for i, (b, r) in enumerate(zip(self.budgets, self.reserves, strict=True))]
        base, with_cache = c.rope + c.activations, c.staging + c.attention
        d = 0
        for module in self.modules(chunk):
            while True:
                if d >= len(devices):
                    return None
                dev = devices[d]
                weights = dev.weights + module.weight_bytes
                layers = dev.attn_layers + module.has_cache
                scratch = max(dev.scratch_fixed, module.scratch_fixed_bytes)
                # = sum(_parts(...).values()), inlined: this loop is the planner's hot path
                total = (
                    weights
                    + scratch
                    + base
                    + dev.reserve
                    + (layers * c.cache_per_layer + with_cache if layers else 0)
                )
                if total <= dev.budget:
                    dev.modules.append(module)
                    dev.weights, dev.attn_layers, dev.scratch_fixed = weights, layers, scratch
                    break
                d += 1
        return devices

    def max_seq_len(self, mode: str, chunk: int, cap: int) -> int:
        """The largest multiple of PAGE <= cap that fits (0: not even PAGE tokens fit)."""
        hi = cap // PAGE
        if hi < 1 or self.place(mode, PAGE, chunk) is None:
            return 0
        if self.place(mode, hi * PAGE, chunk) is not None:
            return hi * PAGE
        lo = 1  # fits; hi does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.place(mode, mid * PAGE, chunk) is not None:
                lo = mid
            else:
                hi = mid
        return lo * PAGE


# ----------------------------------------------------------------------------------------------- helpers


def _gpus_in_cuda_order(facts: Facts) -> list[GPU]:
    gpus = list(facts.gpu.gpus)
    return sorted(gpus, key=lambda g: (g.cuda_index if g.cuda_index is not None else g.index, g.index))


def _budget(gpu: GPU, req: Request) -> tuple[int, str]:
    margin = req.margin_mib * MIB
    if req.budget == "free":
        if gpu.memory_free is None:
            return gpu.memory_total - margin, "total (free VRAM unknown for this GPU)"
        return gpu.memory_free - margin, "free"
    return gpu.memory_total - margin, "total"


def _overheads(req: Request) -> Any:
    return req.overheads if req.overheads is not None else memory.DEFAULT_OVERHEADS


def _reserve(overheads: Any, device: int, n_devices: int) -> int:
    """Per GPU: the CUDA context and the allocator's slack. A manual gpu_split adds no exllamav2 reserve."""
    return overheads.cuda_context_bytes + overheads.allocator_slack_bytes


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def _fmt_mib(n: int) -> str:
    return f"{n / MIB:,.0f} MiB"


def _fmt_gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def _target(m: _Model, req: Request) -> tuple[int, str]:
    if req.context is not None:
        return min(_round_up(req.context, PAGE), MAX_CONTEXT), f"--context {req.context}"
    mpe = max(PAGE, m.max_position_embeddings // PAGE * PAGE)
    return min(mpe, MAX_CONTEXT), f"the model's max_position_embeddings ({m.max_position_embeddings})"


def _exllamav2_version(facts: Facts, warnings: list[str]) -> str:
    version = facts.version_of("exllamav2")
    if version is None:
        warnings.append(
            f"exllamav2 is not installed in the target interpreter; planned for {LATEST_EXLLAMAV2}"
        )
        return LATEST_EXLLAMAV2
    return version


# -------------------------------------------------------------------------------------------------- plan


def plan(facts: Facts, model: Any, **request: Any) -> Plan:
    """Plan backend, cache mode, context, chunk size and GPU split for `model` on the machine in `facts`.

    `model` is a `ModelSpec` or a reference `load_model_spec` accepts (directory, `yi-34b@4.0bpw`).
    Keyword options: see `Request`. Raises `UsageError` (bad options, no GPU; `OptionError` names the
    keyword argument), `ModelSpecError` / `SpecialFileError` (a model reference that does not load),
    `BackendRefusedError` (a forced backend that is invalid here) or `DoesNotFitError` (not even 256
    tokens fit).
    """
    if not isinstance(facts, Facts):
        raise OptionError("facts", facts, "must be a Facts document (detect() or what-if)")
    req = Request.from_kwargs(request)
    if isinstance(model, (str, os.PathLike)):
        from exlx_autocfg.model.load import load_model_spec

        model = load_model_spec(model)
    elif not hasattr(model, "num_hidden_layers"):
        raise OptionError("model", model, "must be a ModelSpec, a model directory or a "
                          "catalog reference")
    m = _model(model)
    all_gpus = _gpus_in_cuda_order(facts)
    if not all_gpus:
        problems = (
            "; ".join(facts.gpu.problems) if facts.gpu.problems else "no NVIDIA or AMD GPU was detected"
        )
        raise UsageError(
            f"no GPU to plan for on this machine ({problems})",
            hint="plan for a GPU from the table with --gpu NAME, e.g. --gpu 'RTX 3090'",
        )
    warnings: list[str] = []
    exl2 = _exllamav2_version(facts, warnings)
    if facts.problems and not facts.what_if:
        warnings.extend(f"detect: {problem}" for problem in facts.problems)
    gpus = all_gpus
    try:
        result = _plan_on(facts, m, gpus, exl2, req, warnings)
    except BackendRefusedError:
        # A forced backend may still run on the first GPUs alone (a weak card at the end of the order).
        usable = [
            n
            for n in range(len(gpus) - 1, 0, -1)
            if not select(_query(facts, m, gpus[:n], exl2)).rejected.get(str(req.backend))
        ]
        if not usable:
            raise
        gpus = gpus[: usable[0]]
        warnings.append(
            f"--backend {req.backend} is not valid on "
            + ", ".join(f"#{g.index} {g.name}" for g in all_gpus[usable[0] :])
            + ": planned without them"
        )
        result = _plan_on(facts, m, gpus, exl2, req, warnings)
    last = max(i for i, dev in enumerate(result.devices) if dev.modules)
    if last + 1 < len(gpus):
        # GPUs after the last module are not needed. Only the GPUs in use run attention: re-judge the backend
        # on those (a weak card left idle must not veto flash-attn), and re-plan if that changes it.
        keep = gpus[: last + 1]
        if select(_query(facts, m, keep, exl2), req.backend).backend != result.selection.backend:
            result = _plan_on(facts, m, keep, exl2, req, warnings)
        else:
            result.devices = result.devices[: last + 1]
        gpus = keep
    unused = [g for g in all_gpus if g not in gpus]
    return _assemble(facts, model, m, gpus, exl2, req, result, warnings, unused)


def _query(facts: Facts, m: _Model, gpus: list[GPU], exl2: str) -> BackendQuery:
    return BackendQuery(
        facts=facts, gpus=tuple(gpus), exllamav2=exl2, softcap=m.softcap, sliding_window=m.sliding_window
    )


@dataclass
class _Result:
    selection: Selection
    solver: _Solver
    target: int
    target_why: str
    by_mode: dict[str, int]  # best max_seq_len per mode (0 = does not fit)
    by_mode_chunk: dict[str, dict[int, int]]
    mode: str
    mode_why: str
    mode_rejected: dict[str, str]
    chunk: int
    chunk_why: str
    max_seq_len: int
    devices: list[_Device]
    costs: _Costs
    budget_kinds: list[str]


def _plan_on(
    facts: Facts, m: _Model, gpus: list[GPU], exl2: str, req: Request, warnings: list[str]
) -> _Result:
    selection = select(_query(facts, m, gpus, exl2), req.backend)
    overheads = _overheads(req)
    budgets_kinds = [_budget(g, req) for g in gpus]
    budgets = [b for b, _ in budgets_kinds]
    reserves = [_reserve(overheads, i, len(gpus)) for i in range(len(gpus))]
    solver = _Solver(m, selection.backend, budgets, reserves, req)
    target, target_why = _target(m, req)

    modes = (
        [req.cache]
        if req.cache
        else [
            mode
            for mode in CACHE_MODES
            if not req.min_cache_precision
            or CACHE_MODES.index(mode) <= CACHE_MODES.index(req.min_cache_precision)
        ]
    )
    chunks = [req.chunk_size] if req.chunk_size else list(CHUNK_SIZES)
    # The table goes up to the model's own limit even when the target is lower, so users see the headroom.
    ceiling = max(target, _target(m, Request())[0])
    by_mode_chunk = {
        mode: {ch: solver.max_seq_len(mode, ch, ceiling) for ch in chunks} for mode in CACHE_MODES
    }
    chunk_by_mode = {mode: _pick_chunk(by_mode_chunk[mode], target) for mode in CACHE_MODES}
    by_mode = {mode: by_mode_chunk[mode][chunk_by_mode[mode]] for mode in CACHE_MODES}

    if not any(by_mode[mode] for mode in modes):
        raise DoesNotFitError(_does_not_fit(solver, gpus, modes, chunks))

    reaching = [mode for mode in modes if by_mode[mode] >= target]
    rejected: dict[str, str] = {}
    if req.cache:
        mode, why = req.cache, f"forced by --cache {req.cache}"
    elif reaching:
        mode = reaching[0]
        why = f"the most precise cache that reaches the target context {target} ({target_why})"
    else:
        mode = max(modes, key=lambda md: (by_mode[md], -CACHE_MODES.index(md)))
        why = f"no cache mode reaches the target {target} ({target_why}); {mode} gives the longest context"
    for other in CACHE_MODES:
        if other == mode:
            continue
        if other not in modes:
            rejected[other] = (
                "not allowed by --min-cache-precision " + str(req.min_cache_precision)
                if not req.cache
                else f"--cache {req.cache} given"
            )
        elif by_mode[other] == 0:
            rejected[other] = "does not fit at any context"
        elif CACHE_MODES.index(other) < CACHE_MODES.index(mode):
            rejected[other] = f"reaches only {by_mode[other]} tokens"
        else:
            rejected[other] = f"coarser than {mode}" + (
                f" (reaches {by_mode[other]})" if by_mode[other] != by_mode[mode] else ""
            )
    max_seq_len = min(by_mode[mode], target)
    if max_seq_len < target and (req.context is not None or req.cache):
        warnings.append(f"the target context {target} does not fit with {mode} cache; planned {max_seq_len}")

    chunk = chunk_by_mode[mode]
    per_chunk = by_mode_chunk[mode]
    if len(chunks) == 1:
        chunk_why = f"forced by --chunk-size {chunk}"
    else:
        others = ", ".join(f"{ch} reaches {per_chunk[ch]}" for ch in chunks if ch != chunk)
        if chunk == max(chunks):
            tolerance = f"{CHUNK_TOLERANCE:.0%}"
            chunk_why = f"exllamav2's default max_input_len: a smaller chunk gains under {tolerance} context"
        else:
            chunk_why = (
                f"the largest chunk within {CHUNK_TOLERANCE:.0%} of the longest context any chunk reaches: "
                "the attention transients grow with chunk x context"
            )
        chunk_why += f" ({others})"
    chunk = min(chunk, max_seq_len)
    devices = solver.place(mode, max_seq_len, chunk)
    assert devices is not None  # max_seq_len came from the same placement
    return _Result(
        selection=selection,
        solver=solver,
        target=target,
        target_why=target_why,
        by_mode=by_mode,
        by_mode_chunk=by_mode_chunk,
        mode=mode,
        mode_why=why,
        mode_rejected=rejected,
        chunk=chunk,
        chunk_why=chunk_why,
        max_seq_len=max_seq_len,
        devices=devices,
        costs=solver.costs(mode, max_seq_len, chunk),
        budget_kinds=[k for _, k in budgets_kinds],
    )


def _pick_chunk(per_chunk: dict[int, int], target: int) -> int:
    """The largest chunk whose context is within CHUNK_TOLERANCE of the best chunk's (or reaches the target):
    prefill speed grows with the chunk; a couple of percent of context is not worth a 4x slower prefill."""
    best = max(per_chunk.values())
    goal = min(target, best - int(best * CHUNK_TOLERANCE) // PAGE * PAGE)
    return max(ch for ch, n in per_chunk.items() if n >= goal)


def _does_not_fit(solver: _Solver, gpus: list[GPU], modes: list[str], chunks: list[int]) -> str:
    """One line: how much is missing, for weights alone or at the smallest context."""
    mods = solver.modules(min(chunks))
    weights = sum(mod.weight_bytes for mod in mods)
    usable = sum(max(0, b - r) for b, r in zip(solver.budgets, solver.reserves, strict=True))
    names = " + ".join(g.name for g in gpus)
    if weights > usable:
        return (
            f"model weights need {_fmt_gib(weights)} on the GPU but {names} "
            f"{'offers' if len(gpus) == 1 else 'offer'} {_fmt_gib(usable)} after "
            f"reserves and margin: {_fmt_gib(weights - usable)} missing"
        )
    mode, chunk = modes[-1], min(chunks)
    c = solver.costs(mode, PAGE, min(chunk, PAGE))
    attn = sum(1 for mod in mods if mod.has_cache)
    need = (
        weights
        + attn * c.cache_per_layer
        + len(gpus) * (c.staging + c.rope + c.activations + c.attention)
        + max(mod.scratch_fixed_bytes for mod in mods)
        + sum(solver.reserves)
    )
    total_budget = sum(solver.budgets)
    missing = max(need - total_budget, 0)
    tail = f"{_fmt_gib(missing)} missing" if missing else "the modules do not split across the GPUs"
    return (
        f"the model does not fit at any context: at {PAGE} tokens with {mode} cache it needs "
        f"{_fmt_gib(need)} on {names} (budget {_fmt_gib(total_budget)}): {tail}"
    )


# -------------------------------------------------------------------------------------------- gpu split


def _set_device_map_allocation(m: _Model, res: _Result, req: Request) -> list[float]:
    """GB per GPU for exllamav2's `model.load(gpu_split)` that makes its `set_device_map` place exactly the
    planned modules: halfway between "all planned modules fit" and "the next one would fit too".

    `set_device_map` (model.py @ 0.3.2) subtracts RoPE tables, the hidden state and the mask from each
    allocation, then places modules while footprint + max scratch_space() + max temp_attn_size() fits; it
    does not count the cache, so the allocation, not the VRAM, decides the split.
    """
    spec = m.spec
    seq, chunk, batch = res.max_seq_len, res.chunk, req.batch_size
    constant = 4 * m.head_dim * seq  # sin + cos tables, fp16 (set_device_map: sincos_size * 2)
    state = m.hidden_size * chunk * batch * 2
    mask = chunk * chunk * batch * 2
    temp_attn = memory.manual_split_attn_reserve_bytes(
        spec, chunk * chunk, seq, flash_or_xformers=res.selection.backend in ("flash_attn", "xformers")
    )
    order = [
        c
        for c in memory.module_costs(spec, max_input_len=chunk, max_batch_size=batch, max_seq_len=seq)
        if not c.on_cpu
    ]

    def needed(mods: list[Any]) -> int:
        foot = sum(x.weight_bytes for x in mods)
        scratch = max((x.scratch_bytes for x in mods), default=0)
        attn = temp_attn if any(x.kind == "attn" for x in mods) else 0
        return constant + state + mask + foot + scratch + attn

    split: list[float] = []
    position = 0
    for i, dev in enumerate(res.devices):
        mods = order[position : position + len(dev.modules)]
        position += len(dev.modules)
        fit = needed(mods)
        if i == len(res.devices) - 1 or position >= len(order):
            alloc = max(fit, dev.budget)
        else:
            alloc = (fit + needed([*mods, order[position]])) // 2
        split.append(round(alloc / GIB, 4))
    return split


# -------------------------------------------------------------------------------------------- assemble


def _assemble(
    facts: Facts,
    spec: Any,
    m: _Model,
    gpus: list[GPU],
    exl2: str,
    req: Request,
    res: _Result,
    warnings: list[str],
    unused: list[GPU],
) -> Plan:
    sel = res.selection
    reasons: list[Reason] = []
    if unused:
        reasons.append(
            Reason(
                "gpus",
                ", ".join(f"#{g.index}" for g in gpus),
                f"the model and its cache fit on {len(gpus)} GPU(s) in exllamav2's order; not needed: "
                + ", ".join(f"#{g.index} {g.name}" for g in unused),
            )
        )
    if sel.forced:
        backend_why = f"forced by --backend {sel.backend} (valid here)"
    else:
        backend_why = f"the highest-ranked valid backend in exllamav2's precedence ({' > '.join(BACKENDS)})"
    weakest = min((g for g in gpus if g.cc), key=lambda g: g.cc, default=None)
    if weakest is not None and len(gpus) > 1:
        backend_why += f"; judged on the weakest GPU in use, {weakest.name} (CC {weakest.compute_capability})"
    reasons.append(
        Reason(
            "backend", sel.backend, backend_why, {name: "; ".join(rs) for name, rs in sel.rejected.items()}
        )
    )
    on = [flag for flag, value in sel.switches.items() if value]
    reasons.append(
        Reason(
            "switches",
            ", ".join(on) or "none",
            "exllamav2 tries flash_attn > xformers > sdpa > matmul at every forward; these switches make it "
            f"land on {sel.backend} and keep it off invalid backends for padded batches",
        )
    )
    if sel.paged:
        reasons.append(
            Reason("paged", "true", "flash-attn >= 2.5.7: the dynamic generator can run paged (batching)")
        )
    else:
        reasons.append(
            Reason(
                "paged",
                "false",
                "paged attention needs flash-attn >= 2.5.7; unpaged, batch size 1"
                if sel.backend != "flash_attn"
                else "this flash-attn has no paged attention (< 2.5.7)",
            )
        )
    reasons.append(Reason("cache_mode", res.mode, res.mode_why, res.mode_rejected))
    capped = res.max_seq_len >= res.target
    seq_why = (
        f"capped by the target {res.target} ({res.target_why}); it fits within every GPU's budget"
        if capped
        else f"the largest multiple of {PAGE} tokens at which every GPU stays within its budget "
        f"(+{PAGE} does not fit)"
    )
    reasons.append(Reason("max_seq_len", str(res.max_seq_len), seq_why))
    reasons.append(Reason("chunk_size", str(res.chunk), res.chunk_why))
    kinds = sorted(set(res.budget_kinds))
    reasons.append(
        Reason(
            "budget",
            "/".join(kinds),
            f"per GPU: {' / '.join(kinds)} VRAM minus a {req.margin_mib} MiB safety margin; the CUDA context "
            "and the allocator's slack are planned as reserve",
        )
    )

    memory_rows: list[DeviceMemory] = []
    for gpu, dev in zip(gpus, res.devices, strict=True):
        parts = dev.parts(res.costs)
        layers = sorted({mod.layer for mod in dev.modules if mod.layer is not None})
        memory_rows.append(
            DeviceMemory(
                gpu_index=gpu.index,
                budget_bytes=dev.budget,
                weights_bytes=parts["weights"],
                cache_bytes=parts["cache"] + parts["staging"],
                scratch_bytes=parts["scratch_fixed"]
                + parts["rope"]
                + parts["activations"]
                + parts["attention"],
                reserve_bytes=parts["reserve"],
                total_bytes=sum(parts.values()),
                layers=layers,
                parts=parts,
            )
        )
    gpu_split = None
    if len(gpus) > 1:
        gpu_split = _set_device_map_allocation(m, res, req)
        placed = ", ".join(
            f"{g.name} #{g.index}: layers {row.layers[0]}-{row.layers[-1]}"
            if row.layers
            else f"{g.name}: none"
            for g, row in zip(gpus, memory_rows, strict=True)
        )
        reasons.append(
            Reason(
                "gpu_split",
                ", ".join(f"{x:g}" for x in gpu_split),
                "modules placed in exllamav2's order (layers in file order, lm_head last), each "
                f"GPU filled to its budget with its layers' cache: {placed}; values are GB for "
                "model.load(gpu_split) so that set_device_map reproduces this placement",
            )
        )

    warnings.extend(sel.warnings)
    if facts.what_if:
        libs = ", ".join(f"{n} {lib.version}" for n, lib in sorted(facts.libraries.items()) if lib.installed)
        warnings.append(f"what-if plan (facts from the GPU table and assumed versions: {libs or 'none'})")
        if facts.gpu.source == "table":
            from exlx_autocfg.facts.what_if import what_if_gpu_order  # code plan.what_if.gpu_order

            order = what_if_gpu_order(facts.gpu.gpus)
            if order is not None:
                warnings.append(order.message)
    cuda_gpus = [g for g in gpus if g.vendor == "nvidia"]
    exl3_cc = version_of(rules()["exl3"]["min_cc"])
    if (
        cuda_gpus
        and len(cuda_gpus) == len(gpus)
        and all(g.cc and version_of(g.compute_capability) >= exl3_cc for g in gpus)
    ):
        warnings.append(
            "every GPU has compute capability >= 8.0: ExLlamaV3 (EXL3) runs here, is maintained and "
            "quantizes more accurately; EXL2/exllamav2 is archived"
        )
    if req.budget == "total":
        busy = [g for g in gpus if g.memory_free is not None and g.memory_total - g.memory_free > 512 * MIB]
        for g, row in zip(gpus, memory_rows, strict=True):
            if g in busy and g.memory_free is not None and row.total_bytes > g.memory_free:
                warnings.append(
                    f"{g.name} #{g.index} has only {_fmt_mib(g.memory_free)} free now (other processes); "
                    "the plan needs more: pass --budget free"
                )
    for g in gpus:
        if g.mig_mode:
            warnings.append(
                f"{g.name} #{g.index} is in MIG mode: budget from the GPU table may exceed the instance"
            )

    torch = facts.lib("torch")
    computed_for = {
        "exllamav2": exl2,
        "libraries": {
            n: {"version": lib.version, "local_tag": lib.local_tag}
            for n, lib in sorted(facts.libraries.items())
            if lib.installed
        },
        "what_if": facts.what_if,
        "torch_cuda": (torch.build or {}).get("cuda"),
        "overheads": asdict(_overheads(req)) if hasattr(_overheads(req), "__dataclass_fields__") else None,
    }
    summary = spec.summary()
    return Plan(
        model=summary,
        gpus=[
            PlanGPU(
                index=g.index,
                name=g.name,
                compute_capability=g.compute_capability,
                memory_total=g.memory_total,
                memory_free=g.memory_free,
                uuid=g.uuid,
                pci_bus_id=g.pci_bus_id,
                cuda_index=g.cuda_index,
                vendor=g.vendor,
            )
            for g in gpus
        ],
        backend=sel.backend,
        cache_mode=res.mode,
        max_seq_len=res.max_seq_len,
        chunk_size=res.chunk,
        max_attention_size=res.chunk * res.chunk,
        max_batch_size=req.batch_size,
        paged=sel.paged,
        no_flash_attn=sel.switches["no_flash_attn"],
        no_xformers=sel.switches["no_xformers"],
        no_sdpa=sel.switches["no_sdpa"],
        gpu_split=gpu_split,
        autosplit=False,
        autosplit_reserve_bytes=[],
        kv_cache_bytes_per_token={mode: memory.kv_cache_bytes_per_token(spec, mode) for mode in CACHE_MODES},
        max_seq_len_by_cache_mode=dict(res.by_mode),
        memory=memory_rows,
        reasons=reasons,
        warnings=list(dict.fromkeys(warnings)),
        request=req.to_dict(),
        computed_for=computed_for,
        tool_version=__version__,
    )


def device_totals_at(facts: Facts, model: Any, plan_: Plan, seq_len: int, **request: Any) -> list[int] | None:
    """The planner's own arithmetic at another context (same backend, mode, chunk, GPUs): total bytes per GPU,
    or None when the modules no longer fit. For tests and `bench/`: a plan at `max_seq_len` fits, at
    `max_seq_len + 256` it does not (unless capped by the target)."""
    req = Request.from_kwargs(request)
    m = _model(model)
    by_index = {g.index: g for g in facts.gpu.gpus}
    gpus = [by_index[p.index] for p in plan_.gpus]
    overheads = _overheads(req)
    budgets = [_budget(g, req)[0] for g in gpus]
    reserves = [_reserve(overheads, i, len(gpus)) for i in range(len(gpus))]
    solver = _Solver(m, plan_.backend, budgets, reserves, req)
    devices = solver.place(plan_.cache_mode, seq_len, plan_.chunk_size)
    if devices is None:
        return None
    c = solver.costs(plan_.cache_mode, seq_len, min(plan_.chunk_size, seq_len))
    return [d.total(c) for d in devices]
