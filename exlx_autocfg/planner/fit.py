"""The fit solver, pure and generic: place modules on GPUs in order, and find the largest context that fits.

`fit(budgets, reserves, modules, costs)` is next-fit in exllamav2's module order (layers in file order,
lm_head last): each GPU takes modules until the next would push its planned bytes over its budget. What a
GPU's planned bytes are is `device_total`, the one formula (its breakdown by part is `device_parts`); a GPU
holding no module costs nothing and is left out of the plan.

What loads beside the model enters the same formula: LoRA tensors ride on the modules they attach to
(`Module.lora_bytes`, placed with them), and a draft model, loaded before the model, is a fixed `Beside`
per GPU: its persistent bytes are held, its transients overlap the model's in time only (the caching
allocator reuses the blocks), so a GPU pays the larger of the two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

PARTS = ("weights", "cache", "staging", "scratch_fixed", "rope", "activations", "attention", "reserve")
# The memory table's columns (DeviceMemory weights / cache / scratch / reserve) and the parts in each; parts
# beside the model appear in a GPU's breakdown only when present.
CATEGORY = {
    "weights": "weights", "lora": "weights", "draft_weights": "weights",
    "cache": "cache", "staging": "cache", "draft_cache": "cache", "draft_staging": "cache",
    "scratch_fixed": "scratch", "rope": "scratch", "activations": "scratch", "attention": "scratch",
    "lora_transient": "scratch", "draft_scratch": "scratch", "draft_rope": "scratch",
    "draft_transient": "scratch", "tp_scratch": "scratch", "tp_transient": "scratch", "load_peak": "scratch",
    "vision_weights": "weights", "vision_rope": "scratch", "vision_transient": "scratch",
    "reserve": "reserve",
}


@dataclass(frozen=True)
class Module:
    """One exllamav2 module as the solver places it."""

    key: str
    kind: str  # attn | mlp | moe | parallel_decoder | norm | lm_head (memory.ModuleCost.kind)
    layer: int | None
    weight_bytes: int
    scratch_fixed_bytes: int
    has_cache: bool  # holds one layer of the KV cache
    lora_bytes: int = 0  # LoRA tensors attached to this module's linears (ExLlamaV2Lora: on its device)


@dataclass(frozen=True)
class Costs:
    """The context-dependent costs at one (cache mode, max_seq_len, chunk) point."""

    cache_per_layer: int  # K/V (+ scales) of one layer
    staging: int  # the quantized cache's FP16 staging pair, once per device holding attention
    rope: int  # sin/cos tables, once per device
    activations: int  # the hidden state of a chunk and its residual, once per device
    attention: int  # attention transients for the backend, once per device holding attention
    lora_transient: int = 0  # one forward through the adapters, once per device holding LoRA tensors


@dataclass(frozen=True)
class Beside:
    """What is already on a GPU when the model is placed (a draft model, the vision tower): `parts` are held
    for good (their sum is `held`), `transient` is one forward's (or one image's) worth that overlaps the
    model's transients only in time; `transient_part` names it in the breakdown."""

    parts: tuple[tuple[str, int], ...] = ()
    transient: int = 0
    transient_part: str = "draft_transient"

    @property
    def held(self) -> int:
        return sum(n for _, n in self.parts)

    def plus(self, other: Beside) -> Beside:
        """Both on one GPU: held parts add up; the transients run one after the other (the generator's loop
        and image embedding share one thread), so the larger one counts."""
        if not other.parts and not other.transient:
            return self
        if not self.parts and not self.transient:
            return other
        bigger = self if self.transient >= other.transient else other
        return Beside(self.parts + other.parts, bigger.transient, bigger.transient_part)


NOTHING_BESIDE = Beside()


def _model_transient(c: Costs, cache_layers: int, lora: int) -> int:
    return c.activations + (c.attention if cache_layers else 0) + (c.lora_transient if lora else 0)


def device_total(
    c: Costs, weights: int, cache_layers: int, scratch_fixed: int, reserve: int, *, lora: int = 0,
    beside: Beside = NOTHING_BESIDE,
) -> int:
    """The planned bytes of a GPU in use (the sum of `device_parts`)."""
    total = weights + scratch_fixed + c.rope + c.activations + reserve
    if cache_layers:
        total += cache_layers * c.cache_per_layer + c.staging + c.attention
    if lora:
        total += lora + c.lora_transient
    if beside is not NOTHING_BESIDE:
        total += beside.held + max(0, beside.transient - _model_transient(c, cache_layers, lora))
    return total


