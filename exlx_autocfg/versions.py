"""The one place versions and compute capabilities are parsed.

Versions come from package metadata ('2.13.0+cpu', '2.8.0.post2'), torch's CUDA ('12.8'), nvcc output and
the rules data; compute capabilities from NVML, torch and the GPU table ('8.6', '10.3'). Unparseable text
is None here, so callers decide what an unknown version means.
"""

from __future__ import annotations

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

CC = tuple[int, int]


def version_of(text: object) -> Version | None:
    """A comparable version with the local tag (+cu121) dropped; None when absent or unparseable."""
    if text is None or text == "":
        return None
    try:
        return Version(str(text).split("+", 1)[0])
    except InvalidVersion:
        return None


def base_release(v: Version) -> Version:
    """The release part only: 2.8.0.post2 -> 2.8.0 (thresholds are about releases, not post-fixes)."""
    return Version(".".join(str(p) for p in v.release))


def release(text: object, parts: int = 3) -> tuple[int, ...] | None:
    """'12.8.1' -> (12, 8, 1)[:parts]; None when unparseable."""
    v = version_of(text)
    return v.release[:parts] if v else None


def minor_of(text: object) -> str | None:
    """'2.9.1+cu128' -> '2.9'."""
    r = release(text, 2)
    return ".".join(map(str, r)) if r else None


def at_least(text: object, floor: str) -> bool:
    """Whether `text` parses and its release is >= `floor` (post-releases count as their release)."""
    v = version_of(text)
    return v is not None and base_release(v) >= Version(floor)


def in_specifier(text: object, spec: str) -> bool:
    """Whether `text` satisfies a PEP 440 specifier such as '>=0.2.9,<=0.3.2' (False when unparseable)."""
    v = version_of(text)
    if v is None:
        return False
    try:
        return v in SpecifierSet(spec)
    except InvalidSpecifier:
        return False


def cc_of(text: object) -> CC | None:
    """'8.6' -> (8, 6), '10' -> (10, 0), '12.0a'/'sm_120' are not capabilities -> None."""
    if text is None:
        return None
    major, _, minor = str(text).strip().partition(".")
    if not major.isdigit() or (minor and not minor.isdigit()):
        return None
    return int(major), int(minor or 0)


def cc_text(cc: CC | None) -> str:
    return f"{cc[0]}.{cc[1]}" if cc else "?"
