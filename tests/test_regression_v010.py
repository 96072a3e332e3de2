"""The restructured planner answers exactly what exlx-autocfg 0.1.0 answered.

tests/golden/v0.1.0/plans.json was written by the 0.1.0 release (commit 4cdec73, before the layout by
pipeline stage, the settings record and coded reasons) for twelve what-if plans; profile-schema1.toml is a
profile that release wrote. Every figure, decision and message must be unchanged: only codes were added.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exlx_autocfg.facts.what_if import what_if_facts
from exlx_autocfg.findings import CODES
from exlx_autocfg.planner.core import plan
from exlx_autocfg.profile.format import parse_profile, render_profile

GOLDEN = Path(__file__).parent / "golden" / "v0.1.0"
CASES = json.loads((GOLDEN / "plans.json").read_text())["plans"]
# 0.1.0's flat Plan fields -> the settings record's names
RENAMED = {"chunk_size": "max_input_len", "autosplit_reserve_bytes": "reserve_bytes"}
# Answers 0.1.0 got wrong, fixed on purpose (issue 14): the EXL3 advice claimed "every GPU has compute
# capability >= 8.0" on a 3090 + P40 machine because only the GPUs in use were judged.
FIXED = {("llama3-8b@4.0bpw", ("3090", "p40")): "every GPU has compute capability >= 8.0"}
# Warnings added on purpose (issue 14): a what-if rig of different GPUs says the --gpu order is assumed; a
# --context beyond the trained length says what RoPE scaling it needs.
ADDED = {"plan.what_if.gpu_order", "context.beyond_trained"}
# The default cache policy changed on purpose (issue 14, profiles/policy.toml): with the model's own target
# out of reach, 0.1.0 chased length into the coarsest cache; now the most precise cache that reaches the
# sufficient context is kept. Forcing 0.1.0's choice reproduces 0.1.0's figures exactly.
POLICY = {("nous-capybara-34b@4.0bpw", ("2080ti-22gb",)): "Q6"}
# Memory-entry fields added on purpose (issue 11): the vision tower's weights per GPU, 0 without --vision.
ADDED_MEMORY_FIELDS = {"vision_weights_bytes": 0}


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['model']}-{'+'.join(c['gpu'])}")
def test_plan_equals_release_0_1_0(case):
    facts = what_if_facts(case["gpu"], recommended=True)
    request = dict(case["request"])
    policy = POLICY.get((case["model"], tuple(case["gpu"])))
    if policy is not None:
        now = plan(facts, case["model"], **request)
        assert now.settings.cache_mode == policy
        assert now.reason("cache_mode").code == "cache.sufficient_context"
        assert now.max_seq_len_by_cache_mode == case["max_seq_len_by_cache_mode"]
        request["cache"] = case["settings"]["cache_mode"]  # 0.1.0's choice, forced
    p = plan(facts, case["model"], **request).to_dict()
    assert {RENAMED.get(k, k): v for k, v in case["settings"].items()} == p["settings"]
    assert p["max_seq_len_by_cache_mode"] == case["max_seq_len_by_cache_mode"]
    assert p["kv_cache_bytes_per_token"] == case["kv_cache_bytes_per_token"]
    for row in p["memory"]:
        for name, value in ADDED_MEMORY_FIELDS.items():
            assert row.pop(name) == value
    assert p["memory"] == case["memory"]
    assert [g["index"] for g in p["gpus"]] == case["gpus"]
    ours = [
        {"decision": r["decision"], "choice": r["choice"], "why": r["why"],
         "rejected": {alt: "; ".join(f["message"] for f in fs) for alt, fs in r["rejected"].items()}}
        for r in p["reasons"]
    ]
    if policy is not None:  # the cache_mode reason now says "forced"; every other decision is the same
        ours = [r for r in ours if r["decision"] != "cache_mode"]
        case = {**case, "reasons": [r for r in case["reasons"] if r["decision"] != "cache_mode"]}
    assert ours == case["reasons"]
    if policy is not None:  # forcing a cache that misses the target says so
        p["warnings"] = [w for w in p["warnings"] if w["code"] != "context.target_not_reached"]
    fixed = FIXED.get((case["model"], tuple(case["gpu"])))
    expected = [w for w in case["warnings"] if not (fixed and w.startswith(fixed))]
    assert [w["message"] for w in p["warnings"] if w["code"] not in ADDED] == expected
    assert all(r["code"] in CODES for r in p["reasons"])
    assert all(f["code"] in CODES for r in p["reasons"] for fs in r["rejected"].values() for f in fs)
    assert all(w["code"] in CODES for w in p["warnings"])


def test_a_schema_1_profile_still_reads():
    text = (GOLDEN / "profile-schema1.toml").read_text()
    profile = parse_profile(text, "profile-schema1.toml")
    assert profile.schema == 2
    assert profile.settings.backend == "xformers" and profile.settings.max_seq_len == 16384
    assert profile.warnings[0].code == "legacy.text"
    assert profile.warnings[0].message.startswith("what-if plan (facts from the GPU table")
    backend = next(r for r in profile.reasons if r.decision == "backend")
    assert backend.code == "legacy.text"
    assert [f.code for f in backend.rejected["flash_attn"]] == ["legacy.text"]
    assert "compute capability 7.5 < 8.0" in backend.rejected_text("flash_attn")
    assert parse_profile(render_profile(profile)) == profile  # written back as schema 2, same content
