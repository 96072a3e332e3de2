"""`plan`/`profile`/`emit`/`verify`/`prepare` with `hf:ORG/REPO[@REVISION]`, the real huggingface_hub client
against the local Hub of tests/support/fake_hub.py.

The reference for every figure is the same command on the same files as a local directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from exlx_autocfg.cli import run
from exlx_autocfg.errors import StaleProfileError
from exlx_autocfg.model.hub import read_hub_spec
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.planner.core import plan
from exlx_autocfg.profile.format import default_profile_path, profile_from_plan, read_profile, write_profile
from exlx_autocfg.profile.loader import prepare
from exlx_autocfg.profile.staleness import find_changes
from tests.support import profile_samples as samples
from tests.support.fake_hub import FakeHub, files_of
from tests.support.model_dirs import make_model_dir
from tests.support.standin import import_exllamav2

QWEN = "org/Qwen2.5-14B-exl2"
LLAMA = "org/Llama-3-8B-exl2"
# What each figure of a plan is; the model section differs only by where the model was read from.
PLAN_KEYS = ("settings",
             "kv_cache_bytes_per_token", "max_seq_len_by_cache_mode", "memory", "gpus", "request", "warnings")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "llama-4.0": make_model_dir(root, "llama3-8b", bpw=4.0, name="llama-4.0"),
        "llama-6.0": make_model_dir(root, "llama3-8b", bpw=6.0, shards=3, name="llama-6.0"),
        "qwen-4.0": make_model_dir(root, "qwen2.5-14b", bpw=4.0, name="qwen-4.0"),
        "qwen-6.0": make_model_dir(root, "qwen2.5-14b", bpw=6.0, name="qwen-6.0"),
        "qwen-8.0": make_model_dir(root, "qwen2.5-14b", bpw=8.0, shards=3, name="qwen-8.0"),
    }


@pytest.fixture
def hub(tmp_path, monkeypatch, models):
    monkeypatch.setenv("EXLX_CACHE_DIR", str(tmp_path / "exlx-cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    with FakeHub(tokens={"hf_granted": {"org/gated"}}) as fake:
        fake.add_repo(LLAMA, {b: files_of(models[f"llama-{b[:3]}"]) for b in ("4.0bpw", "6.0bpw")})
        fake.add_repo(QWEN, {f"{b}bpw": files_of(models[f"qwen-{b}"]) for b in ("4.0", "6.0", "8.0")})
        fake.add_repo("org/gated", {"4.0bpw": files_of(models["llama-4.0"])}, gated=True)
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        yield fake


def cli(capsys, *args):
    code = run(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def plan_json(capsys, model, *options):
    code, out, err = cli(capsys, "plan", str(model), *options, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize(("revision", "local"), [("4.0bpw", "llama-4.0"), ("6.0bpw", "llama-6.0")])
def test_plan_of_a_revision_equals_plan_of_the_downloaded_files(hub, capsys, models, revision, local):
    options = ("--gpu", "3060", "--context", "16384")
    remote = plan_json(capsys, f"hf:{LLAMA}@{revision}", *options)
    served = hub.bytes_served
    here = plan_json(capsys, models[local], *options)
    for key in PLAN_KEYS:
        assert json.dumps(remote[key]) == json.dumps(here[key]), key  # byte for byte
    assert remote["model"]["fingerprint"] == here["model"]["fingerprint"]
    same = {k: v for k, v in remote["model"].items() if k not in ("name", "path", "source", "hub")}
    assert same == {k: v for k, v in here["model"].items() if k not in ("name", "path", "source", "hub")}
    source = remote["model"]["hub"]
    assert remote["model"]["source"] == "hub" and source["revision"] == revision
    assert source["commit"] == hub.repos[LLAMA].commits[revision]
    assert source["bytes_read"] == served and source["bytes_read"] < source["weights_bytes"] / 10_000
    assert "revision" not in remote and "candidates" not in remote  # a revision was given: no quant table
    # A second plan of the same commit costs nothing; of the branch, one listing call.
    hub.reset()
    again = plan_json(capsys, f"hf:{LLAMA}@{source['commit']}", *options)
    assert hub.log == [] and again["model"]["hub"]["bytes_read"] == 0
    assert json.dumps(again["memory"]) == json.dumps(here["memory"])


def test_quant_table_of_a_three_branch_repo(hub, capsys, models):
    """Qwen2.5-14B on a 16 GB RTX 4060 Ti at 32K: the local plans say 8.0 bpw reaches only 19,200 tokens (Q4),
    6.0 and 4.0 bpw reach 32K; so 6.0bpw is the highest bitrate that reaches the target."""
    options = ("--gpu", "4060ti-16gb", "--context", "32768")
    local = {b: plan_json(capsys, models[f"qwen-{b}"], *options) for b in ("4.0", "6.0", "8.0")}
    assert [local[b]["settings"]["max_seq_len"] for b in ("4.0", "6.0", "8.0")] == [32768, 32768, 19200]
    assert local["8.0"]["settings"]["cache_mode"] == "Q4"
    hub.reset()
    doc = plan_json(capsys, f"hf:{QWEN}", *options)
    assert doc["revision"] == "6.0bpw" and doc["choice"]["code"] == "candidates.highest_reaching"
    assert doc["choice"]["target_context"] == 32768
    by_rev = {c["revision"]: c for c in doc["candidates"]}
    assert list(by_rev) == ["4.0bpw", "6.0bpw", "8.0bpw", "main"]
    for b in ("4.0", "6.0", "8.0"):
        c, ref = by_rev[f"{b}bpw"], local[b]
        assert c["status"] == "planned" and c["bits_per_weight"] == float(b)
        assert c["max_seq_len_by_cache_mode"] == ref["max_seq_len_by_cache_mode"]
        s = ref["settings"]
        assert (c["cache_mode"], c["max_seq_len"]) == (s["cache_mode"], s["max_seq_len"])
        assert c["download_bytes"] == sum(p.stat().st_size for p in models[f"qwen-{b}"].glob("*.safetensors"))
        assert c["weights_bytes"] == load_model_spec(models[f"qwen-{b}"]).total_tensor_bytes
    assert [by_rev[r]["chosen"] for r in by_rev] == [False, True, False, False]
    assert by_rev["8.0bpw"]["code"] == "candidates.short_context"
    assert by_rev["8.0bpw"]["why"] == "reaches only 19200 tokens (cache Q4)"
    assert by_rev["4.0bpw"]["code"] == "candidates.lower_bitrate"
    assert (by_rev["main"]["status"], by_rev["main"]["code"]) == ("skipped", "hub.skip.no_config")
    # The chosen plan is the 6.0bpw plan, with the choice as its first reason.
    for key in PLAN_KEYS:
        assert json.dumps(doc[key]) == json.dumps(local["6.0"][key]), key
    assert doc["reasons"][0]["decision"] == "revision" and doc["reasons"][0]["choice"] == "6.0bpw"
    assert doc["hub"]["bytes_read"] == hub.bytes_served
    assert doc["hub"]["bytes_read"] < doc["hub"]["weights_bytes"] / 10_000
    # On a 12 GB 3060 only 4.0bpw reaches 32K (the local plans agree); 8.0bpw fits at no context.
    small = ("--gpu", "3060", "--context", "32768")
    doc = plan_json(capsys, f"hf:{QWEN}", *small)
    by_rev = {c["revision"]: c for c in doc["candidates"]}
    assert doc["revision"] == "4.0bpw" and by_rev["8.0bpw"]["status"] == "does_not_fit"
    assert plan_json(capsys, models["qwen-4.0"], *small)["settings"]["max_seq_len"] == 32768
    assert plan_json(capsys, models["qwen-6.0"], *small)["settings"]["max_seq_len"] < 32768


def test_quant_table_when_no_branch_reaches_the_target(hub, capsys):
    doc = plan_json(capsys, f"hf:{QWEN}", "--gpu", "3060", "--context", "131072")
    planned = [c for c in doc["candidates"] if c["status"] == "planned"]
    longest = max(planned, key=lambda c: (c["max_seq_len"], c["bits_per_weight"]))
    assert doc["revision"] == longest["revision"] and doc["choice"]["code"] == "candidates.longest_context"
    assert doc["choice"]["why"].startswith("no branch reaches the target context 131072 (--context 131072)")


def test_readable_quant_table(hub, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")
    code, out, err = cli(capsys, "plan", f"hf:{QWEN}", "--gpu", "4060ti-16gb", "--context", "32768")
    assert code == 0, err
    assert f"Quants of {QWEN} on NVIDIA GeForce RTX 4060 Ti (16,380 MiB): target context 32768" in out
    lines = out.splitlines()
    row = next(line for line in lines if "│ 6.0bpw" in line)
    assert "◀ chosen" in row and "Q8 32,768 │ ◀ chosen" in row and "│ 6.0 │" in row
    assert "Q4 19,200 │ reaches only 19200 tokens (cache Q4)" in next(r for r in lines if "│ 8.0bpw" in r)
    assert "skipped: no config.json" in next(line for line in lines if "│ main" in line)
    assert "Chosen: 6.0bpw: the highest bitrate (6.0 bpw) that reaches the target context 32768" in out
    assert "Read " in out and "bytes from the Hub for 4 branches" in out
    assert f"hf:{QWEN}@6.0bpw (commit " in out and "Plan: backend" in out


def test_json_output_is_only_json(hub, capsys):
    code, out, err = cli(capsys, "plan", f"hf:{QWEN}", "--gpu", "3090", "--json")
    assert code == 0 and json.loads(out)["revision"] and err == ""


def test_no_exl2_branch_is_a_negative_answer(hub, capsys, tmp_path):
    hub.add_repo("org/readme-only", {})
    code, out, err = cli(capsys, "plan", "hf:org/readme-only", "--gpu", "3090")
    assert code == 1 and out == ""
    assert err == ("exlx-autocfg: error: no branch holds an EXL2 model (main: no config.json (files: "
                   ".gitattributes, README.md))\n")


@pytest.mark.parametrize(
    ("ref", "needle"),
    [
        ("hf:org/missing@4.0bpw", "hf:org/missing@4.0bpw: repository not found on http://127.0.0.1:"),
        (f"hf:{LLAMA}@5.0bpw", f"no branch, tag or commit '5.0bpw' in {LLAMA} (branches: 4.0bpw, 6.0bpw, "
                               "main)"),
        ("hf:org/gated@4.0bpw", "gated repo: the Hub needs a token of an account that accepted its terms"),
        (f"hf:{LLAMA}@main", "no config.json in this revision (files: .gitattributes, README.md)"),
        ("hf:org/big@4.0bpw", "output.safetensors: safetensors header length 30000000 is absurd "
                              "(limit 25000000)"),
        ("hf:org/broken@6.0bpw", "names shard 'output-00003-of-00003.safetensors', which is not in the repo"),
        ("hf:nope", "hf:nope: not a Hugging Face model reference; use hf:ORG/REPO[@REVISION]"),
    ],
)
def test_bad_input_is_one_line_exit_2(hub, capsys, models, tmp_path, ref, needle):
    big = tmp_path / "big"
    big.mkdir()
    (big / "config.json").write_bytes((models["llama-4.0"] / "config.json").read_bytes())
    with open(big / "output.safetensors", "wb") as fh:
        fh.write((30_000_000).to_bytes(8, "little"))
        fh.truncate(40_000_000)
    hub.add_repo("org/big", {"4.0bpw": files_of(big)})
    broken = files_of(models["llama-6.0"])
    del broken["output-00003-of-00003.safetensors"]
    hub.add_repo("org/broken", {"6.0bpw": broken})
    code, out, err = cli(capsys, "plan", ref, "--gpu", "3090")
    assert code == 2 and out == ""
    assert err.startswith("exlx-autocfg: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert needle in err


def test_unreachable_hub_says_what_is_cached(hub, capsys):
    plan_json(capsys, f"hf:{LLAMA}@4.0bpw", "--gpu", "3090")
    commit = hub.repos[LLAMA].commits["4.0bpw"][:12]
    hub.down()
    code, _, err = cli(capsys, "plan", f"hf:{LLAMA}@4.0bpw", "--gpu", "3090")
    assert code == 2 and err.count("\n") == 1
    assert f"cannot reach the Hub at {hub.endpoint}: ConnectError" in err
    assert f"cached: hf:{LLAMA}@4.0bpw (commit {commit})" in err and "HF_HUB_OFFLINE=1" in err


def test_gated_repo_with_a_token(hub, capsys, monkeypatch, models):
    monkeypatch.setenv("HF_TOKEN", "hf_granted")
    remote = plan_json(capsys, "hf:org/gated@4.0bpw", "--gpu", "3090")
    assert remote["model"]["fingerprint"] == load_model_spec(models["llama-4.0"]).fingerprint


@pytest.mark.slow
def test_offline_in_a_fresh_interpreter_plans_from_the_cache(hub, capsys, tmp_path, models):
    """HF_HUB_OFFLINE=1 read by the client at import, as in a user's shell: no request reaches the Hub, the
    plan is the online one (the listing included)."""
    online = plan_json(capsys, f"hf:{LLAMA}@6.0bpw", "--gpu", "3090")
    listing = plan_json(capsys, f"hf:{LLAMA}", "--gpu", "3090")
    hub.reset()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for ref, reference in ((f"hf:{LLAMA}@6.0bpw", online), (f"hf:{LLAMA}", listing)):
        done = subprocess.run([sys.executable, "-m", "exlx_autocfg", "plan", ref, "--gpu", "3090", "--json"],
                              capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert json.dumps(doc["memory"]) == json.dumps(reference["memory"])
        assert doc["model"]["hub"]["offline"] is True and doc["model"]["hub"]["bytes_read"] == 0
    assert doc["revision"] == listing["revision"]
    assert hub.log == []


def test_emit_and_profile_take_hf_references(hub, capsys, tmp_path):
    code, out, err = cli(capsys, "emit", "--format", "json", f"hf:{LLAMA}@4.0bpw", "--gpu", "3090")
    assert code == 0, err
    assert json.loads(out)["model"]["name"] == f"{LLAMA}@4.0bpw"
    code, out, err = cli(capsys, "profile", f"hf:{LLAMA}", "--gpu", "3090", "--out", str(tmp_path / "p.toml"))
    assert code == 0, err
    model = read_profile(tmp_path / "p.toml").computed_for.model
    assert (model.hf_repo, model.hf_revision) == (LLAMA, "6.0bpw")  # the best of the two on a 3090
    assert model.hf_commit == hub.repos[LLAMA].commits["6.0bpw"] and model.dir is None


def test_bpw_option_is_refused_for_hub_models(hub, capsys):
    code, _, err = cli(capsys, "plan", f"hf:{LLAMA}", "--bpw", "4.0", "--gpu", "3090")
    assert code == 2 and "--bpw 4.0: applies only to catalog models" in err


# ------------------------------------------------------------------------------------------ profiles


def hub_profile(path, facts, revision="4.0bpw"):
    spec = read_hub_spec(f"hf:{LLAMA}@{revision}")
    profile = profile_from_plan(plan(facts, spec), facts)
    write_profile(profile, path)
    return profile


def test_profile_from_a_revision_recognises_its_download(hub, tmp_path, models):
    facts = samples.facts()
    profile = hub_profile(tmp_path / "p.toml", facts)
    stamp = read_profile(tmp_path / "p.toml").computed_for.model
    assert (stamp.hf_repo, stamp.hf_revision, stamp.hf_commit) == (
        LLAMA, "4.0bpw", hub.repos[LLAMA].commits["4.0bpw"])
    same = load_model_spec(models["llama-4.0"])
    assert find_changes(profile, facts, same.fingerprint, model_dir=str(models["llama-4.0"])) == []
    other = load_model_spec(models["llama-6.0"])
    [change] = find_changes(profile, facts, other.fingerprint, model_dir=str(models["llama-6.0"]))
    assert change.kind == "model"
    assert change.message == (
        f"the profile was planned from hf:{LLAMA}@4.0bpw (commit {stamp.hf_commit[:12]}), but "
        f"{models['llama-6.0']} holds another revision or model: config.json or the safetensors headers "
        f"differ (fingerprint {same.fingerprint[:12]} -> {other.fingerprint[:12]})")


def test_verify_with_the_downloaded_directory(hub, tmp_path, models, capsys, monkeypatch):
    facts = samples.facts()
    hub_profile(tmp_path / "p.toml", facts)
    monkeypatch.setattr("exlx_autocfg.facts.detect.detect", lambda python=None, **kw: facts)
    profile = str(tmp_path / "p.toml")
    code, out, _ = cli(capsys, "verify", profile, "--model", str(models["llama-4.0"]), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["current"] and "holds the revision the profile was planned from" in doc["note"]
    code, out, _ = cli(capsys, "verify", str(tmp_path / "p.toml"), "--model", str(models["llama-6.0"]))
    assert code == 1 and "holds another revision or model" in out
    assert f"re-plan with: exlx-autocfg profile hf:{LLAMA}@4.0bpw" in out


def test_verify_a_hub_profile_asks_the_hub_whether_its_branch_moved(hub, tmp_path, models, capsys,
                                                                   monkeypatch):
    facts = samples.facts()
    hub_profile(tmp_path / "p.toml", facts)
    monkeypatch.setattr("exlx_autocfg.facts.detect.detect", lambda python=None, **kw: facts)
    code, out, _ = cli(capsys, "verify", str(tmp_path / "p.toml"), "--python", sys.executable)
    assert code == 0 and out.startswith("current:")
    # The branch is re-uploaded with other weights: the profile no longer describes it.
    hub.add_repo(LLAMA, {"4.0bpw": files_of(models["llama-6.0"]), "6.0bpw": files_of(models["llama-6.0"])})
    code, out, _ = cli(capsys, "verify", str(tmp_path / "p.toml"), "--python", sys.executable)
    new_commit = hub.repos[LLAMA].commits["4.0bpw"]
    assert code == 1
    assert (f"but hf:{LLAMA}@4.0bpw (now commit {new_commit[:12]}) holds another revision or model") in out
    hub.down()
    code, out, _ = cli(capsys, "verify", str(tmp_path / "p.toml"), "--python", sys.executable)
    assert code == 0
    assert out.splitlines()[0].startswith("note: the Hub revision was not checked: cannot reach the Hub")


@pytest.mark.slow  # imports the real exllamav2 (its stand-in extension) to build the config
def test_prepare_finds_the_hub_profile_for_the_download(hub, tmp_path, models, no_exllama_switches):
    facts = samples.facts(xformers=None)  # matmul: what this process's exllamav2 (CPU torch) can run
    spec = read_hub_spec(f"hf:{LLAMA}@4.0bpw")
    path = default_profile_path(spec.name, spec.fingerprint, profile_from_plan(plan(facts, spec), facts)
                                .computed_for.machine)
    write_profile(profile_from_plan(plan(facts, spec), facts), path)
    import_exllamav2()
    prepared = prepare(models["llama-4.0"], facts=facts, on_stale="refuse", save=False)
    assert prepared.profile_path == path and prepared.changes == [] and not prepared.replanned
    with pytest.raises(StaleProfileError, match="holds another revision or model"):
        prepare(models["llama-6.0"], path, facts=facts, on_stale="refuse", save=False)