def device_parts(
    c: Costs, weights: int, cache_layers: int, scratch_fixed: int, reserve: int, *, lora: int = 0,
    beside: Beside = NOTHING_BESIDE,
) -> dict[str, int]:
    """`device_total` by part (tests/test_planner_fit.py keeps the two equal); the parts beside the model
    (lora, draft_*) only when present."""
    has_cache = cache_layers > 0
    parts = {
        "weights": weights,
        "cache": cache_layers * c.cache_per_layer,
        "staging": c.staging if has_cache else 0,
        "scratch_fixed": scratch_fixed,
        "rope": c.rope,
        "activations": c.activations,
        "attention": c.attention if has_cache else 0,
        "reserve": reserve,
    }
    if lora:
        parts |= {"lora": lora, "lora_transient": c.lora_transient}
    if beside is not NOTHING_BESIDE:
        parts |= dict(beside.parts)
        parts[beside.transient_part] = max(0, beside.transient - _model_transient(c, cache_layers, lora))
    return parts


def categories(parts: dict[str, int]) -> dict[str, int]:
    """A breakdown summed into the memory table's columns (CATEGORY)."""
    out = {"weights": 0, "cache": 0, "scratch": 0, "reserve": 0}
    for name, n in parts.items():
        out[CATEGORY[name]] += n
    return out


@dataclass
class Placed:
    """One GPU after placement: the modules it holds and their accounting."""

    index: int  # position in the budgets list (CUDA order)
    budget: int
    reserve: int
    modules: list[Module] = field(default_factory=list)
    weights: int = 0
    cache_layers: int = 0
    scratch_fixed: int = 0
    lora: int = 0
    beside: Beside = NOTHING_BESIDE

    @property
    def in_use(self) -> bool:
        """Holds a module of the model, or something loaded beside it."""
        return bool(self.modules) or self.beside.held > 0

    def parts(self, c: Costs) -> dict[str, int]:
        if not self.modules:
            if self.beside.held:  # only what loads beside the model: it, its transient and the CUDA context
                return {**dict(self.beside.parts), self.beside.transient_part: self.beside.transient,
                        "reserve": self.reserve}
            return dict.fromkeys(PARTS, 0)
        return device_parts(c, self.weights, self.cache_layers, self.scratch_fixed, self.reserve,
                            lora=self.lora, beside=self.beside)

    def total(self, c: Costs) -> int:
        if not self.modules:
            return self.beside.held + self.beside.transient + self.reserve if self.beside.held else 0
        return device_total(c, self.weights, self.cache_layers, self.scratch_fixed, self.reserve,
                            lora=self.lora, beside=self.beside)

    @property
    def layers(self) -> list[int]:
        return sorted({m.layer for m in self.modules if m.layer is not None})


def fit(
    budgets: Sequence[int], reserves: Sequence[int], modules: Sequence[Module], costs: Costs,
    beside: Sequence[Beside] | None = None,
) -> list[Placed] | None:
    """Next-fit of `modules` in order over GPUs with these budgets and reserves (and, per GPU, what is
    already there: `beside`); None: they do not fit."""
    besides = list(beside) if beside is not None else [NOTHING_BESIDE] * len(budgets)
    devices = [Placed(i, b, r, beside=s) for i, (b, r, s) in enumerate(zip(budgets, reserves, besides,
                                                                            strict=True))]
    if any(dev.beside.held + dev.beside.transient + dev.reserve > dev.budget for dev in devices
           if dev.beside.held):
        return None  # what loads first does not fit where it was placed
    # The hot loop of every plan: device_total inlined for a GPU with nothing beside the model and no
    # adapter bytes (the same sum; tests/test_planner_fit.py holds fit to device_total). An empty Beside
    # adds nothing, whether or not it is the NOTHING_BESIDE sentinel.
    plain = [not (s.parts or s.transient) for s in besides]
    per_device = costs.rope + costs.activations
    per_layer, with_cache = costs.cache_per_layer, costs.staging + costs.attention
    d, count = 0, len(devices)
    if not count:
        return None if modules else devices
    dev = devices[0]
    for module in modules:
        while True:
            weights = dev.weights + module.weight_bytes
            layers = dev.cache_layers + module.has_cache
            scratch = max(dev.scratch_fixed, module.scratch_fixed_bytes)
            lora = dev.lora + module.lora_bytes
            if lora or not plain[d]:
                total = device_total(costs, weights, layers, scratch, dev.reserve, lora=lora,
                                     beside=dev.beside)
            else:
                total = weights + scratch + per_device + dev.reserve + (layers * per_layer + with_cache
                                                                        if layers else 0)
            if total <= dev.budget:
                dev.modules.append(module)
                dev.weights, dev.cache_layers, dev.scratch_fixed, dev.lora = weights, layers, scratch, lora
                break
            d += 1
            if d >= count:
                return None
            dev = devices[d]
    return devices


def largest_fitting(fits: Callable[[int], bool], cap: int, step: int) -> int:
    """The largest multiple of `step` <= `cap` for which `fits` holds (0: not even `step`), assuming `fits`
    is monotone (more context never fits where less did not)."""
    hi = cap // step
    if hi < 1 or not fits(step):
        return 0
    if fits(hi * step):
        return hi * step
    lo = 1  # fits; hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid * step):
            lo = mid
        else:
            hi = mid
    return lo * step
