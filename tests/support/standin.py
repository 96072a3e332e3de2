"""Import the real exllamav2 wheel on CPU torch with only `exllamav2_ext` stood in for."""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

STANDIN_SITE = Path(__file__).parent / "standin_site"


def install_standin_ext() -> types.ModuleType:
    """Register the stand-in extension in sys.modules (idempotent) and return it."""
    module = sys.modules.get("exllamav2_ext")
    if module is None:
        module = types.ModuleType("exllamav2_ext")
        module.STANDIN = True  # type: ignore[attr-defined]
        sys.modules["exllamav2_ext"] = module
    return module


def import_exllamav2() -> types.ModuleType:
    """The real `exllamav2` package, imported with the stand-in extension."""
    install_standin_ext()
    return importlib.import_module("exllamav2")
