"""Library details derived from versions with the rules data, for facts a probe did not measure (what-if
plans, `detect --no-import`): flash-attn features, xformers import paths and torch ABI from the release
table, torch's `causal_lower_right`. The planner and the checks read derived and measured details alike.
"""

from __future__ import annotations

from typing import Any

from exlx_autocfg import exl2
from exlx_autocfg.versions import at_least
from exlx_autocfg.xformers_releases import XformersRelease, xformers_release


def torch_has_causal_lower_right(version: str | None) -> bool:
    return at_least(version, exl2.backend_rules()["torch"]["causal_lower_right"])


def xformers_import_paths(release: XformersRelease) -> dict[str, bool]:
    """Which mask import paths resolve in this xformers release (from the release table)."""
    rows = exl2.backend_rules()["xformers"]["mask_import"]
    return {row["path"]: bool(getattr(release, row["table_field"])) for row in rows}


def derived_details(name: str, version: str, torch_version: str | None) -> dict[str, Any]:
    """Library `details` (see facts.types) derived from versions, for facts that were not measured."""
    if name == "flash-attn":
        return {"features": exl2.flash_features(version)}
    if name == "torch":
        return {"has_causal_lower_right": torch_has_causal_lower_right(version)}
    if name == "xformers":
        release = xformers_release(version)
        if release is None:
            return {}
        details: dict[str, Any] = {"import_paths": xformers_import_paths(release)}
        if torch_version:
            details["has_cpp_library"] = release.loads_on_torch(torch_version)
            details["built_for"] = {"torch": release.built_for_torch}
        return details
    return {}
