"""A draft model, tensor parallelism and LoRA adapters through the whole flow: the settings record and its
validation, the profile and its staleness, the loader's `prepare` against the real exllamav2 0.3.2 wheel
(only exllamav2_ext stood in), the emitters (TabbyAPI's YAML validated against TabbyAPI's own config
models), `check`, and the CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from exlx_autocfg.cli import run
from exlx_autocfg.emitters import emit
from exlx_autocfg.errors import LoraRefusedError, ProfileError
from exlx_autocfg.facts.what_if import what_if_facts
from exlx_autocfg.findings import codes_of
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.planner.core import plan
from exlx_autocfg.profile.format import (
    parse_profile,
    profile_from_plan,
    read_profile,
    render_profile,
    write_profile,
)
from exlx_autocfg.profile.staleness import find_changes
from exlx_autocfg.profile.stamps import read_companion_stamps
from tests.support import profile_samples as samples
from tests.support import tabbyapi_models as tabby
from tests.support.adapters import make_adapter
from tests.support.model_dirs import make_model_dir
from tests.support.real_wheel import CACHE_CLASSES

pytestmark = pytest.mark.usefixtures("no_exllama_switches")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow")
    models = root / "models"
    d = {
        "main": make_model_dir(models, "qwen2.5-7b", bpw=4.0, name="Qwen2.5-7B-exl2"),
        "draft": make_model_dir(models, "qwen2.5-0.5b", bpw=4.0, name="Qwen2.5-0.5B-exl2"),
        "llama": make_model_dir(models, "llama3-8b", bpw=4.0, name="Llama-3-8B-exl2"),
    }
    d["lora"] = make_adapter(root / "loras", d["main"], name="style", r=8)
    d["lora2"] = make_adapter(root / "loras", d["main"], name="tone", r=4, modules=("q_proj", "v_proj"))
    d["llama_lora"] = make_adapter(root / "loras", d["llama"], name="llama-style", r=8, layers=2)
    return d


def matmul_facts(gpus=None):
    """What this process's exllamav2 can run (no flash-attn, no xformers): the planner picks matmul."""
    return samples.facts(gpus=gpus, xformers=None)


@pytest.fixture()
def draft_plan(dirs):
    return plan(matmul_facts(), dirs["main"], draft=dirs["draft"], loras=[f"{dirs['lora']}:0.75"],
                context=16384)


# ------------------------------------------------------------------------------------- settings, profile


def test_profile_carries_draft_and_adapters_and_reads_back(draft_plan, dirs):
    profile = profile_from_plan(draft_plan, matmul_facts())
    text = render_profile(profile)
    assert "[settings.draft]" in text and "[computed_for.draft]" in text
    assert f'{{ path = "{draft_plan.settings.loras[0].path}", scale = 0.75, name = "style" }}' in text
    back = parse_profile(text)
    assert back == profile
    d = back.settings.draft
    assert (d.cache_mode, d.autosplit, d.rope_alpha) == (draft_plan.settings.cache_mode, True, 1.0)
    assert [(x.name, x.scale) for x in back.settings.loras] == [("style", 0.75)]
    assert back.computed_for.draft.fingerprint == load_model_spec(d.path).fingerprint
    assert back.computed_for.draft.architecture == "Qwen2ForCausalLM"
    assert [x.dir for x in back.computed_for.loras] == [str(dirs["lora"])]
    assert back.request["draft"].endswith("Qwen2.5-0.5B-exl2") and back.request["loras"][0]["scale"] == 0.75


def test_a_plain_profile_has_no_trace_of_them(dirs):
    text = render_profile(profile_from_plan(plan(matmul_facts(), dirs["main"]), matmul_facts()))
    assert "draft" not in text and "lora" not in text and "tensor_parallel" not in text


@pytest.mark.parametrize(("edit", "key"), [
    ('cache_mode = "FP16"\npath', "settings.draft.cache_mode"),
    ("rope_alpha = 0.0", "settings.draft.rope_alpha"),
    ("scale = -1.0", "settings.loras[0].scale"),
])
def test_hand_edits_are_validated(draft_plan, edit, key):
    text = render_profile(profile_from_plan(draft_plan, matmul_facts()))
    if edit.startswith("cache_mode"):
        broken = text.replace('[settings.draft]\nname = "Qwen2.5-0.5B-exl2"\ncache_mode = "FP16"',
                              '[settings.draft]\nname = "Qwen2.5-0.5B-exl2"\ncache_mode = "Q5"')
    elif edit.startswith("rope_alpha"):
        broken = text.replace("rope_alpha = 1.0", edit)
    else:
        broken = text.replace("scale = 0.75", edit)
    assert broken != text
    with pytest.raises(ProfileError, match=key.replace("[", r"\[").replace("]", r"\]")):
        parse_profile(broken)


