"""`prepare` against the real exllamav2 0.3.2 (only exllamav2_ext stood in for) and real sparse model dirs.

exllamav2 is imported once in this process. The env-switch order (switches before the import) is tested in
fresh interpreters in tests/test_loader_env.py.
"""

from __future__ import annotations

import json
import warnings

import pytest

from exlx_autocfg.errors import ModelSpecError, ProfileError, StaleProfileError, UsageError
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.profile.format import profile_from_plan, read_profile, write_profile
from exlx_autocfg.profile.loader import LoaderError, StaleProfileWarning, prepare
from tests.support import profile_samples as samples
from tests.support.model_dirs import make_model_dir

pytestmark = pytest.mark.usefixtures("no_exllama_switches")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("models"), "llama3-8b", quant="exl2", bpw=4.0)


def usable_backend(exl2) -> str:
    """SDPA when this process's exllamav2 import enabled it (torch 2.13 has causal_lower_right)."""
    return "sdpa" if exl2.attn.has_lower_right_sdpa else "matmul"


def write_profile_for(model_dir, path, facts=None, **plan_kw):
    spec = load_model_spec(model_dir)
    facts = facts or samples.facts()
    plan = samples.plan(gpus=facts.gpu.gpus, model=spec.summary(), **plan_kw)
    write_profile(profile_from_plan(plan, facts), path)
    return path


@pytest.mark.parametrize(("mode", "cls"), [("FP16", "ExLlamaV2Cache"), ("Q8", "ExLlamaV2Cache_Q8"),
                                           ("Q6", "ExLlamaV2Cache_Q6"), ("Q4", "ExLlamaV2Cache_Q4")])
def test_prepare_builds_the_real_config_and_cache(exl2, llama, tmp_path, mode, cls):
    backend = usable_backend(exl2)
    path = write_profile_for(llama, tmp_path / "p.toml", backend=backend, cache_mode=mode, max_seq_len=12288,
                             max_input_len=1024, max_attention_size=1024 * 2048, max_batch_size=2)
    prepared = prepare(llama, path, facts=samples.facts())
    config = prepared.config
    assert type(config) is exl2.ExLlamaV2Config
    assert config.model_dir == str(llama) and config.num_hidden_layers == 32  # read from config.json
    assert (config.max_seq_len, config.max_input_len, config.max_attention_size, config.max_batch_size) == (
        12288, 1024, 1024 * 2048, 2)
    expected = samples.switches(backend)
    assert (config.no_flash_attn, config.no_xformers, config.no_sdpa) == (
        expected["no_flash_attn"], expected["no_xformers"], expected["no_sdpa"])
    assert prepared.backend == backend and prepared.changes == []
    assert prepared.cache_class is getattr(exl2, cls)
    assert (prepared.gpu_split, prepared.autosplit, prepared.paged) == (None, False, False)
    model = exl2.ExLlamaV2(config)  # builds the module graph; loads nothing
    cache = prepared.make_cache(model, lazy=True)
    assert type(cache) is getattr(exl2, cls) and cache.max_seq_len == 12288 and cache.batch_size == 1
    direct = prepared.cache_class(model, max_seq_len=config.max_seq_len, lazy=True)
    assert direct.max_seq_len == 12288


def test_split_and_reserves_come_through(exl2, llama, tmp_path):
    two = samples.facts(gpus=[samples.gpu_2080ti(0), samples.gpu_p40(1, uuid="GPU-p40-second",
                                                                   pci_bus_id="00000000:02:00.0")])
    path = write_profile_for(llama, tmp_path / "split.toml", facts=two, backend=usable_backend(exl2),
                             gpu_split=[9.5, 12.25])
    assert prepare(llama, path, facts=two).gpu_split == [9.5, 12.25]
    auto = write_profile_for(llama, tmp_path / "auto.toml", facts=two, backend=usable_backend(exl2),
                             autosplit=True, reserve_bytes=[256 * 1024**2, 64 * 1024**2])
    prepared = prepare(llama, auto, facts=two)
    assert prepared.autosplit and prepared.reserve_vram == [256 * 1024**2, 64 * 1024**2]


