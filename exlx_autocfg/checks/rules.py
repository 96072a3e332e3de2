"""Typed access to `profiles/checks.toml`: the version rules the install-time checks apply.

Every lookup here is a pure function of the rules data; the checks never hard-code a version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from packaging.version import Version

from exlx_autocfg.data import load_data

# One parser for versions and compute capabilities (exlx_autocfg.versions), under the names the checks use.
from exlx_autocfg.versions import cc_of as cc_tuple
from exlx_autocfg.versions import in_specifier, minor_of, release
from exlx_autocfg.versions import version_of as parse_version

__all__ = ["cc_tuple", "in_range", "minor_of", "parse_version", "release", "rules"]


def rules() -> dict[str, Any]:
    return load_data("checks.toml")


def in_range(version: str | None, bounds: list[str]) -> bool:
    """Whether `version` satisfies every PEP 440 bound in `bounds` (e.g. [">=0.2.9", "<=0.3.2"])."""
    return in_specifier(version, ",".join(bounds))


# --- exllamav2 wheels ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExllamaWheel:
    version: str
    torch: str
    tag: str  # cu128 | rocm6.1
    python: str  # "3.11"
    platform: str  # linux_x86_64 | win_amd64

    @property
    def file(self) -> str:
        py = "cp" + self.python.replace(".", "")
        return f"exllamav2-{self.version}+{self.tag}.torch{self.torch}-{py}-{py}-{self.platform}.whl"

    @property
    def url(self) -> str:
        template = rules()["exllamav2_wheels"]["release_url"]
        return template.format(version=self.version, file=self.file)


def exllamav2_wheel(
    exllamav2_version: str | None,
    torch_version: str | None,
    cuda: str | None,
    hip: str | None,
    python: str,
    windows: bool = False,
) -> ExllamaWheel | None:
    """The prebuilt exllamav2 wheel built for this torch (same major.minor), CUDA/ROCm and Python, if any.

    A wheel for the newest listed exllamav2 is offered when the installed version has no wheel table.
    """
    table = rules()["exllamav2_wheels"]
    versions = table["versions"]
    version = exllamav2_version if exllamav2_version in versions else versions[-1]
    torch_minor = minor_of(torch_version)
    py = minor_of(python)
    if torch_minor is None or py is None:
        return None
    best: tuple[int, ExllamaWheel] | None = None
    for build in table["build"]:
        if minor_of(build["torch"]) != torch_minor:
            continue
        pythons = build.get("python_windows" if windows else "python_linux")
        if pythons is not None and py not in pythons:
            continue
        for tag in build["tags"]:
            score = _tag_score(tag, cuda, hip)
            if score is None:
                continue
            wheel = ExllamaWheel(version, build["torch"], tag, py, "win_amd64" if windows else "linux_x86_64")
            if best is None or score > best[0]:
                best = (score, wheel)
    return best[1] if best else None


def _tag_score(tag: str, cuda: str | None, hip: str | None) -> int | None:
    """How well a wheel tag fits torch's CUDA/HIP: exact 2, same major 1, unusable None."""
    if tag.startswith("cu") and cuda:
        want = release(cuda, 2)
        digits = tag[2:]
        have = (int(digits[:-1]), int(digits[-1])) if len(digits) >= 2 else None
        if have == want:
            return 2
        if have and want and have[0] == want[0]:
            return 1
    if tag.startswith("rocm") and hip:
        have_r = release(tag[4:], 2)
        want_r = release(hip, 2)
        if have_r == want_r:
            return 2
    return None


# --- flash-attn ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlashWheel:
    version: str
    file: str


def flash_attn_wheel(
    torch_version: str | None,
    cuda: str | None,
    python: str,
    cxx11_abi: bool | None,
    accept: list[str] | None = None,
) -> FlashWheel | None:
    """The newest official flash-attn wheel for this torch minor, CUDA major and Python.

    `accept` optionally bounds the version ([lo, hi], inclusive: xformers' enforced window).
    """
    table = rules()["flash_attn_wheels"]
    torch_minor = minor_of(torch_version)
    cuda_major = str(release(cuda, 1)[0]) if release(cuda, 1) else None
    py = (minor_of(python) or "").replace(".", "")
    if not (torch_minor and cuda_major and py):
        return None
    rows = sorted(table["release"], key=lambda r: Version(r["version"]), reverse=True)
    for row in rows:
        if torch_minor not in row["torch"] or cuda_major not in row["cuda_major"]:
            continue
        if accept and not (Version(accept[0]) <= Version(row["version"]) <= Version(accept[1])):
            continue
        abi = "TRUE" if cxx11_abi in (True, None) else "FALSE"
        file = table["file"].format(
            version=row["version"], cuda_major=cuda_major, torch_minor=torch_minor, abi=abi, py=py
        )
        return FlashWheel(row["version"], file)
    return None


# --- torch ---------------------------------------------------------------------------------------------


def torch_cuda_tag(cuda: str | None) -> str | None:
    """'12.8' -> 'cu128'."""
    r = release(cuda, 2)
    return f"cu{r[0]}{r[1] if len(r) > 1 else 0}" if r else None


def torch_index_url(tag: str) -> str:
    return rules()["torch"]["index_url"].format(tag=tag)


def torch_cuda_variants(torch_version: str | None) -> list[str]:
    """The CUDA tags torch `torch_version` was published with (newest first); [] when not in the table."""
    return list(rules()["torch"]["cuda_variants"].get(minor_of(torch_version) or "", []))


def torch_variant_for_driver(torch_version: str | None, driver_cuda: str | None) -> str | None:
    """The newest CUDA variant of this torch that the driver runs (same or lower CUDA than the driver)."""
    limit = release(driver_cuda, 2)
    for tag in torch_cuda_variants(torch_version):
        digits = tag[2:]
        have = (int(digits[:-1]), int(digits[-1]))
        if limit is None or have <= limit:
            return tag
    return None


def torch_table_archs(torch_version: str | None, cuda: str | None) -> list[str] | None:
    """Compute capabilities a torch CUDA wheel carries kernels for, from the table (what-if facts only)."""
    tag = torch_cuda_tag(cuda)
    for row in rules()["torch"].get("arch", []):
        if row["tag"] == tag and in_range(torch_version, row["torch"]):
            return list(row["archs"])
    return None


def min_driver_for_cuda(cuda: str | None) -> str | None:
    key = minor_of(cuda)
    return rules()["cuda_driver"]["min_linux_driver"].get(key or "")


# --- floors kept in backends.toml (C's rules; read, not repeated) ----------------------------------------


def flash_attn_min_cc() -> tuple[int, int]:
    return cc_tuple(load_data("backends.toml")["flash_attn"]["min_cc"]) or (8, 0)


def exl3_min_cc() -> tuple[int, int]:
    return cc_tuple(load_data("backends.toml")["exl3"]["min_cc"]) or (8, 0)
