"""`plan --vision`: the vision tower planned beside the model, through plan JSON, profile, loader, TabbyAPI.

The tower's bytes are checked against the real exllamav2 0.3.2 tower loaded on the CPU (tests/support/
vision_run.py); where the plan puts them (the first GPU, after the draft, before the model) against
TabbyAPI's load order and the real set_device_map (tests/test_vision_exllamav2.py).
"""

from __future__ import annotations

import json

import pytest
import yaml

from exlx_autocfg.cli import run
from exlx_autocfg.facts.what_if import what_if_facts
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.planner.core import plan
from exlx_autocfg.profile.format import read_profile
from exlx_autocfg.profile.loader import StaleProfileWarning, prepare
from tests.support import vision_run
from tests.support.model_dirs import make_model_dir

GIB = 1024**3
MIB = 1024**2


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision-plan")
    return {
        "gemma3": make_model_dir(root, "tiny-gemma3"),
        "qwen25": make_model_dir(root, "tiny-qwen2.5-vl"),
        "pixtral": make_model_dir(root, "tiny-pixtral"),
        "no-tower": make_model_dir(root, "tiny-gemma3", name="no-tower", vision=False),
        "text": make_model_dir(root, "tiny-llama"),
        "gemma3-27b": make_model_dir(root, "gemma3-27b", bpw=4.0),
    }