def test_overrides_apply_and_validate(exl2, llama, tmp_path):
    path = write_profile_for(llama, tmp_path / "p.toml", backend=usable_backend(exl2))
    prepared = prepare(llama, path, facts=samples.facts(), max_seq_len=4096, cache_mode="Q4",
                       backend="matmul")
    assert prepared.config.max_seq_len == 4096 and prepared.cache_class is exl2.ExLlamaV2Cache_Q4
    assert prepared.config.no_sdpa and prepared.backend == "matmul"
    with pytest.raises(UsageError, match=r"override settings\.max_seq_len: must be a positive integer"):
        prepare(llama, path, facts=samples.facts(), max_seq_len=-256)
    with pytest.raises(UsageError, match="unknown override 'max_seqlen'"):
        prepare(llama, path, facts=samples.facts(), max_seqlen=4096)


def test_softcap_model_cannot_run_sdpa(exl2, tmp_path):
    """Gemma 2 has logit softcapping: exllamav2 runs it with matmul, not SDPA. A hand-edited sdpa profile is
    refused instead of silently running another backend; on_stale='warn' runs it and says so."""
    if not exl2.attn.has_lower_right_sdpa:
        pytest.skip("exllamav2 was imported earlier in this session with SDPA off")
    gemma = make_model_dir(tmp_path, "tiny-gemma2", quant="fp16")
    path = write_profile_for(gemma, tmp_path / "g.toml", backend="sdpa", max_seq_len=4096)
    with pytest.raises(LoaderError, match="would run attention with matmul, not the profile's sdpa"):
        prepare(gemma, path, facts=samples.facts())
    with pytest.warns(StaleProfileWarning, match="matmul"):
        prepared = prepare(gemma, path, facts=samples.facts(), on_stale="warn")
    assert prepared.backend == "matmul"


def test_backend_missing_from_the_earlier_import_is_reported(exl2, llama, tmp_path):
    """exllamav2 is already imported here without flash-attn (not installed): a flash profile cannot run."""
    assert not exl2.attn.has_flash_attn
    facts = samples.facts(flash_attn="2.6.3")
    path = write_profile_for(llama, tmp_path / "fa.toml", facts=facts, backend="flash_attn", paged=True)
    with pytest.raises(LoaderError) as info:
        prepare(llama, path, facts=facts)
    message = str(info.value)
    assert "exllamav2 was imported before the profile was applied and flash-attn >= 2.2.1 did not" in message
    assert "has_flash_attn is False" in message
    assert info.value.hint == "call exlx_autocfg.prepare() before importing exllamav2, or start a new process"
    with pytest.warns(StaleProfileWarning, match="running unpaged"):
        anyway = prepare(llama, path, facts=facts, on_stale="warn")
    assert anyway.backend != "flash_attn" and anyway.paged is False


def test_stale_profile_refuse_and_warn(exl2, llama, tmp_path):
    path = write_profile_for(llama, tmp_path / "p.toml", backend=usable_backend(exl2))
    smaller = samples.facts(gpus=[samples.gpu_2080ti(total_mib=11264)])
    with pytest.raises(StaleProfileError, match=r"has less VRAM: 11\.0 GiB, profile computed for 22\.0 GiB"):
        prepare(llama, path, facts=smaller, on_stale="refuse")
    with pytest.warns(StaleProfileWarning, match="is stale, using it anyway: GPU 0"):
        prepared = prepare(llama, path, facts=smaller, on_stale="warn")
    assert [c.kind for c in prepared.changes] == ["vram"] and not prepared.replanned
    with pytest.raises(UsageError, match="on_stale"):
        prepare(llama, path, facts=smaller, on_stale="ignore")