def test_tensor_parallel_settings_rules():
    from exlx_autocfg.settings import LoraSettings, SettingsError, validate_settings

    s = dataclasses.replace(samples.plan().settings, tensor_parallel=True, gpu_split=[20.0])
    with pytest.raises(SettingsError, match="two or more GPUs"):
        validate_settings(s)
    s = dataclasses.replace(s, gpu_split=[20.0, 20.0], loras=[LoraSettings("/x/y")])
    with pytest.raises(SettingsError, match="never applies LoRAs"):
        validate_settings(s)


def test_staleness_covers_the_draft_and_the_adapters(tmp_path):
    main = make_model_dir(tmp_path, "qwen2.5-7b", bpw=4.0, name="main")
    draft = make_model_dir(tmp_path, "qwen2.5-0.5b", bpw=4.0, name="draft")
    lora = make_adapter(tmp_path / "loras", main, name="l", r=4, layers=2)
    facts = matmul_facts()
    profile = profile_from_plan(plan(facts, main, draft=draft, loras=[str(lora)], context=8192), facts)
    spec = load_model_spec(main)

    def codes():
        return [c.code for c in find_changes(profile, facts, spec.fingerprint,
                                             companions=read_companion_stamps(profile.computed_for))]

    assert codes() == []
    config = json.loads((draft / "config.json").read_text())
    (draft / "config.json").write_text(json.dumps({**config, "rope_theta": 5.0}))
    assert codes() == ["stale.draft.changed"]
    cfg = json.loads((lora / "adapter_config.json").read_text())
    (lora / "adapter_config.json").write_text(json.dumps({**cfg, "lora_alpha": 99}))
    assert codes() == ["stale.draft.changed", "stale.lora.changed"]
    (draft / "config.json").unlink()
    (lora / "adapter_config.json").unlink()
    assert codes() == ["stale.draft.gone", "stale.lora.gone"]


# ---------------------------------------------------------------------------------------------- loader


def test_prepare_builds_the_drafts_real_config_in_exllamav2s_order(exl2, dirs, draft_plan, tmp_path):
    """The draft's ExLlamaV2Config as TabbyAPI fills it (the model's lengths and switches, its own RoPE),
    its cache class and length, and the real dynamic generator accepting the pair."""
    from exllamav2.generator import ExLlamaV2DynamicGenerator

    from exlx_autocfg.profile.loader import prepare

    path = tmp_path / "p.toml"
    write_profile(profile_from_plan(draft_plan, matmul_facts()), path)
    p = prepare(dirs["main"], path, facts=matmul_facts())
    s, dc = p.settings, p.draft_config
    assert type(dc) is exl2.ExLlamaV2Config and dc.model_dir == str(dirs["draft"])
    assert (dc.max_seq_len, dc.max_input_len, dc.max_attention_size) == (
        s.max_seq_len, s.max_input_len, s.max_attention_size)
    assert dc.num_hidden_layers == 24 and dc.scale_alpha_value == s.draft.rope_alpha
    assert (dc.no_flash_attn, dc.no_xformers, dc.no_sdpa) == (p.config.no_flash_attn, p.config.no_xformers,
                                                             p.config.no_sdpa)
    assert p.draft_cache_class is getattr(exl2, CACHE_CLASSES[s.draft.cache_mode])
    assert p.draft_gpu_split is None
    assert p.loras == [(str(dirs["lora"]), 0.75)]
    assert [n.split(":")[0] for n in p.notes if n.startswith(("draft", "LoRA"))] == [
        f"draft {s.draft.name}", "LoRA style"]
    assert ("the settings' shape rules were re-checked, their memory was not: the re-check places the model "
            "alone, and these settings load a draft model and LoRA adapters with it") in p.notes
    model, draft = exl2.ExLlamaV2(p.config), exl2.ExLlamaV2(dc)
    cache, dcache = p.make_cache(model, lazy=True), p.make_draft_cache(draft, lazy=True)
    assert cache.max_seq_len == dcache.max_seq_len == s.max_seq_len
    ExLlamaV2DynamicGenerator(model=model, cache=cache, tokenizer=None, draft_model=draft, draft_cache=dcache,
                              paged=False)  # its asserts on the pair pass


