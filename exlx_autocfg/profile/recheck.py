"""Re-check a profile's settings, as they are now in the file (hand edits included), with the planner's own
shape rules and memory model, against the GPUs the profile was computed for (a what-if profile too).

`verify` reports each problem and exits 1; the loader refuses such a profile (or warns, on_stale='warn').
"""

from __future__ import annotations

from typing import Any

from exlx_autocfg.findings import Finding
from exlx_autocfg.planner.evaluate import evaluate_settings
from exlx_autocfg.planner.request import DEFAULT_MARGIN_MIB
from exlx_autocfg.profile.format import Profile
from exlx_autocfg.settings import Settings


def settings_problems(profile: Profile, spec: Any, settings: Settings | None = None) -> list[Finding]:
    """The problems of the profile's settings (or `settings`, e.g. with loader overrides applied) for `spec`
    on the GPUs the profile was made for, in CUDA order, with the margin it was planned with."""
    gpus = profile.computed_for.used_gpus()
    margin = profile.request.get("margin_mib", DEFAULT_MARGIN_MIB)
    margin = margin if isinstance(margin, int) and not isinstance(margin, bool) else DEFAULT_MARGIN_MIB
    return evaluate_settings(spec, gpus, settings or profile.settings, margin_mib=margin)
