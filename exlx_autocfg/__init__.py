"""exlx-autocfg: hardware-aware compatibility checks and auto-configuration for ExLlamaV2.

Public API (imported lazily so that `import exlx_autocfg` stays cheap and never touches the GPU stack):
- `detect(python=None, timeout=...) -> Facts`: probe GPUs and the GPU stack of an interpreter.
- `plan(facts, model, **request) -> Plan`: the pure planner.
- `prepare(model_dir, profile=None, **overrides)` / `load(...)`: apply a profile to ExLlamaV2.
- `check(...)`: install-time verdicts.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "detect": ("exlx_autocfg.facts.detect", "detect"),
    "plan": ("exlx_autocfg.planner.core", "plan"),
    "prepare": ("exlx_autocfg.profile.loader", "prepare"),
    "load": ("exlx_autocfg.profile.loader", "load"),
    "check": ("exlx_autocfg.checks", "check"),
    "Facts": ("exlx_autocfg.facts.types", "Facts"),
    "Plan": ("exlx_autocfg.planner.types", "Plan"),
    "load_model_spec": ("exlx_autocfg.model.load", "load_model_spec"),
    "ExlxError": ("exlx_autocfg.errors", "ExlxError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'exlx_autocfg' has no attribute {name!r}")
