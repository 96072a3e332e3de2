"""Typed access to the xformers release table in `profiles/xformers.toml`."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from exlx_autocfg.data import load_data
from exlx_autocfg.versions import release


@dataclass(frozen=True)
class XformersRelease:
    version: str
    built_for_torch: str
    torch_min: str
    min_cc: str
    mask_in_fmha: bool
    mask_in_attn_bias: bool
    block_diag_in_fmha: bool
    cuda: tuple[str, ...] = ()
    rocm: tuple[str, ...] = ()
    stable_abi: bool = False
    flash_window: tuple[str, str] | None = None
    flash_window_enforced: bool = False
    cutlass_max_cc: str | None = None

    def loads_on_torch(self, torch_version: str) -> bool:
        """Whether this release's compiled ops load on `torch_version` (local tags like +cu121 ignored)."""
        torch = _release_tuple(torch_version)
        if self.stable_abi:
            return torch >= _release_tuple(self.torch_min)
        return torch == _release_tuple(self.built_for_torch)

    def accepts_flash_attn(self, flash_version: str) -> bool:
        if self.flash_window is None:
            return True
        lo, hi = self.flash_window
        try:
            v = Version(flash_version)
        except InvalidVersion:
            return False
        # A post-release of the upper bound is outside the window (xformers#1295: 2.8.0.post2 vs <=2.8.0).
        return Version(lo) <= v <= Version(hi)


def _release_tuple(version: str) -> tuple[int, ...]:
    return release(version) or ()


@functools.cache
def xformers_releases() -> tuple[XformersRelease, ...]:
    rows = load_data("xformers.toml")["release"]
    return tuple(
        XformersRelease(**{k: tuple(v) if isinstance(v, list) else v for k, v in row.items()}) for row in rows
    )


@functools.cache  # every plan asks for the same few versions, many times (the backend rules)
def xformers_release(version: str) -> XformersRelease | None:
    """The table row for an installed xformers version (local build tags and unknown post-releases map
    to the nearest listed release of the same base version)."""
    try:
        wanted = Version(version.split("+", 1)[0])
    except InvalidVersion:
        return None
    rows = xformers_releases()
    exact = [r for r in rows if Version(r.version) == wanted]
    if exact:
        return exact[0]
    same_base = [r for r in rows if Version(r.version).release == wanted.release]
    below = [r for r in same_base if Version(r.version) <= wanted]
    return (below or same_base or [None])[-1]
