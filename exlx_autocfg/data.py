"""Access to the rules data shipped in `profiles/` (GPU table, compatibility rules, model catalog).

Data that changes with releases lives there as TOML/JSON, each rule with its source; code reads it here.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


def _package_dir(package: str) -> Path:
    """A data package's directory (a checkout, an editable install or a wheel). The import system's own
    answer first: importlib.resources would load its zip readers on every start-up for the same path."""
    spec = importlib.util.find_spec(package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if len(locations) == 1 and Path(locations[0]).is_dir():
        return Path(locations[0])
    from importlib import resources

    return Path(str(resources.files(package)))


@functools.cache
def profiles_dir() -> Path:
    """The directory holding the shipped data files (works from a checkout and from a wheel)."""
    return _package_dir("exlx_autocfg.profiles")


def probe_script() -> Path:
    """The stdlib-only probe script, runnable by any Python >= 3.8."""
    return _package_dir("exlx_autocfg.probe") / "exlx_probe.py"


@functools.cache
def load_data(name: str) -> dict[str, Any]:
    """Parse `profiles/<name>` (.toml or .json). Cached: the files do not change while we run."""
    path = profiles_dir() / name
    with path.open("rb") as fh:
        if name.endswith(".json"):
            return json.load(fh)
        return tomllib.load(fh)
