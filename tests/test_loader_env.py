"""The EXLLAMA_NO_* switches are in place BEFORE `import exllamav2`, in fresh interpreters running the real
exllamav2 0.3.2 (stand-in extension only) and, in one of them, a real xformers release on the path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.profile.format import profile_from_plan, write_profile
from tests.support import profile_samples as samples
from tests.support.envs import child_env, xformers_site
from tests.support.model_dirs import make_model_dir
from tests.support.standin import STANDIN_SITE

ROOT = Path(__file__).resolve().parent.parent
SWITCHES = ["EXLLAMA_NO_FLASH_ATTN", "EXLLAMA_NO_XFORMERS", "EXLLAMA_NO_SDPA"]

CHILD = textwrap.dedent("""
    import json, os, sys
    SWITCHES = {switches!r}
    seen = {{}}

    class ImportSpy:
        # Records which switches are in os.environ at the moment exllamav2 is first imported.
        def find_spec(self, name, path=None, target=None):
            if name == "exllamav2" and not seen:
                seen.update({{v: v in os.environ for v in SWITCHES}})
            return None

    sys.meta_path.insert(0, ImportSpy())
    from exlx_autocfg.profile.loader import LoaderError, prepare
    from tests.support import profile_samples as samples

    model, first, second = sys.argv[1:4]
    assert "exllamav2" not in sys.modules
    prepared = prepare(model, first, facts=samples.facts())
    import exllamav2.attn as attn
    out = {{"seen": seen, "notes": prepared.notes, "backend": prepared.backend,
           "config": [prepared.config.no_flash_attn, prepared.config.no_xformers, prepared.config.no_sdpa],
           "has": [attn.has_flash_attn, attn.has_xformers, attn.has_lower_right_sdpa]}}
    try:
        import xformers.ops.fmha.attn_bias  # importable here, yet switched off for exllamav2
        out["xformers_importable"] = True
    except ImportError:
        out["xformers_importable"] = False
    try:
        prepare(model, second, facts=samples.facts())
        out["second"] = None
    except LoaderError as exc:
        out["second"] = exc.one_line()
    print("RESULT " + json.dumps(out))
""").format(switches=SWITCHES)


def write(model_dir, path, backend):
    plan = samples.plan(backend=backend, model=load_model_spec(model_dir).summary())
    write_profile(profile_from_plan(plan, samples.facts()), path)
    return str(path)


def clean_env(*front, **extra):
    """A child environment with `front` on PYTHONPATH and no EXLLAMA_NO_* switch unless given in `extra`."""
    env = {k: v for k, v in child_env(*front).items() if k not in SWITCHES}
    return {**env, "PYTHONWARNINGS": "ignore", **extra}


@pytest.mark.slow
def test_switches_are_set_before_the_import(tmp_path):
    model = make_model_dir(tmp_path, "llama3-8b", quant="exl2", bpw=4.0)
    matmul = write(model, tmp_path / "matmul.toml", "matmul")
    sdpa = write(model, tmp_path / "sdpa.toml", "sdpa")
    env_matmul = clean_env(STANDIN_SITE, ROOT)
    # A shell that still exports EXLLAMA_NO_SDPA=0 (presence is what counts) and a real xformers on the path.
    env_sdpa = clean_env(xformers_site("0.0.26.post1"), STANDIN_SITE, ROOT, EXLLAMA_NO_SDPA="0")
    runs = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(model), matmul, sdpa], env=env_matmul,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        subprocess.Popen([sys.executable, "-c", CHILD, str(model), sdpa, matmul], env=env_sdpa,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    ]
    results = []
    for proc in runs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:]))
    first, second = results

    # matmul: all three switches present when exllamav2 was imported; SDPA therefore off in exllamav2.
    assert first["seen"] == dict.fromkeys(SWITCHES, True)
    assert first["has"] == [False, False, False] and first["config"] == [True, True, True]
    assert first["backend"] == "matmul"
    # Same process, now an SDPA profile: exllamav2 already decided without SDPA, and says so.
    assert first["second"].startswith(
        "exllamav2 was imported before the profile was applied and EXLLAMA_NO_SDPA was set, so "
        "exllamav2.attn.has_lower_right_sdpa is False")

    # sdpa with xformers 0.0.26.post1 importable: NO_FLASH_ATTN, NO_XFORMERS set; the stale NO_SDPA removed.
    assert second["seen"] == {"EXLLAMA_NO_FLASH_ATTN": True, "EXLLAMA_NO_XFORMERS": True,
                              "EXLLAMA_NO_SDPA": False}
    assert second["xformers_importable"] is True
    assert second["has"] == [False, False, True] and second["backend"] == "sdpa"
    assert "unset EXLLAMA_NO_SDPA (the profile uses that backend)" in second["notes"]
    # A matmul profile after an SDPA import needs nothing new: config.no_sdpa turns SDPA off per call.
    assert second["second"] is None