def test_prepare_refuses_a_hand_added_adapter_for_another_model(exl2, dirs, draft_plan, tmp_path):
    from exlx_autocfg.profile.loader import prepare

    path = tmp_path / "p.toml"
    write_profile(profile_from_plan(draft_plan, matmul_facts()), path)
    path.write_text(path.read_text().replace(str(dirs["lora"]), str(dirs["llama_lora"])))
    from exlx_autocfg.profile.loader import StaleProfileWarning

    refused = pytest.raises(LoraRefusedError, match=r"lora_A\.weight has shape")
    with refused, pytest.warns(StaleProfileWarning):
        prepare(dirs["main"], path, facts=matmul_facts(), on_stale="warn")


def test_prepare_command_reports_the_draft_and_adapters(exl2, dirs, draft_plan, tmp_path, monkeypatch,
                                                        capsys):
    path = tmp_path / "p.toml"
    write_profile(profile_from_plan(draft_plan, matmul_facts()), path)
    fresh = matmul_facts()
    monkeypatch.setattr("exlx_autocfg.facts.detect.detect", lambda python=None, **kw: fresh)
    assert run(["prepare", str(dirs["main"]), "--profile", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["draft"]["model_dir"] == str(dirs["draft"]) and doc["draft"]["config"]["max_seq_len"] == 16384
    assert doc["loras"] == [{"path": str(dirs["lora"]), "scale": 0.75}] and doc["tensor_parallel"] is False
    assert run(["prepare", str(dirs["main"]), "--profile", str(path)]) == 0
    out = capsys.readouterr().out
    assert "draft     ExLlamaV2(" in out and "lora      ExLlamaV2Lora.from_directory(model" in out


def test_prepare_tensor_parallel_says_load_tp(exl2, dirs, tmp_path):
    from exlx_autocfg.profile.loader import prepare

    facts = samples.facts(gpus=[samples.gpu_2080ti(0), samples.gpu_2080ti(1, uuid="GPU-2", pci_bus_id="2")],
                          xformers=None)
    base = samples.plan(backend="matmul", gpus=facts.gpu.gpus, model=load_model_spec(dirs["main"]).summary(),
                        gpu_split=[20.0, 20.0])
    base.settings.tensor_parallel = True
    path = tmp_path / "tp.toml"
    write_profile(profile_from_plan(base, facts), path)
    assert "tensor_parallel = true" in path.read_text()
    p = prepare(dirs["main"], path, facts=facts)
    assert p.tensor_parallel and p.gpu_split == [20.0, 20.0] and p.cache_tokens == p.config.max_seq_len
    assert any(n.startswith("tensor parallel: load_tp(gpu_split=[20.0, 20.0]") for n in p.notes)


# ------------------------------------------------------------------------------------------------ emit


def _tabby_doc(text):
    return yaml.safe_load(text)


def test_tabbyapi_draft_and_lora_validate_against_tabbyapis_models(dirs, draft_plan):
    doc = _tabby_doc(emit(draft_plan, "tabbyapi").text)
    assert set(doc) == {"model", "draft_model", "lora"}
    parsed = tabby.validate(doc)
    real = tabby.real_models()
    if real is not None:
        tabby.validate(doc, real)
    d, s = parsed["draft_model"], draft_plan.settings
    assert d.draft_model_name == "Qwen2.5-0.5B-exl2" and d.draft_model_dir == str(dirs["draft"].parent)
    assert d.draft_cache_mode == s.cache_mode and d.draft_gpu_split == [] and d.draft_rope_alpha == 1.0
    lora = parsed["lora"]
    assert lora.lora_dir == str(dirs["lora"].parent)
    assert [(x.name, x.scaling) for x in lora.loras] == [("style", 0.75)]
    assert doc["model"]["tensor_parallel"] is False


def test_tabbyapi_tensor_parallel_with_a_pinned_draft(dirs):
    rig = what_if_facts(["3090x2"], recommended=True)
    p = plan(rig, "qwen2.5-72b@4.25bpw", tensor_parallel=True, draft=dirs["draft"], cache="Q4")
    doc = _tabby_doc(emit(p, "tabbyapi").text)
    parsed = tabby.validate(doc)
    real = tabby.real_models()
    if real is not None:
        tabby.validate(doc, real)
    m = parsed["model"]
    assert m.tensor_parallel is True and m.gpu_split == p.settings.gpu_split and m.gpu_split_auto is False
    assert "tensor_parallel_backend" not in doc["model"]  # read by the exllamav3 backend only
    assert parsed["draft_model"].draft_gpu_split == p.settings.draft.gpu_split
    assert parsed["draft_model"].draft_rope_alpha == p.settings.draft.rope_alpha > 1


def test_per_model_tabby_config_has_the_draft_but_no_lora(draft_plan):
    text = emit(draft_plan, "tabbyapi-model").text
    doc = _tabby_doc(text)
    assert set(doc) == {"model", "draft_model"}
    tabby.validate(doc)
    # the header names the sections this file owns: a per-model file writes no lora:, config.yml does
    assert "owns under model:, draft_model:; the rest stays." in text
    assert "owns under model:, draft_model:, lora:; the rest stays." in emit(draft_plan, "tabbyapi").text


def test_merge_writes_the_sections_and_clears_an_unplanned_draft(dirs, draft_plan, tmp_path, capsys):
    config = tmp_path / "config.yml"
    config.write_text("# mine\nnetwork:\n  port: 5001\ndraft_model:\n  draft_num_tokens: 3\n"
                      "lora:\n  lora_dir: elsewhere\n")
    profile = tmp_path / "p.toml"
    write_profile(profile_from_plan(draft_plan, matmul_facts()), profile)
    assert run(["emit", "-f", "tabbyapi", str(profile), "--out", str(config)]) == 0
    doc = yaml.safe_load(config.read_text())
    assert doc["network"] == {"port": 5001} and doc["draft_model"]["draft_num_tokens"] == 3
    assert doc["draft_model"]["draft_model_name"] == "Qwen2.5-0.5B-exl2"
    assert doc["lora"]["loras"] == [{"name": "style", "scaling": 0.75}]
    tabby.validate({k: v for k, v in doc.items() if k in ("model", "draft_model", "lora")})
    assert "under 'draft_model'" in capsys.readouterr().err
    # Re-emitting a plan without them: the draft and adapters would load beside it unplanned; cleared.
    plain = tmp_path / "plain.toml"
    write_profile(profile_from_plan(plan(matmul_facts(), dirs["main"], context=16384), matmul_facts()), plain)
    assert run(["emit", "-f", "tabbyapi", str(plain), "--out", str(config)]) == 0
    doc = yaml.safe_load(config.read_text())
    assert doc["draft_model"]["draft_model_name"] is None and doc["draft_model"]["draft_num_tokens"] == 3
    assert doc["lora"]["loras"] == []


def test_exllamav2_script_flags(dirs, draft_plan):
    chat = emit(draft_plan, "exllamav2-args", script="chat")
    assert chat.text.split()[-2:] == ["-dm", str(dirs["draft"])]
    assert any("take no LoRA flag" in n for n in chat.notes)
    init = emit(draft_plan, "exllamav2-args", script="model_init")
    assert "-dm" not in init.text.split() and any("takes no draft model" in n for n in init.notes)
    rig = what_if_facts(["3090x2"], recommended=True)
    tp = emit(plan(rig, "qwen2.5-72b@4.25bpw", tensor_parallel=True, cache="Q4"), "exllamav2-args")
    args = tp.text.split()
    assert "-tp" in args and args[args.index("-gs") + 1].count(",") == 1


def test_textgen_draft_lora_and_tp(dirs, draft_plan):
    entry = emit(draft_plan, "textgen").merge_values
    assert entry["loader"] == "ExLlamav2" and entry["model_draft"] == str(dirs["draft"])
    assert entry["ctx_size_draft"] == 0 and entry["enable_tp"] is False
    flags = emit(draft_plan, "textgen-flags")
    args = flags.text.split()
    assert args[args.index("--model-draft") + 1] == str(dirs["draft"])
    assert args[args.index("--lora") + 1] == "style" and args[args.index("--lora-dir") + 1] == str(
        dirs["lora"].parent)
    assert any("scale 1.0" in n for n in flags.notes)
    rig = what_if_facts(["3090x2"], recommended=True)
    tp = emit(plan(rig, "qwen2.5-72b@4.25bpw", tensor_parallel=True, cache="Q4"), "textgen")
    assert tp.merge_values["enable_tp"] is True and tp.merge_values["loader"] == "ExLlamav2_HF"


def test_json_plan_has_the_sections(draft_plan):
    doc = json.loads(emit(draft_plan, "json").text)
    assert doc["settings"]["draft"]["name"] == "Qwen2.5-0.5B-exl2"
    assert doc["plan"]["draft"]["weights_bytes"] > 0 and len(doc["plan"]["loras"]) == 1


# ------------------------------------------------------------------------------------------------ check


def test_check_reports_drafts_and_adapters_that_will_not_load(dirs, tmp_path, capsys):
    from exlx_autocfg.checks import check

    facts = samples.facts()
    ok = check(facts=facts, import_test=False, model=str(dirs["main"]), draft=str(dirs["draft"]),
               loras=[str(dirs["lora"])])
    assert [(v.id, v.status, v.code) for v in ok.verdicts[-2:]] == [
        ("draft", "pass", "check.draft.ok"), ("lora:style", "pass", "check.lora.ok")]
    bad = check(facts=facts, import_test=False, model=str(dirs["main"]), draft=str(dirs["llama"]),
                loras=[str(dirs["llama_lora"]), str(tmp_path / "nothing")])
    draft, lora, missing = bad.verdicts[-3:]
    assert (draft.status, lora.status, missing.status) == ("fail", "fail", "fail")
    assert draft.code == "draft.larger_than_model" and "draft.bos_mismatch" in codes_of(draft.also)
    assert lora.code == "lora.shape_mismatch" and missing.code == "check.lora.unreadable"
    assert bad.exit_code() == 1
    alone = check(facts=facts, import_test=False, loras=[str(dirs["llama_lora"])])
    assert alone.verdicts[-1].status == "pass"  # readable and loadable; without --model, no shapes to judge
    facts_file = tmp_path / "facts.json"
    facts_file.write_text(facts.to_json())
    code = run(["check", "--facts", str(facts_file), "--model", str(dirs["main"]), "--draft",
                str(dirs["llama"]), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc["verdicts"][-1]["code"] == "draft.larger_than_model"


# ---------------------------------------------------------------------------------------------- the CLI


def test_cli_plan_json_and_profile_round_trip(dirs, tmp_path, capsys, monkeypatch):
    assert run(["plan", str(dirs["main"]), "--gpu", "3090", "--draft", str(dirs["draft"]),
                "--draft-cache", "Q8",
                "--lora", f"{dirs['lora']}:0.5", "--lora", str(dirs["lora2"]), "--context", "32768",
                "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["settings"]["draft"]["cache_mode"] == "Q8"
    assert [x["scale"] for x in doc["settings"]["loras"]] == [0.5, 1.0]
    assert {"draft_weights", "draft_cache", "lora"} <= set(doc["memory"][0]["parts"])
    assert doc["draft"]["kv_cache_bytes_per_token"]["Q8"] > 0
    out = tmp_path / "p.toml"
    assert run(["profile", str(dirs["main"]), "--gpu", "3090", "--draft", str(dirs["draft"]),
                "--out", str(out)]) == 0
    profile = read_profile(out)
    assert profile.settings.draft.path == str(dirs["draft"])
    from exlx_autocfg.cli.profile import replan_command

    assert "--draft" in replan_command(profile, out)


def test_python_api_options_are_checked(dirs):
    from exlx_autocfg.errors import OptionError

    with pytest.raises(OptionError, match="draft_cache"):
        plan(matmul_facts(), dirs["main"], draft_cache="Q4")
    with pytest.raises(OptionError, match="loras"):
        plan(matmul_facts(), dirs["main"], loras="not-a-list")
    with pytest.raises(OptionError, match="tensor_parallel"):
        plan(matmul_facts(), dirs["main"], tensor_parallel="yes")


def test_the_transcribed_models_are_tabbyapis():
    """tests/support/tabbyapi_models.py against TabbyAPI's own file, when it is at hand
    (TABBYAPI_CONFIG_MODELS=.../common/config_models.py @ 79126f9): the same fields, defaults, types and
    constraints."""
    real = tabby.real_models()
    if real is None:
        pytest.skip("TABBYAPI_CONFIG_MODELS is not set (the transcription is checked where it is)")
    ours = tabby.models()

    def kind(annotation) -> str:
        return str(annotation).replace("typing.List", "list").split("[")[0]

    for section, cls in real.items():
        assert set(ours[section].model_fields) == set(cls.model_fields), section
        for name, field in cls.model_fields.items():
            mine = ours[section].model_fields[name]
            assert mine.get_default(call_default_factory=True) == field.get_default(call_default_factory=True)
            assert kind(mine.annotation) == kind(field.annotation) and mine.metadata == field.metadata, name
