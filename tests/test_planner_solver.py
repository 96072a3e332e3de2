"""The solver: never one token over, the cache/context policy, chunk choice, split, and does-not-fit."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from exlx_autocfg.errors import BackendRefusedError, DoesNotFitError, UsageError
from exlx_autocfg.exl2 import CACHE_MODES
from exlx_autocfg.exl2 import PAGE_SIZE as PAGE
from exlx_autocfg.facts.types import Facts, PythonFacts
from exlx_autocfg.facts.what_if import gpu_table, what_if_facts
from exlx_autocfg.findings import CODES
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.planner.core import device_totals_at, plan
from exlx_autocfg.planner.types import Plan

MIB = 1024**2
MODELS = [
    "llama3-8b@4.0bpw",
    "yi-34b@4.0bpw",
    "nous-capybara-34b@4.0bpw",
    "mistral-nemo-12b@6.0bpw",
    "llama3-70b@2.5bpw",
    "gemma2-9b@6.0bpw",
    "phi3-mini@6.0bpw",
    "mixtral-8x7b@3.5bpw",
]
NVIDIA = [row.id for row in gpu_table() if row.vendor == "nvidia"]


_SPECS: dict = {}


@pytest.fixture(scope="module")
def specs():
    if not _SPECS:
        _SPECS.update({ref: load_model_spec(ref) for ref in MODELS})
    return _SPECS


def check_tight(facts: Facts, spec, p: Plan, **request) -> None:
    """The plan's own arithmetic: fits at max_seq_len, does not at +256 unless capped by the target."""
    for row in p.memory:
        assert row.total_bytes <= row.budget_bytes
        assert row.total_bytes == sum(row.parts.values())
        assert row.total_bytes == row.weights_bytes + row.cache_bytes + row.scratch_bytes + row.reserve_bytes
    assert p.settings.max_seq_len % PAGE == 0 and p.settings.max_seq_len >= PAGE
    at = device_totals_at(facts, spec, p, p.settings.max_seq_len, **request)
    assert at is not None and at == [row.total_bytes for row in p.memory]
    target = request.get("context") or spec.max_position_embeddings // PAGE * PAGE
    target = -(-target // PAGE) * PAGE
    if p.settings.max_seq_len < target:
        assert device_totals_at(facts, spec, p, p.settings.max_seq_len + PAGE, **request) is None


@settings(max_examples=40, deadline=None)
@given(
    model=st.sampled_from(MODELS),
    gpus=st.lists(st.sampled_from(NVIDIA), min_size=1, max_size=3),
    cache=st.sampled_from([None, *CACHE_MODES]),
    context=st.one_of(st.none(), st.integers(min_value=1, max_value=300_000)),
    margin=st.integers(min_value=0, max_value=2048),
    xformers=st.booleans(),
)
def test_never_one_token_over(model, gpus, cache, context, margin, xformers):
    specs = _SPECS or {ref: load_model_spec(ref) for ref in MODELS}
    _SPECS.update(specs)
    facts = what_if_facts(gpus, ["torch==2.6.0", *(["xformers==0.0.29.post3"] if xformers else [])])
    request = {"cache": cache, "context": context, "margin_mib": margin}
    try:
        p = plan(facts, specs[model], **request)
    except DoesNotFitError as exc:
        assert "\n" not in exc.one_line() and "GiB" in exc.one_line()
        return
    if cache:
        assert p.settings.cache_mode == cache
    check_tight(facts, specs[model], p, **request)


LONG_CONTEXT = ["nous-capybara-34b@4.0bpw", "mistral-nemo-12b@6.0bpw", "llama3-70b@2.5bpw", "yi-34b@4.0bpw"]
SMALL = ["rtx-3060-12gb", "t4", "rtx-2080-ti-22gb", "rtx-3090", "p40", "rtx-4090", "l4", "v100-32gb"]


@settings(max_examples=30, deadline=None)
@given(
    model=st.sampled_from(LONG_CONTEXT),
    gpus=st.lists(st.sampled_from(SMALL), min_size=1, max_size=2),
    cache=st.sampled_from(CACHE_MODES),
    chunk=st.sampled_from([None, 256, 512, 2048]),
    margin=st.integers(min_value=0, max_value=4096),
)
def test_a_plan_short_of_its_target_is_one_page_from_not_fitting(model, gpus, cache, chunk, margin):
    """The solver's limit itself: whenever the plan falls short of the target (most of these long-context
    models on small GPUs do), the planned context fits and one more page does not, on the same GPUs."""
    specs = _SPECS or {ref: load_model_spec(ref) for ref in MODELS}
    _SPECS.update(specs)
    spec = specs.get(model) or load_model_spec(model)
    facts = what_if_facts(gpus, ["torch==2.6.0", "xformers==0.0.29.post3"])
    request = {"cache": cache, "chunk_size": chunk, "margin_mib": margin}
    try:
        p = plan(facts, spec, **request)
    except DoesNotFitError:
        assume(False)  # every passing example below runs the "+1 page does not fit" branch
        return
    target = spec.max_position_embeddings // PAGE * PAGE
    assume(p.settings.max_seq_len < target)
    assert p.reason("max_seq_len").code == "max_seq_len.fit_limit"
    at = device_totals_at(facts, spec, p, p.settings.max_seq_len, **request)
    assert at == [row.total_bytes for row in p.memory]
    assert device_totals_at(facts, spec, p, p.settings.max_seq_len + PAGE, **request) is None


def test_default_policy_most_precise_cache_reaching_the_target(specs):
    facts = what_if_facts(["4090"], ["flash-attn==2.7.4"])
    p = plan(facts, specs["llama3-8b@4.0bpw"])  # 8192 tokens: FP16 fits easily
    assert (p.settings.cache_mode, p.settings.max_seq_len) == ("FP16", 8192)
    assert p.max_seq_len_by_cache_mode["Q4"] >= p.max_seq_len_by_cache_mode["FP16"]
    assert "reaches the target context 8192" in p.reason("cache_mode").why


def test_the_default_policy_keeps_precision_once_the_context_is_sufficient(specs):
    """No mode reaches the model's own 200k target: 0.1.0 chased length into Q4; the policy keeps the most
    precise mode that reaches the sufficient context (profiles/policy.toml), and says what Q4 would give."""
    facts = what_if_facts(["2080ti-22gb"], ["xformers==0.0.29.post3"])
    p = plan(facts, specs["nous-capybara-34b@4.0bpw"])  # 200k tokens: nothing reaches it
    by_mode = p.max_seq_len_by_cache_mode
    assert by_mode["FP16"] < by_mode["Q8"] < 32768 <= by_mode["Q6"] < by_mode["Q4"] < 199_936
    assert p.settings.cache_mode == "Q6" and p.settings.max_seq_len == by_mode["Q6"]
    reason = p.reason("cache_mode")
    assert reason.code == "cache.sufficient_context" and reason.evidence["sufficient_context"] == 32768
    assert f"--context {by_mode['Q4']}" in reason.why and "--cache Q4" in reason.why
    assert [f.code for f in reason.rejected["Q4"]] == ["cache.precision_kept"]
    assert [(f.code, f.message) for f in reason.rejected["FP16"]] == [
        ("cache.shorter_context", f"reaches only {by_mode['FP16']} tokens")
    ]


def test_longest_context_when_the_asked_context_is_out_of_reach(specs):
    """With --context the user asked for length: no mode reaches it, so the longest wins (Q4)."""
    facts = what_if_facts(["2080ti-22gb"], ["xformers==0.0.29.post3"])
    p = plan(facts, specs["nous-capybara-34b@4.0bpw"], context=100_000)
    by_mode = p.max_seq_len_by_cache_mode
    assert p.settings.cache_mode == "Q4" and p.settings.max_seq_len == by_mode["Q4"] < 100_000
    assert p.reason("cache_mode").code == "cache.longest_context"
    assert "context.target_not_reached" in {w.code for w in p.warnings}


def test_nothing_sufficient_means_the_longest(specs):
    """A 70B on one 24 GB card: no mode reaches even the sufficient context, so the longest wins."""
    p = plan(what_if_facts(["3090"]), specs["llama3-70b@2.5bpw"])
    by_mode = p.max_seq_len_by_cache_mode
    assert max(by_mode.values()) < 32768  # not even Q4 reaches the sufficient context
    assert p.reason("cache_mode").code == "cache.longest_context"
    assert (p.settings.cache_mode, p.settings.max_seq_len) == ("Q4", by_mode["Q4"])


def test_context_and_precision_overrides(specs):
    facts = what_if_facts(["2080ti-22gb"], ["xformers==0.0.29.post3"])
    spec = specs["nous-capybara-34b@4.0bpw"]
    p = plan(facts, spec, context=20000)
    assert (
        p.settings.max_seq_len == 20224 and p.settings.cache_mode == "Q8"
    )  # FP16 reaches less than 20k here
    p = plan(facts, spec, context=20000, min_cache_precision="FP16")
    assert p.settings.cache_mode == "FP16" and p.settings.max_seq_len < 20000
    assert "not allowed by --min-cache-precision FP16" in p.reason("cache_mode").rejected_text("Q4")
    p = plan(facts, spec, cache="q6", context=8192)
    assert p.settings.cache_mode == "Q6" and p.settings.max_seq_len == 8192
    with pytest.raises(UsageError, match="cache='Q5'"):  # the keyword, from Python
        plan(facts, spec, cache="Q5")
    with pytest.raises(UsageError, match="unknown plan option"):
        plan(facts, spec, contxt=4096)


def test_xformers_fits_more_context_than_matmul_on_a_2080ti_22gb(specs):
    spec = specs["nous-capybara-34b@4.0bpw"]
    xf = plan(what_if_facts(["2080ti-22gb"], ["xformers==0.0.29.post3"]), spec)
    mm = plan(what_if_facts(["2080ti-22gb"]), spec)
    assert (xf.settings.backend, mm.settings.backend) == ("xformers", "matmul")
    assert mm.settings.no_sdpa and "WRONG" in mm.reason("backend").rejected_text("sdpa")
    assert [f.code for f in mm.reason("backend").rejected["sdpa"]] == ["backend.sdpa.causal_defect"]
    for mode in CACHE_MODES:
        assert xf.max_seq_len_by_cache_mode[mode] > mm.max_seq_len_by_cache_mode[mode]


def test_matmul_trades_chunk_size_for_context(specs):
    mm = plan(what_if_facts(["2080ti-22gb"]), specs["nous-capybara-34b@4.0bpw"])
    assert mm.settings.max_input_len < 2048  # matmul attention weights grow with chunk x context
    assert "the largest chunk within 3% of the longest context" in mm.reason("chunk_size").why


def test_weights_that_do_not_fit_name_what_is_missing(specs):
    with pytest.raises(DoesNotFitError) as info:
        plan(what_if_facts(["3060"]), specs["llama3-70b@2.5bpw"])
    line = info.value.one_line()
    assert line.startswith("model weights need") and "GiB missing" in line
    assert info.value.exit_code == 1


def test_split_in_exllamav2_order_lm_head_last(specs):
    p = plan(what_if_facts(["3090x2", "4090"]), specs["llama3-70b@2.5bpw"], context=32768)
    assert len(p.gpus) == len(p.settings.gpu_split) == len(p.memory) >= 2
    layers = [layer for row in p.memory for layer in row.layers]
    assert layers == sorted(layers) and set(layers) == set(range(80))
    assert p.memory[-1].parts["weights"] > 0
    assert all(x > 0 for x in p.settings.gpu_split)


def test_unused_gpus_are_not_in_the_plan(specs):
    p = plan(what_if_facts(["p40", "1080ti"]), specs["llama3-8b@4.0bpw"])
    assert [g.name for g in p.gpus] == ["Tesla P40"] and p.settings.gpu_split is None
    assert "GTX 1080 Ti" in p.reason("gpus").why


def test_weakest_gpu_in_use_decides_but_an_unused_one_does_not(specs):
    facts = what_if_facts(["3090", "p40"], ["flash-attn==2.7.4"])
    small = plan(facts, specs["llama3-8b@4.0bpw"])  # fits on the 3090 alone: the P40 is not in use
    assert small.settings.backend == "flash_attn" and len(small.gpus) == 1
    big = plan(facts, specs["llama3-70b@2.5bpw"], context=32768)  # needs both
    assert big.settings.backend != "flash_attn" and len(big.gpus) == 2
    assert "Tesla P40" in big.reason("backend").rejected_text("flash_attn")


def test_softcap_model_never_planned_on_a_backend_that_ignores_it(specs):
    facts = what_if_facts(["3090"], ["xformers==0.0.29.post3", "flash-attn==2.5.9"])
    p = plan(facts, specs["gemma2-9b@6.0bpw"])
    assert (
        p.settings.backend == "matmul"
        and p.settings.no_flash_attn
        and p.settings.no_xformers
        and p.settings.no_sdpa
    )


def test_exl3_advice_on_ampere_and_newer_only(specs):
    advice = "ExLlamaV3"
    assert any(advice in w.message for w in plan(what_if_facts(["4090"]), specs["llama3-8b@4.0bpw"]).warnings)
    assert not any(
        advice in w.message for w in plan(what_if_facts(["p40"]), specs["llama3-8b@4.0bpw"]).warnings
    )
    assert not any(
        advice in w.message for w in plan(what_if_facts(["mi300x"]), specs["llama3-8b@4.0bpw"]).warnings
    )


def test_budget_free_uses_detected_free_memory(specs):
    facts = what_if_facts(["3090"])
    facts.what_if = False
    facts.gpu.gpus[0].memory_free = 12 * 1024 * MIB
    total = plan(facts, specs["llama3-8b@4.0bpw"], context=65536, cache="FP16")
    free = plan(facts, specs["llama3-8b@4.0bpw"], context=65536, cache="FP16", budget="free")
    assert free.memory[0].budget_bytes == 12 * 1024 * MIB - 256 * MIB
    assert free.settings.max_seq_len < total.settings.max_seq_len
    assert any("--budget free" in w.message for w in total.warnings)
    assert "gpu.busy" in {w.code for w in total.warnings}


def test_no_gpu_is_a_clear_error(specs):
    facts = Facts(python=PythonFacts(executable="python", version="3.11"))
    facts.gpu.problems.append("NVML library not found")
    with pytest.raises(UsageError) as info:
        plan(facts, specs["llama3-8b@4.0bpw"])
    line = info.value.one_line()
    assert "no GPU" in line and "NVML library not found" in line and "--gpu" in line


def test_plan_json_shape(specs):
    p = plan(what_if_facts(["3090x2"]), specs["llama3-70b@2.5bpw"], context=16384)
    d = p.to_dict()
    for key in (
        "schema",
        "model",
        "gpus",
        "settings",
        "kv_cache_bytes_per_token",
        "max_seq_len_by_cache_mode",
        "memory",
        "reasons",
        "warnings",
    ):
        assert key in d
    assert set(d["model"]) >= {"architecture", "layers", "kv_heads", "head_dim", "max_position_embeddings"}
    assert set(d["settings"]) >= {
        "backend",
        "cache_mode",
        "max_seq_len",
        "max_input_len",
        "gpu_split",
        "no_flash_attn",
        "no_xformers",
        "no_sdpa",
        "paged",
    }
    assert all(r["code"] in CODES for r in d["reasons"]) and all(w["code"] in CODES for w in d["warnings"])
    assert set(d["memory"][0]) >= {
        "weights_bytes",
        "cache_bytes",
        "scratch_bytes",
        "reserve_bytes",
        "total_bytes",
        "budget_bytes",
    }
    # 70B: 80 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes
    assert d["kv_cache_bytes_per_token"]["FP16"] == 80 * 8 * 128 * 2 * 2
    assert Plan.from_dict(d) == p


def test_forced_backend_drops_trailing_gpus_it_cannot_run_on(specs):
    facts = what_if_facts(["3090", "p40"], ["flash-attn==2.7.4"])
    p = plan(facts, specs["llama3-8b@4.0bpw"], backend="flash_attn", context=8192)
    assert p.settings.backend == "flash_attn" and [g.name for g in p.gpus] == ["NVIDIA GeForce RTX 3090"]
    assert any("not valid on #1 Tesla P40" in w.message for w in p.warnings)
    assert "backend.forced.gpus_dropped" in {w.code for w in p.warnings}
    with pytest.raises(BackendRefusedError, match="Tesla P40"):
        plan(
            what_if_facts(["p40", "3090"], ["flash-attn==2.7.4"]),
            specs["llama3-8b@4.0bpw"],
            backend="flash_attn",
        )
