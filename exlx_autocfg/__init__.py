"""exlx-autocfg: hardware-aware compatibility checks and auto-configuration for ExLlamaV2.

Public API (imported lazily so that `import exlx_autocfg` stays cheap and never touches the GPU stack):
- `detect(python=None, timeout=...) -> Facts`: probe GPUs and the GPU stack of an interpreter.
- `plan(facts, model, **request) -> Plan`: the pure planner.
- `prepare(model_dir, profile=None, **overrides)` / `load(...)`: apply a profile to ExLlamaV2.
- `check(...)`: install-time verdicts.
- `load_model_spec(ref, bpw=None)`, `Facts.from_json(text)`.

Errors: every public function raises only `ExlxError` subclasses, each with a stable `code`; `RAISES`
says which ones each function raises (docs/errors.md has the table and the codes). Options are named as
keyword arguments in these errors (`plan(context=-1)` -> "context=-1: ..."), never as CLI flags.
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
    "UsageError": ("exlx_autocfg.errors", "UsageError"),
    "OptionError": ("exlx_autocfg.errors", "OptionError"),
    "InputError": ("exlx_autocfg.errors", "InputError"),
    "SpecialFileError": ("exlx_autocfg.errors", "SpecialFileError"),
    "OutputError": ("exlx_autocfg.errors", "OutputError"),
    "ModelSpecError": ("exlx_autocfg.errors", "ModelSpecError"),
    "ProfileError": ("exlx_autocfg.errors", "ProfileError"),
    "FactsError": ("exlx_autocfg.errors", "FactsError"),
    "ProbeError": ("exlx_autocfg.errors", "ProbeError"),
    "DoesNotFitError": ("exlx_autocfg.errors", "DoesNotFitError"),
    "BackendRefusedError": ("exlx_autocfg.errors", "BackendRefusedError"),
    "StaleProfileError": ("exlx_autocfg.errors", "StaleProfileError"),
    "LoaderError": ("exlx_autocfg.profile.loader", "LoaderError"),
}

# Which ExlxError subclasses each public function raises (a subclass of a listed class counts as listed:
# OptionError is a UsageError, SpecialFileError an InputError). tests/test_public_api.py holds the
# functions to it with bad arguments of every kind; docs/errors.md prints this table.
RAISES: dict[str, tuple[str, ...]] = {
    "detect": ("OptionError", "ProbeError"),
    "plan": ("UsageError", "ModelSpecError", "SpecialFileError", "BackendRefusedError", "DoesNotFitError"),
    "prepare": ("UsageError", "ModelSpecError", "ProfileError", "SpecialFileError", "OutputError",
                "StaleProfileError", "LoaderError", "ProbeError"),
    "load": ("UsageError", "ModelSpecError", "ProfileError", "SpecialFileError", "OutputError",
             "StaleProfileError", "LoaderError", "ProbeError"),
    "check": ("UsageError", "ProbeError"),
    "load_model_spec": ("OptionError", "ModelSpecError", "SpecialFileError"),
    "Facts.from_json": ("FactsError",),
}

__all__ = ["RAISES", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'exlx_autocfg' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names (lazy ones included, so completion and `dir()` show them) and the submodules'
    usual dunder attributes."""
    return sorted({*__all__, *(k for k in globals() if k.startswith("__"))})
