"""What each architecture asks of the backends, against the real exllamav2 0.3.2 `arch_compat_overrides`:
for every recognised architecture and every combination of the attn.py import flags it reads, the switches
exl2.compat_overrides computes from our ModelSpec fields equal the ones the real method leaves on the config,
and the planner's backend validation rejects what the overrides turn off."""

from __future__ import annotations

import itertools
import json

import pytest

from exlx_autocfg import exl2 as vocab
from exlx_autocfg.model.architectures import supported_architectures
from exlx_autocfg.model.config import parse_config
from exlx_autocfg.model.spec import ModelSpec
from tests.support.arch_models import ARCHITECTURES
from tests.support.model_dirs import model_config, model_preprocessor

FLAGS = list(itertools.product([False, True], repeat=4))  # flash, flash window, flash softcap, xformers


def _real_config(exl2, tmp_path, config: dict):
    (tmp_path / "config.json").write_text(json.dumps(config))
    cfg = exl2.ExLlamaV2Config()
    cfg.model_dir = str(tmp_path)
    cfg.prepare(no_tensors=True)  # config.json only: arch_compat_overrides needs nothing else
    return cfg


@pytest.mark.parametrize("arch", supported_architectures())
def test_compat_overrides_match_the_real_method(exl2, tmp_path, monkeypatch, arch):
    import exllamav2.attn as attn

    config = model_config(ARCHITECTURES[arch][0])
    if arch == "Gemma2ForCausalLM":
        config = {**config, "sliding_window": 0}  # the override follows the architecture, not the window
    fields = parse_config(config, preprocessor=model_preprocessor(ARCHITECTURES[arch][0]))
    spec = ModelSpec(name=arch, path=None, source="directory", **fields)
    for flash, window, softcap, xformers in FLAGS:
        monkeypatch.setattr(attn, "has_flash_attn", flash)
        monkeypatch.setattr(attn, "has_flash_attn_with_window", window)
        monkeypatch.setattr(attn, "has_flash_attn_with_softcap", softcap)
        monkeypatch.setattr(attn, "has_xformers", xformers)
        cfg = _real_config(exl2, tmp_path, config)
        cfg.arch_compat_overrides(quiet=True)
        real = {s: bool(getattr(cfg, s)) for s in vocab.SWITCHES}
        flags = vocab.ImportFlags(flash_attn=flash, xformers=xformers, sdpa=True, flash_window=window,
                                  flash_softcap=softcap)  # fmt: skip
        ours = vocab.compat_overrides(
            dict.fromkeys(vocab.SWITCHES, False),
            flags,
            softcap=bool(spec.attn_logit_softcapping),
            sliding_window=spec.swa_arch,
            eager_only=spec.eager_only,
        )
        assert ours == real, (arch, flash, window, softcap, xformers)


def test_an_eager_only_architecture_gets_every_switch(exl2, tmp_path, monkeypatch):
    """No architecture of 0.3.2 is eager-only; the rule itself, on a real config with the flag set."""
    import exllamav2.attn as attn

    monkeypatch.setattr(attn, "has_flash_attn", True)
    monkeypatch.setattr(attn, "has_xformers", True)
    cfg = _real_config(exl2, tmp_path, model_config("tiny-llama"))
    cfg.arch.lm.eager_attn_only = True
    cfg.arch_compat_overrides(quiet=True)
    real = {s: bool(getattr(cfg, s)) for s in vocab.SWITCHES}
    ours = vocab.compat_overrides(dict.fromkeys(vocab.SWITCHES, False), vocab.ImportFlags(True, True, True),
                                  eager_only=True)  # fmt: skip
    assert ours == real == dict.fromkeys(vocab.SWITCHES, True)


def test_backend_validation_rejects_what_eager_only_turns_off():
    from exlx_autocfg.facts.what_if import what_if_facts
    from exlx_autocfg.planner.backends import BackendQuery, select

    facts = what_if_facts(["rtx-3090"], ["flash-attn==2.7.4.post1", "xformers==0.0.29.post3"])
    base = BackendQuery(facts=facts, gpus=tuple(facts.gpu.gpus), exllamav2="0.3.2")
    assert select(base).backend == "flash_attn"
    eager = BackendQuery(facts=facts, gpus=tuple(facts.gpu.gpus), exllamav2="0.3.2", eager_only=True)
    chosen = select(eager)
    assert chosen.backend == "matmul"
    for name in ("flash_attn", "xformers", "sdpa"):
        assert "backend.eager_only" in [f.code for f in chosen.rejected[name]], name
