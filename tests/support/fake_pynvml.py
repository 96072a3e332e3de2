"""Use the fake NVML (real nvidia-ml-py over a fake libnvidia-ml.so.1) in-process or in a child process.

In-process:   `nvml = use_fake_nvml(monkeypatch, "3090+p40")` -> `import pynvml` now gives the fake.
Child:        `subprocess.run(..., env=fake_nvml_env("p40"))` (the fake site dir goes first on PYTHONPATH).
Scenarios and their format: tests/support/nvml_scenarios.py.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

from tests.support.nvml_scenarios import ENV_VAR, SCENARIOS, resolve, to_env_value, with_memory

FAKE_NVML_SITE = Path(__file__).parent / "fake_nvml_site"

__all__ = [
    "ENV_VAR",
    "FAKE_NVML_SITE",
    "SCENARIOS",
    "fake_nvml_env",
    "load_fake_pynvml",
    "use_fake_nvml",
    "with_memory",
]


def load_fake_pynvml() -> types.ModuleType:
    """A fresh fake `pynvml` module object (library not loaded yet; it reads EXLX_FAKE_NVML on nvmlInit)."""
    spec = importlib.util.spec_from_file_location("pynvml", FAKE_NVML_SITE / "pynvml.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get("pynvml")
    sys.modules["pynvml"] = module  # the real module's code looks itself up in sys.modules while loading
    try:
        spec.loader.exec_module(module)
    finally:
        if previous is not None:
            sys.modules["pynvml"] = previous
        else:
            del sys.modules["pynvml"]
    return module


def use_fake_nvml(monkeypatch: Any, scenario: str | dict[str, Any]) -> types.ModuleType:
    """Make `import pynvml` return a fresh fake answering from `scenario` for the rest of the test."""
    resolve(scenario)  # fail early on a bad name
    monkeypatch.setenv(ENV_VAR, to_env_value(scenario))
    module = load_fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", module)
    return module


def fake_nvml_env(
    scenario: str | dict[str, Any], base: dict[str, str] | None = None, **extra: str
) -> dict[str, str]:
    """An environment for a child process whose `import pynvml` is the fake answering from `scenario`."""
    env = dict(os.environ if base is None else base)
    parts = [str(FAKE_NVML_SITE)]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env[ENV_VAR] = to_env_value(scenario)
    env.update(extra)
    return env
