"""`planner.candidates.choose_candidate`: the pure choice over per-branch plans.

Branch specs are catalog specs (the same layout a converter writes); each expectation is first read off
`planner.core.plan` for that branch alone, then the rule is applied by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from exlx_autocfg.errors import DoesNotFitError, NoCandidateError, UsageError
from exlx_autocfg.facts.what_if import what_if_facts
from exlx_autocfg.model.catalog import catalog_spec
from exlx_autocfg.model.spec import ModelSpec
from exlx_autocfg.planner.candidates import choose_candidate, fmt_bpw, target_context
from exlx_autocfg.planner.core import plan


@dataclass
class Branch:
    revision: str
    commit: str
    spec: ModelSpec | None = None
    skipped: str | None = None
    skip_code: str | None = None
    download_bytes: int = 0
    bytes_read: int = 0


def branches(model: str, *bpws: float) -> list[Branch]:
    return [Branch(f"{b:.1f}bpw", f"{i:040x}", catalog_spec(model, b)) for i, b in enumerate(bpws)]


@pytest.fixture(scope="module")
def ti16():
    return what_if_facts(["4060ti-16gb"], None, recommended=True)


def reach(facts, spec, **request):
    p = plan(facts, spec, **request)
    return p.settings.max_seq_len, p.settings.cache_mode


def test_highest_bitrate_that_reaches_the_target(ti16):
    qwen = branches("qwen2.5-14b", 4.0, 6.0, 8.0)
    expected = [(32768, "FP16"), (32768, "Q8"), (19200, "Q4")]
    assert [reach(ti16, b.spec, context=32768) for b in qwen] == expected
    choice = choose_candidate(ti16, qwen, context=32768)
    assert choice.revision == "6.0bpw" and choice.code == "candidates.highest_reaching"
    assert choice.plan.reasons[0].decision == "revision"
    first = choice.plan.reasons[0]
    assert {alt: first.rejected_text(alt) for alt in first.rejected} == {
        "4.0bpw": "a lower bitrate (4.0 bpw) than 6.0bpw (6.0 bpw), which also reaches the target",
        "8.0bpw": "reaches only 19200 tokens (cache Q4)"}
    assert {alt: [f.code for f in fs] for alt, fs in first.rejected.items()} == {
        "4.0bpw": ["candidates.lower_bitrate"], "8.0bpw": ["candidates.short_context"]}
    assert first.code == "candidates.highest_reaching"
    assert choice.plan.settings.max_seq_len == plan(ti16, qwen[1].spec, context=32768).settings.max_seq_len


def test_the_cache_policy_decides_what_reaches(ti16):
    """--min-cache-precision FP16: 6.0 bpw reaches only 22,528 tokens in FP16, so 4.0 bpw is the choice."""
    qwen = branches("qwen2.5-14b", 4.0, 6.0, 8.0)
    assert reach(ti16, qwen[1].spec, context=32768, min_cache_precision="FP16") == (22528, "FP16")
    choice = choose_candidate(ti16, qwen, context=32768, min_cache_precision="FP16")
    assert choice.revision == "4.0bpw"
    assert "with caches down to FP16 (--min-cache-precision)" in choice.why


def test_nothing_reaches_the_longest_context_wins(ti16):
    qwen = branches("qwen2.5-14b", 6.0, 8.0)
    ctx = {b.revision: reach(ti16, b.spec, context=131072)[0] for b in qwen}
    assert ctx["6.0bpw"] > ctx["8.0bpw"] and max(ctx.values()) < 131072
    choice = choose_candidate(ti16, qwen, context=131072)
    assert choice.revision == "6.0bpw" and choice.code == "candidates.longest_context"


def test_skipped_and_unfit_branches_are_listed_not_chosen(ti16):
    big = Branch("72b-4.0bpw", "1" * 40, catalog_spec("qwen2.5-72b", 4.0))
    with pytest.raises(DoesNotFitError):
        plan(ti16, big.spec, context=8192)
    mixed = [Branch("main", "0" * 40, skipped="no config.json", skip_code="hub.skip.no_config"), big,
             *branches("qwen2.5-14b", 4.0)]
    choice = choose_candidate(ti16, mixed, context=8192)
    status = {c.revision: (c.status, c.code, c.chosen) for c in choice.candidates}
    assert status == {"main": ("skipped", "hub.skip.no_config", False),
                      "72b-4.0bpw": ("does_not_fit", "candidates.does_not_fit", False),
                      "4.0bpw": ("planned", "candidates.highest_reaching", True)}
    assert choice.plan.model.layers == 48


def test_no_candidate_and_no_fit_are_negative_answers(ti16):
    with pytest.raises(NoCandidateError, match=r"no branch holds an EXL2 model \(main: no config\.json\)"):
        choose_candidate(ti16, [Branch("main", "0" * 40, skipped="no config.json")])
    with pytest.raises(DoesNotFitError, match=r"no branch fits on these GPUs: 4\.0bpw: model weights need"):
        choose_candidate(ti16, branches("qwen2.5-72b", 4.0))
    with pytest.raises(UsageError):  # option errors hold for every branch: they propagate
        choose_candidate(ti16, branches("qwen2.5-14b", 4.0), cache="Q3")


def test_target_context_is_the_planner_target():
    spec = catalog_spec("qwen2.5-14b", 4.0)
    assert target_context(spec, 30000) == (30208, "--context 30000")  # up to a 256-token page
    assert target_context(spec, None)[0] == spec.max_position_embeddings // 256 * 256
    assert [fmt_bpw(x) for x in (4.0, 6.5, 4.65, None)] == ["4.0", "6.5", "4.65", "?"]
