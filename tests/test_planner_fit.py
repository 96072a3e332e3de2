"""fit's hot loop inlines device_total for plain GPUs: hold it to a next-fit written out here over
device_total itself, for GPUs with nothing, an empty Beside or a draft/vision tower beside the model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from exlx_autocfg.planner.fit import NOTHING_BESIDE, Beside, Costs, Module, device_total, fit

MIB = 1 << 20
UNIT = 100 * MIB  # coarse sizes, so that budgets are often reached exactly and one part more or less shows


def sizes(most: int) -> st.SearchStrategy[int]:
    return st.integers(0, most).map(lambda n: n * UNIT)


costs_st = st.builds(
    Costs,
    cache_per_layer=sizes(3),
    staging=sizes(2),
    rope=sizes(1),
    activations=sizes(3),
    attention=sizes(3),
    lora_transient=sizes(1),
)
module_st = st.builds(
    Module,
    key=st.just("m"),
    kind=st.sampled_from(["attn", "mlp", "norm", "lm_head"]),
    layer=st.none(),
    weight_bytes=sizes(8),
    scratch_fixed_bytes=sizes(3),
    has_cache=st.booleans(),
    lora_bytes=st.sampled_from([0, 0, UNIT]),
)
beside_st = st.one_of(
    st.just(NOTHING_BESIDE),
    st.just(Beside()),
    st.builds(Beside, parts=st.just((("draft_weights", 3 * UNIT),)), transient=sizes(2)),
)


def next_fit_by_device_total(budgets, reserves, modules, costs, besides):
    """Reference: place each module on the current GPU while device_total stays within its budget."""
    state = [{"w": 0, "l": 0, "s": 0, "lora": 0, "mods": 0} for _ in budgets]
    for i, b in enumerate(besides):
        if b.held and b.held + b.transient + reserves[i] > budgets[i]:
            return None
    d = 0
    for m in modules:
        while True:
            if d >= len(budgets):
                return None
            g = state[d]
            w, layers, s, lora = (g["w"] + m.weight_bytes, g["l"] + m.has_cache,
                                  max(g["s"], m.scratch_fixed_bytes), g["lora"] + m.lora_bytes)
            if device_total(costs, w, layers, s, reserves[d], lora=lora, beside=besides[d]) <= budgets[d]:
                g.update(w=w, l=layers, s=s, lora=lora, mods=g["mods"] + 1)
                break
            d += 1
    return [g["mods"] for g in state]


@settings(max_examples=300, deadline=None)
@given(
    costs=costs_st,
    modules=st.lists(module_st, max_size=12),
    gpus=st.lists(st.tuples(sizes(30), sizes(3), beside_st),
                  min_size=1, max_size=3),
)
def test_fit_places_as_device_total_says(costs, modules, gpus):
    budgets, reserves, besides = (list(x) for x in zip(*gpus, strict=True))
    placed = fit(budgets, reserves, modules, costs, besides)
    expected = next_fit_by_device_total(budgets, reserves, modules, costs, besides)
    if expected is None:
        assert placed is None
        return
    assert placed is not None
    assert [len(p.modules) for p in placed] == expected
    for p in placed:
        if p.modules:
            assert p.total(costs) <= p.budget


@settings(max_examples=100, deadline=None)
@given(costs=costs_st, modules=st.lists(module_st, max_size=12),
       budgets=st.lists(sizes(30), min_size=1, max_size=3))
def test_an_empty_beside_places_as_nothing_beside(costs, modules, budgets):
    reserves = [0] * len(budgets)
    sentinel = fit(budgets, reserves, modules, costs, [NOTHING_BESIDE] * len(budgets))
    empty = fit(budgets, reserves, modules, costs, [Beside() for _ in budgets])
    assert _summary(sentinel, costs) == _summary(empty, costs)


def _summary(placed, costs):
    return None if placed is None else [(len(p.modules), p.total(costs)) for p in placed]
