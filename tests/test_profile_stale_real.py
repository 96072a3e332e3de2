"""Stale profiles caught with real components: the real probe (A's `probe/exlx_probe.py`) run against the
real xformers 0.0.26.post1 and 0.0.35 side by side, the fake NVML (real nvidia-ml-py over a fake library)
for VRAM, the real planner for re-planning, and the `verify` command over those facts."""

from __future__ import annotations

import json
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest

from exlx_autocfg.cli import run
from exlx_autocfg.facts.detect import facts_from_probe
from exlx_autocfg.facts.gpuinfo import read_gpu_report
from exlx_autocfg.facts.probe_runner import run_probe
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.planner.core import plan
from exlx_autocfg.profile.format import profile_from_plan, read_profile, write_profile
from exlx_autocfg.profile.loader import StaleProfileWarning, prepare
from exlx_autocfg.profile.staleness import find_changes
from tests.support import profile_samples as samples
from tests.support.envs import child_env, xformers_site
from tests.support.fake_pynvml import use_fake_nvml, with_memory
from tests.support.model_dirs import make_model_dir
from tests.support.real_wheel import CACHE_CLASSES

FP = "ab" * 32
OLD_PATH = "xformers.ops.fmha.LowerTriangularFromBottomRightMask"


@pytest.fixture(scope="module")
def probe_docs():
    """The probe's documents for xformers 0.0.26.post1 and 0.0.35, each on the child's PYTHONPATH."""

    def probe(version):
        return run_probe(None, timeout=60, libraries=["xformers"], env=child_env(xformers_site(version)))

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(["0.0.26.post1", "0.0.35"], pool.map(probe, ["0.0.26.post1", "0.0.35"]), strict=True))


def gpu_report(monkeypatch, scenario):
    use_fake_nvml(monkeypatch, scenario)
    return read_gpu_report()


@pytest.mark.slow
def test_xformers_swapped_on_the_path(probe_docs, monkeypatch, tmp_path, capsys):
    gpus = gpu_report(monkeypatch, "2080ti-22gb")
    old = facts_from_probe(probe_docs["0.0.26.post1"], gpus, env={})
    new = facts_from_probe(probe_docs["0.0.35"], gpus, env={})
    assert old.lib("xformers").details["import_paths"][OLD_PATH] is True  # what the real releases say
    profile = profile_from_plan(samples.plan(gpus=old.gpu.gpus, backend="xformers", model_path=None), old)
    assert find_changes(profile, old, FP) == []
    assert [c.message for c in find_changes(profile, new, FP)] == [
        "xformers upgraded 0.0.26.post1 -> 0.0.35",
        f"xformers import paths moved: {OLD_PATH} no longer resolves",
    ]

    # `verify` reports the same; its facts source is swapped for these probe-built facts.
    path = write_profile(profile, tmp_path / "p.toml")
    monkeypatch.setattr("exlx_autocfg.facts.detect.detect", lambda python=None, **kw: new)
    assert run(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"stale: {path}" in out and "  - xformers upgraded 0.0.26.post1 -> 0.0.35" in out
    assert run(["verify", str(path), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["current"] is False and [c["kind"] for c in doc["changes"]] == ["library", "library"]
    monkeypatch.setattr("exlx_autocfg.facts.detect.detect", lambda python=None, **kw: old)
    assert run(["verify", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    # (the sample's model is neither a directory nor in the catalog: its settings cannot be re-checked)
    assert out == ["note: the settings were not re-checked: the model could not be read",
                   f"current: {path} matches this machine, its libraries and the model, and its settings fit "
                   "the GPUs it was made for"]


@pytest.mark.slow
def test_less_vram_from_the_fake_nvml(probe_docs, monkeypatch):
    doc = probe_docs["0.0.26.post1"]
    before = facts_from_probe(doc, gpu_report(monkeypatch, "2080ti-22gb"), env={})
    smaller = with_memory("2080ti-22gb", total_mib=11264)
    after = facts_from_probe(doc, gpu_report(monkeypatch, smaller), env={})
    profile = profile_from_plan(samples.plan(gpus=before.gpu.gpus), before)
    assert [c.message for c in find_changes(profile, after, FP)] == [
        "GPU 0 (NVIDIA GeForce RTX 2080 Ti) has less VRAM: 11.0 GiB, profile computed for 22.0 GiB"]
    other = facts_from_probe(doc, gpu_report(monkeypatch, "p40"), env={})
    assert [c.kind for c in find_changes(profile, other, FP)] == ["gpu", "gpu"]


def test_prepare_replans_a_stale_profile_with_the_real_planner(monkeypatch, tmp_path, exl2,
                                                              no_exllama_switches):
    """on_stale='replan' (the default): plan again with the profile's request, rewrite it, say why."""
    model = make_model_dir(tmp_path, "llama3-8b", quant="exl2", bpw=4.0)
    spec = load_model_spec(model)
    # No xformers and torch 2.3 (no causal_lower_right): the planner picks matmul, which runs here too.
    big = samples.facts(gpus=gpu_report(monkeypatch, "2080ti-22gb").gpus, xformers=None)
    small = samples.facts(gpus=gpu_report(monkeypatch, with_memory("2080ti-22gb", total_mib=6144)).gpus,
                          xformers=None)
    first = plan(big, spec, context=8192, cache="FP16")
    path = write_profile(profile_from_plan(first, big), tmp_path / "p.toml")
    with pytest.warns(StaleProfileWarning, match=r"was stale, re-planned: GPU 0 .* has less VRAM: 6\.0 GiB"):
        prepared = prepare(model, path, facts=small)
    assert prepared.replanned and [c.kind for c in prepared.changes] == ["vram"]
    rewritten = read_profile(path)
    assert rewritten == prepared.profile
    assert rewritten.computed_for.gpus[0].memory_total == 6144 * 1024**2
    assert rewritten.request == first.request
    assert prepared.config.max_seq_len == rewritten.settings.max_seq_len
    assert prepared.cache_class is getattr(exl2, CACHE_CLASSES[rewritten.settings.cache_mode])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # now current: no warning, nothing re-planned
        again = prepare(model, path, facts=small)
    assert not again.replanned and again.changes == []