def test_edited_config_json_makes_the_profile_stale(exl2, tmp_path):
    model = make_model_dir(tmp_path, "llama3-8b", quant="exl2", bpw=4.0)
    path = write_profile_for(model, tmp_path / "p.toml", backend=usable_backend(exl2))
    config = json.loads((model / "config.json").read_text())
    config["rope_theta"] = 1000000.0
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(StaleProfileError, match=r"model llama3-8b-exl2-4bpw changed: config\.json or the "):
        prepare(model, path, facts=samples.facts(), on_stale="refuse")
    other = make_model_dir(tmp_path, "tiny-llama", quant="fp16")
    with pytest.raises(StaleProfileError, match="computed for another model: llama3-8b-exl2-4bpw in "):
        prepare(other, path, facts=samples.facts(), on_stale="refuse")


def test_bad_inputs_are_one_line_errors(exl2, llama, tmp_path):
    path = write_profile_for(llama, tmp_path / "p.toml", backend=usable_backend(exl2))
    path.write_text(path.read_text().replace("max_seq_len = 16384", "max_seq_len = -1"))
    with pytest.raises(ProfileError, match=r"settings\.max_seq_len: must be a positive integer"):
        prepare(llama, path, facts=samples.facts())
    with pytest.raises(ModelSpecError, match="does not exist"):
        prepare(tmp_path / "missing", path, facts=samples.facts())


def test_profile_object_is_used_as_is_and_not_written(exl2, llama, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # where a default profile would go
    spec = load_model_spec(llama)
    profile = profile_from_plan(samples.plan(backend=usable_backend(exl2), model=spec.summary()),
                                samples.facts())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepared = prepare(llama, profile, facts=samples.facts())
    assert prepared.profile is profile and prepared.profile_path is None
    assert not (tmp_path / "config").exists()  # nothing was written anywhere


def test_no_profile_yet_plans_and_writes_one(exl2, llama, tmp_path, monkeypatch):
    """profile=None: the default location (one file per model fingerprint and machine); made by the real
    planner when missing, found the next time."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    facts = samples.facts(xformers=None)  # torch 2.3, no xformers: the planner picks matmul
    first = prepare(llama, facts=facts)
    assert first.notes[0] == "no profile for this model and machine yet: planned one"
    assert first.profile_path.parent == tmp_path / "exlx-autocfg" / "profiles" and first.profile_path.exists()
    assert read_profile(first.profile_path) == first.profile and first.backend == "matmul"
    again = prepare(llama, facts=facts)
    assert again.profile == first.profile and not any("planned" in n for n in again.notes)
    named = prepare(llama, tmp_path / "named.toml", facts=facts)  # a path that does not exist yet
    assert read_profile(tmp_path / "named.toml").settings == named.settings


def test_load_needs_a_gpu(exl2, llama, tmp_path):
    """load() = prepare() + the GPU; on this CPU-only torch it stops with one clear line after prepare."""
    import torch

    from exlx_autocfg.profile.loader import load

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the GPU path is exercised by bench/gpu_validate.py")
    path = write_profile_for(llama, tmp_path / "p.toml", backend=usable_backend(exl2))
    with pytest.raises(LoaderError, match=r"load\(\) needs a GPU and torch sees none"):
        load(llama, path, facts=samples.facts())


def test_prepare_command_is_a_dry_run_of_the_loader(exl2, llama, tmp_path, monkeypatch, capsys):
    import json as _json

    from exlx_autocfg.cli import run

    path = write_profile_for(llama, tmp_path / "p.toml", backend="matmul", cache_mode="Q4", max_seq_len=8192)
    fresh = samples.facts()
    monkeypatch.setattr("exlx_autocfg.facts.detect.detect", lambda python=None, **kw: fresh)
    assert run(["prepare", str(llama), "--profile", str(path), "--json"]) == 0
    doc = _json.loads(capsys.readouterr().out)
    assert doc["backend"] == "matmul" and doc["cache_class"] == "ExLlamaV2Cache_Q4" and doc["stale"] == []
    assert doc["config"]["max_seq_len"] == 8192 and doc["config"]["no_sdpa"] is True
    fresh = samples.facts(gpus=[samples.gpu_2080ti(total_mib=11264)])
    assert run(["prepare", str(llama), "--profile", str(path), "--on-stale", "refuse"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"exlx-autocfg: error: profile {path} is stale: GPU 0") and err.count("\n") == 1
