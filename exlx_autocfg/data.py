"""Access to the rules data shipped in `profiles/` (GPU table, compatibility rules, model catalog).

Data that changes with releases lives there as TOML/JSON, each rule with its source; code reads it here.
"""

from __future__ import annotations

import functools
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


def profiles_dir() -> Path:
    """The directory holding the shipped data files (works from a checkout and from a wheel)."""
    return Path(str(resources.files("exlx_autocfg.profiles")))


def probe_script() -> Path:
    """The stdlib-only probe script, runnable by any Python >= 3.8."""
    return Path(str(resources.files("exlx_autocfg.probe"))) / "exlx_probe.py"


@functools.cache
def load_data(name: str) -> dict[str, Any]:
    """Parse `profiles/<name>` (.toml or .json). Cached: the files do not change while we run."""
    path = profiles_dir() / name
    with path.open("rb") as fh:
        if name.endswith(".json"):
            return json.load(fh)
        return tomllib.load(fh)
