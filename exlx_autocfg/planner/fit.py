"""The fit solver, pure and generic: place modules on GPUs in order, and find the largest context that fits.

`fit(budgets, reserves, modules, costs)` is next-fit in exllamav2's module order (layers in file order,
lm_head last): each GPU takes modules until the next would push its planned bytes over its budget. What a
GPU's planned bytes are is `device_total`, the one formula (its breakdown by part is `device_parts`); a GPU
holding no module costs nothing and is left out of the plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

PARTS = ("weights", "cache", "staging", "scratch_fixed", "rope", "activations", "attention", "reserve")


@dataclass(frozen=True)
class Module:
    """One exllamav2 module as the solver places it."""

    key: str
    kind: str  # attn | mlp | moe | parallel_decoder | norm | lm_head (memory.ModuleCost.kind)
    layer: int | None
    weight_bytes: int
    scratch_fixed_bytes: int
    has_cache: bool  # holds one layer of the KV cache


@dataclass(frozen=True)
class Costs:
    """The context-dependent costs at one (cache mode, max_seq_len, chunk) point."""

    cache_per_layer: int  # K/V (+ scales) of one layer
    staging: int  # the quantized cache's FP16 staging pair, once per device holding attention
    rope: int  # sin/cos tables, once per device
    activations: int  # the hidden state of a chunk and its residual, once per device
    attention: int  # attention transients for the backend, once per device holding attention


def device_total(c: Costs, weights: int, cache_layers: int, scratch_fixed: int, reserve: int) -> int:
    """The planned bytes of a GPU in use (the sum of `device_parts`)."""
    total = weights + scratch_fixed + c.rope + c.activations + reserve
    if cache_layers:
        total += cache_layers * c.cache_per_layer + c.staging + c.attention
    return total


def device_parts(
    c: Costs, weights: int, cache_layers: int, scratch_fixed: int, reserve: int
) -> dict[str, int]:
    """`device_total` by part (tests/test_planner_fit.py keeps the two equal)."""
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

    def parts(self, c: Costs) -> dict[str, int]:
        if not self.modules:
            return dict.fromkeys(PARTS, 0)
        return device_parts(c, self.weights, self.cache_layers, self.scratch_fixed, self.reserve)

    def total(self, c: Costs) -> int:
        if not self.modules:
            return 0
        return device_total(c, self.weights, self.cache_layers, self.scratch_fixed, self.reserve)

    @property
    def layers(self) -> list[int]:
        return sorted({m.layer for m in self.modules if m.layer is not None})


def fit(
    budgets: Sequence[int], reserves: Sequence[int], modules: Sequence[Module], costs: Costs
) -> list[Placed] | None:
    """Next-fit of `modules` in order over GPUs with these budgets and reserves; None: they do not fit."""
    devices = [Placed(i, b, r) for i, (b, r) in enumerate(zip(budgets, reserves, strict=True))]
    d = 0
    for module in modules:
        while True:
            if d >= len(devices):
                return None
            dev = devices[d]
            weights = dev.weights + module.weight_bytes
            layers = dev.cache_layers + module.has_cache
            scratch = max(dev.scratch_fixed, module.scratch_fixed_bytes)
            if device_total(costs, weights, layers, scratch, dev.reserve) <= dev.budget:
                dev.modules.append(module)
                dev.weights, dev.cache_layers, dev.scratch_fixed = weights, layers, scratch
                break
            d += 1
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
