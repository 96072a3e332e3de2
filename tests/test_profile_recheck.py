"""Hand-edited profiles are re-checked: `verify` and `prepare` run the shape rules and the memory model on the
settings as they are in the file, against the GPUs the profile was computed for (a what-if profile too),
and name each edit that cannot work (issue 14, finding 3)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exlx_autocfg.cli import run
from exlx_autocfg.errors import ProfileError
from exlx_autocfg.exl2 import CACHE_MODES
from exlx_autocfg.facts.what_if import gpu_table, what_if_facts
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.planner.core import plan
from exlx_autocfg.planner.evaluate import evaluate_settings
from exlx_autocfg.profile.format import profile_from_plan, read_profile, write_profile
from exlx_autocfg.profile.recheck import settings_problems
from tests.support.model_dirs import make_model_dir

GIB = 1024**3
NVIDIA = [row.id for row in gpu_table() if row.vendor == "nvidia"]
MODELS = ["llama3-8b@4.0bpw", "yi-34b@4.0bpw", "mixtral-8x7b@3.5bpw", "gemma2-9b@6.0bpw", "llama3-70b@2.5bpw"]
_SPECS: dict = {}


def spec_of(ref: str):
    if ref not in _SPECS:
        _SPECS[ref] = load_model_spec(ref)
    return _SPECS[ref]


@settings(max_examples=40, deadline=None)
@given(
    model=st.sampled_from(MODELS),
    gpus=st.lists(st.sampled_from(NVIDIA), min_size=1, max_size=3),
    cache=st.sampled_from([None, *CACHE_MODES]),
    context=st.one_of(st.none(), st.integers(min_value=256, max_value=200_000)),
    margin=st.integers(min_value=0, max_value=2048),
)
def test_what_the_planner_plans_rechecks_clean(model, gpus, cache, context, margin):
    """The re-check and the planner agree: every plan the planner makes passes it, multi-GPU splits through
    exllamav2's set_device_map emulation included (a planned split lands every module where it was
    planned, so no GPU goes over its budget)."""
    from exlx_autocfg.errors import DoesNotFitError

    facts = what_if_facts(gpus)
    try:
        p = plan(facts, spec_of(model), cache=cache, context=context, margin_mib=margin)
    except DoesNotFitError:
        return
    assert evaluate_settings(spec_of(model), p.gpus, p.settings, margin_mib=margin) == []
    profile = profile_from_plan(p, facts)
    assert settings_problems(profile, spec_of(model)) == []


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("m"), "llama3-8b", quant="exl2", bpw=4.0)


@pytest.fixture()
def profile_path(model_dir, tmp_path):
    """A what-if profile for one RTX 3090 (24 GB), written by the real `profile` command."""
    path = tmp_path / "p.toml"
    assert run(["profile", str(model_dir), "--gpu", "3090", "--context", "8192", "--out", str(path)]) == 0
    return path


def edit(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


@pytest.fixture()
def no_probe(monkeypatch):
    """verify probes this machine; here it has the planned GPU (the what-if facts), so only the edit can be
    what is wrong."""
    monkeypatch.setattr(
        "exlx_autocfg.facts.detect.detect",
        lambda python=None, **kw: what_if_facts(["3090"], recommended=True),
    )


CASES = [
    (
        "max_seq_len = 8192",
        "max_seq_len = 1048576",
        "settings.does_not_fit",
        "GPU #0 NVIDIA GeForce RTX 3090 would need",
    ),
    (
        "autosplit = false",
        "autosplit = false\ngpu_split = [10.0, 10.0, 4.0]",
        "settings.split_longer_than_gpus",
        "settings.gpu_split lists 3 GPUs but the profile was made for 1",
    ),
    (
        "max_input_len = 2048",
        "max_input_len = 16384",
        "settings.chunk_over_context",
        "settings.max_input_len 16384 is larger than settings.max_seq_len 8192",
    ),
    (
        "autosplit = false",
        "autosplit = false\ngpu_split = [1.0]",
        "settings.split_too_small",
        "too small for its modules",
    ),
]


@pytest.mark.parametrize(("old", "new", "code", "message"), CASES, ids=[c[2] for c in CASES])
def test_verify_names_an_edit_that_cannot_work(profile_path, no_probe, capsys, old, new, code, message):
    assert run(["verify", str(profile_path), "--json"]) == 0  # as written: current, and it fits
    assert json.loads(capsys.readouterr().out)["settings_problems"] == []
    edit(profile_path, old, new)
    assert run(["verify", str(profile_path), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["current"] is False and doc["changes"] == []  # nothing on the machine changed
    assert [p["code"] for p in doc["settings_problems"]] == [code]
    assert message in doc["settings_problems"][0]["message"]
    assert run(["verify", str(profile_path)]) == 1
    out = capsys.readouterr().out
    assert f"settings that cannot work: {profile_path}" in out and message in out
    assert "re-plan with: exlx-autocfg profile" in out


def test_the_budget_message_gives_the_arithmetic(profile_path, no_probe, capsys):
    edit(profile_path, "max_seq_len = 8192", "max_seq_len = 1048576")
    assert run(["verify", str(profile_path), "--json"]) == 1
    problem = json.loads(capsys.readouterr().out)["settings_problems"][0]["message"]
    # 1M tokens of FP16 cache, Llama 3 8B: 32 layers x 8 KV heads x 128 x 2 (K, V) x 2 bytes = 128 KiB/token
    assert "cache 128.00" in problem and "at max_seq_len 1048576 with FP16 cache" in problem
    assert "budget is 23.75 GiB" in problem


def test_prepare_refuses_the_edit_or_warns(profile_path, model_dir, capsys):
    from tests.support.standin import import_exllamav2

    import_exllamav2()
    from exlx_autocfg.profile.loader import StaleProfileWarning, prepare

    facts = what_if_facts(["3090"], recommended=True)
    edit(profile_path, "max_seq_len = 8192", "max_seq_len = 1048576")
    with pytest.raises(ProfileError, match="its settings cannot work on the GPUs it was made for: GPU #0"):
        prepare(model_dir, profile_path, facts=facts)
    with pytest.warns(StaleProfileWarning, match="using them anyway"):
        prepared = prepare(model_dir, profile_path, facts=facts, on_stale="warn", save=False)
    assert prepared.settings.max_seq_len == 1048576
    assert read_profile(profile_path).settings.max_seq_len == 1048576  # nothing rewritten


def test_overrides_are_rechecked_too(profile_path, model_dir):
    from tests.support.standin import import_exllamav2

    import_exllamav2()
    from exlx_autocfg.profile.loader import prepare

    with pytest.raises(ProfileError, match=r"settings\.max_input_len 16384 is larger"):
        prepare(model_dir, profile_path, facts=what_if_facts(["3090"], recommended=True), max_input_len=16384)


def test_budget_free_drops_a_gpu_too_full_to_hold_anything():
    """--budget free with the first card nearly full (another process): the placement puts nothing on it,
    so it leaves the plan (and the split) instead of staying in with 0 bytes."""
    facts = what_if_facts(["3090", "3090"])
    facts.what_if = False
    busy, idle = facts.gpu.gpus
    busy.memory_free = 300 * 1024**2
    idle.memory_free = idle.memory_total - 400 * 1024**2
    p = plan(facts, spec_of("llama3-8b@4.0bpw"), budget="free", context=8192)
    assert [g.index for g in p.gpus] == [idle.index]
    assert p.settings.gpu_split is None and len(p.memory) == 1
    reason = p.reason("gpus")
    assert reason.code == "gpus.unused" and reason.evidence["unused"] == [busy.index]


def test_a_schema_1_profile_is_rechecked_as_well(model_dir, tmp_path):
    spec = load_model_spec(model_dir)
    facts = what_if_facts(["p40"])
    p = plan(facts, spec, context=4096)
    profile = profile_from_plan(p, facts)
    write_profile(profile, tmp_path / "p.toml")
    profile = read_profile(tmp_path / "p.toml")
    profile.settings.max_seq_len = 4 * 1024 * 1024
    assert [f.code for f in settings_problems(profile, spec)] == ["settings.does_not_fit"]


def test_verify_says_when_the_memory_recheck_leaves_the_draft_out(model_dir, tmp_path, no_probe, capsys):
    """The memory re-check places the model alone: a profile that loads a draft beside it gets its shape rules
    re-checked, and verify says that its memory was not (it used to pass over it without a word)."""
    main = make_model_dir(tmp_path, "qwen2.5-7b", bpw=4.0, name="main")
    draft = make_model_dir(tmp_path, "qwen2.5-0.5b", bpw=4.0, name="draft")
    path = tmp_path / "d.toml"
    assert run(["profile", str(main), "--gpu", "3090", "--context", "8192", "--draft", str(draft),
                "--out", str(path)]) == 0
    capsys.readouterr()
    edit(path, "max_seq_len = 8192", "max_seq_len = 1048576")
    run(["verify", str(path), "--json"])
    note = json.loads(capsys.readouterr().out)["note"]
    assert "their memory was not" in note and "load a draft model with it" in note, note
    plain = tmp_path / "p.toml"
    assert run(["profile", str(model_dir), "--gpu", "3090", "--context", "8192", "--out", str(plain)]) == 0
    capsys.readouterr()
    run(["verify", str(plain), "--json"])
    assert "memory was not" not in (json.loads(capsys.readouterr().out)["note"] or "")