def _plan_json(capsys, *argv: str) -> dict:
    assert run(["plan", *argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", ["gemma3", "qwen25", "pixtral"])
def test_vision_weights_in_the_memory_entry_equal_a_real_tower_load(dirs, capsys, name):
    d = _plan_json(capsys, str(dirs[name]), "--gpu", "3090", "--vision")
    spec = load_model_spec(dirs[name])
    _, resident = vision_run.load_tower(str(dirs[name]))
    # On the CPU the fused qkv slices are views of three fp16 copies of the whole tensor; on a GPU each slice
    # is copied alone (tests/test_vision_exllamav2.py).
    fused = sum(t.nbytes // 2 * 2 for t in spec.tensors if ".attn.qkv." in t.name)
    first = d["memory"][0]
    assert first["vision_weights_bytes"] == resident - 2 * fused
    assert first["parts"]["vision_weights"] == first["vision_weights_bytes"]
    assert all(row["vision_weights_bytes"] == 0 for row in d["memory"][1:])
    assert d["settings"]["vision"] is True and d["request"]["vision"] is True
    assert d["vision"]["gpu_index"] == d["gpus"][0]["index"]
    assert d["vision"]["weights_bytes"] == first["vision_weights_bytes"]
    assert any(r["decision"] == "vision" and r["code"] == "vision.planned" for r in d["reasons"])
    assert "vision.not_planned" not in [w["code"] for w in d["warnings"]]


def test_the_tower_costs_context_and_is_accounted_on_the_first_gpu(dirs):
    """Gemma 3 27B's SigLIP tower (about 0.8 GB fp16) on one 3090 at Q4: the context with the tower is
    shorter, and GPU 0's total grows by the tower's weights and RoPE tables plus whatever one image's
    transient exceeds the model's own forward transients (they run one after the other)."""
    facts = what_if_facts(["3090"], recommended=True)
    spec = load_model_spec(dirs["gemma3-27b"])
    text = plan(facts, spec, cache="Q4", context=65536)
    tower = plan(facts, spec, cache="Q4", context=65536, vision=True)
    assert tower.settings.max_seq_len < text.settings.max_seq_len
    same = plan(facts, spec, cache="Q4", context=tower.settings.max_seq_len)
    a, b = same.memory[0], tower.memory[0]
    model_transient = a.parts["activations"] + a.parts["attention"]
    image = tower.vision["image_transient_bytes"]
    extra = tower.vision["weights_bytes"] + tower.vision["rope_bytes"] + max(0, image - model_transient)
    assert b.total_bytes == a.total_bytes + extra
    assert b.total_bytes <= b.budget_bytes
    # the tower's weights are read from the headers: every tensor under the vision prefixes, as fp16
    fp16 = sum(t.nbytes if t.dtype in ("F16", "BF16") else t.nbytes // 2
               for t in spec.tensors if t.name.startswith(("vision_tower.", "multi_modal_projector.")))
    assert abs(tower.vision["weights_bytes"] - fp16) <= 64 * 1024  # a few norms/biases widened on load


def test_a_multimodal_model_planned_without_vision_says_so(dirs, capsys):
    d = _plan_json(capsys, str(dirs["gemma3"]), "--gpu", "3090")
    codes = [w["code"] for w in d["warnings"]]
    assert "vision.not_planned" in codes
    assert d["vision"] is None and d["settings"].get("vision") is None
    assert all(row["vision_weights_bytes"] == 0 for row in d["memory"])
    assert run(["plan", str(dirs["gemma3"]), "--gpu", "3090"]) == 0
    assert "plan --vision to include it" in " ".join(capsys.readouterr().out.split())


def test_no_warning_for_a_quant_made_without_the_tower(dirs, capsys):
    d = _plan_json(capsys, str(dirs["no-tower"]), "--gpu", "3090")
    assert "vision.not_planned" not in [w["code"] for w in d["warnings"]]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("text", "has no vision tower exllamav2 0.3.2 loads"),
        ("no-tower", "carries no vision tower tensors"),
    ],
)
def test_vision_refused_where_there_is_no_tower(dirs, capsys, name, message):
    assert run(["plan", str(dirs[name]), "--gpu", "3090", "--vision"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("exlx-autocfg: error: ") and message in err


def test_xformers_ignores_qwen25_windows(dirs, capsys):
    d = _plan_json(capsys, str(dirs["qwen25"]), "--gpu", "2080ti-22gb", "--vision", "--backend", "xformers")
    assert "vision.windows_ignored" in [w["code"] for w in d["warnings"]]
    d = _plan_json(capsys, str(dirs["qwen25"]), "--gpu", "3090", "--vision")
    assert d["settings"]["backend"] == "flash_attn"
    assert "vision.windows_ignored" not in [w["code"] for w in d["warnings"]]


def test_profile_loader_and_tabbyapi_carry_vision(dirs, tmp_path, capsys):
    model = dirs["gemma3"]
    profile = tmp_path / "p.toml"
    assert run(["profile", str(model), "--gpu", "3090", "--vision", "--out", str(profile)]) == 0
    prof = read_profile(profile)
    assert prof.settings.vision is True and prof.request.get("vision") is True
    assert run(["show", str(profile)]) == 0
    assert "vision" in capsys.readouterr().out
    # planned for a 3090 with flash-attn; this CPU process has none, which prepare() says and runs anyway
    with pytest.warns(StaleProfileWarning):
        prepared = prepare(model, profile, facts=what_if_facts(["3090"], recommended=True), save=False,
                           on_stale="warn")
    assert prepared.vision is True
    assert any(n.startswith("vision: ExLlamaV2VisionTower") for n in prepared.notes)
    assert run(["emit", "-f", "tabbyapi", str(profile)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["vision"] is True
    # a text-only profile of the same model writes vision: false over a config that had it on
    config = tmp_path / "config.yml"
    config.write_text("model:\n  vision: true\n")
    text = tmp_path / "text.toml"
    assert run(["profile", str(model), "--gpu", "3090", "--out", str(text)]) == 0
    assert run(["emit", "-f", "tabbyapi", str(text), "--out", str(config)]) == 0
    assert yaml.safe_load(config.read_text())["model"]["vision"] is False


def test_replan_command_keeps_vision(dirs, tmp_path):
    from exlx_autocfg.cli.profile import replan_command

    profile = tmp_path / "p.toml"
    assert run(["profile", str(dirs["gemma3"]), "--gpu", "3090", "--vision", "--out", str(profile)]) == 0
    assert "--vision" in replan_command(read_profile(profile), profile)
