"""Attention backends: each one judges itself against the facts, the model and the exllamav2 version.

Modelled on vLLM's `validate_configuration()`: a backend returns the reasons it cannot serve this query
(an empty list means valid); the ranking walks exllamav2's own precedence (flash_attn -> xformers -> sdpa ->
matmul) and the first valid backend wins; a backend the user forces but that has reasons is refused with
them. Every threshold comes from `profiles/backends.toml` (each rule with its source) or the xformers release
table (`profiles/xformers.toml`); this module only applies them.

Where a fact was not measured (what-if plans, `detect --no-import`) the rules derive it from the version with
the same data: flash-attn features by version, xformers import paths and torch ABI from the release table,
torch's `causal_lower_right` from its version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from exlx_autocfg import exl2
from exlx_autocfg.data import load_data
from exlx_autocfg.errors import BackendRefusedError, UsageError
from exlx_autocfg.facts.types import GPU, Facts
from exlx_autocfg.planner.types import BACKENDS
from exlx_autocfg.planner.xformers_releases import XformersRelease, xformers_release

# exllamav2 version assumed when the target interpreter does not have it installed.
LATEST_EXLLAMAV2 = exl2.LATEST


def rules() -> dict[str, Any]:
    return load_data("backends.toml")


def version_of(text: str | None) -> Version | None:
    """A comparable version, local tag (+cu121) dropped; None when absent or unparsable."""
    if not text:
        return None
    try:
        return Version(str(text).split("+", 1)[0])
    except InvalidVersion:
        return None


def _base(v: Version) -> Version:
    """The release part only: 2.8.0.post2 -> 2.8.0 (thresholds are about releases, not post-fixes)."""
    return Version(".".join(str(p) for p in v.release))


def _cc(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)


# ------------------------------------------------------------------------------------------- derivations


def flash_features(version: str | None) -> dict[str, bool]:
    """The flash-attn features exllamav2 sees for `version` (it reads window/softcap only from >= 2.5.7)."""
    v = version_of(version)
    r = rules()["flash_attn"]
    if v is None:
        return {"window_size": False, "softcap": False, "kvcache": False, "paged": False}
    v = _base(v)
    detected = v >= Version(r["window_size_detected_from"])
    return {
        "window_size": detected and v >= Version(r["window_size_version"]),
        "softcap": detected and v >= Version(r["softcap_version"]),
        "kvcache": v >= Version("2.2.0"),
        "paged": v >= Version(r["paged_min_version"]),
    }


def torch_has_causal_lower_right(version: str | None) -> bool:
    v = version_of(version)
    return v is not None and v >= Version(rules()["torch"]["causal_lower_right"])


def xformers_import_paths(release: XformersRelease) -> dict[str, bool]:
    """Which mask import paths resolve in this xformers release (from the release table)."""
    return {
        row["path"]: bool(getattr(release, row["table_field"])) for row in rules()["xformers"]["mask_import"]
    }


def derived_details(name: str, version: str, torch_version: str | None) -> dict[str, Any]:
    """Library `details` (see facts.py) derived from versions, for facts that were not measured."""
    if name == "flash-attn":
        return {"features": flash_features(version)}
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


# ---------------------------------------------------------------------------------------------- the query


@dataclass(frozen=True)
class BackendQuery:
    """What a backend is judged against."""

    facts: Facts
    gpus: tuple[GPU, ...]  # the GPUs in use: the weakest decides
    exllamav2: str  # version string
    softcap: bool = False  # the model needs attention logit softcapping
    sliding_window: bool = False  # the model needs sliding-window attention (exllamav2 swa/alternating_swa)
    eager_only: bool = False  # the architecture is eager-only (ModelSpec.eager_only; none in 0.3.2)

    @property
    def exllamav2_version(self) -> Version:
        return version_of(self.exllamav2) or Version(LATEST_EXLLAMAV2)

    @property
    def rocm(self) -> bool:
        torch = self.facts.lib("torch")
        return (
            any(g.vendor == "amd" for g in self.gpus)
            or bool(torch.details.get("hip_version"))
            or "rocm" in (torch.build or {})
            or "rocm" in (torch.local_tag or "")
        )

    def weakest_cc(self) -> tuple[tuple[int, int], GPU] | None:
        known = [(g.cc, g) for g in self.gpus if g.cc is not None]
        return min(known, key=lambda t: t[0]) if known else None

    def torch_version(self) -> str | None:
        return self.facts.version_of("torch")


def _installed(q: BackendQuery, package: str) -> tuple[str | None, list[str]]:
    """(version, reasons) for a library that must be installed and importable."""
    lib = q.facts.lib(package)
    if not lib.installed or not lib.version:
        return None, [f"{package} is not installed"]
    if lib.import_status in ("error", "crashed", "timeout"):
        what = lib.import_error or lib.import_status
        return lib.version, [f"`import {package.replace('-', '_')}` fails ({what})"]
    return lib.version, []


def _details(q: BackendQuery, package: str) -> dict[str, Any]:
    """Measured details, completed by the ones derived from the version where the probe did not measure."""
    lib = q.facts.lib(package)
    derived = derived_details(package, lib.version or "", q.torch_version()) if lib.version else {}
    return {**derived, **{k: v for k, v in lib.details.items() if v is not None}}


def _eager_only(q: BackendQuery) -> list[str]:
    """arch_compat_overrides (config.py L640-647): an eager-only architecture gets no flash-attn, xformers
    or SDPA (profiles/backends.toml [model_features.eager_only])."""
    return [rules()["model_features"]["eager_only"]["reason"]] if q.eager_only else []


# ------------------------------------------------------------------------------------------------ backends


class FlashAttn:
    name = "flash_attn"

    @staticmethod
    def validate(q: BackendQuery) -> list[str]:
        r = rules()["flash_attn"]
        # The hardware reason first: it holds whatever gets installed, so it is the one users need.
        reasons: list[str] = _eager_only(q)
        if q.rocm:
            reasons.append(
                "ROCm: flash-attn is not used on HIP (TabbyAPI compatibility mode sets no_flash_attn)"
            )
        else:
            weakest = q.weakest_cc()
            if weakest and weakest[0] < _cc(r["min_cc"]):
                cc, gpu = weakest
                reasons.append(
                    f"{gpu.name} has compute capability {cc[0]}.{cc[1]} < {r['min_cc']} "
                    '("FlashAttention only supports Ampere GPUs or newer")'
                )
        version, missing = _installed(q, r["package"])
        reasons += missing
        if version is None:
            return reasons
        v = version_of(version)
        if v is None or _base(v) < Version(r["min_version"]):
            reasons.append(f"flash-attn {version} < {r['min_version']}: exllamav2 does not use it")
        features = _details(q, r["package"]).get("features") or flash_features(version)
        if q.softcap and not features.get("softcap"):
            reasons.append(
                f"the model needs logit softcapping: flash-attn >= {r['softcap_version']} required"
            )
        if q.sliding_window and not features.get("window_size"):
            reasons.append(
                f"the model needs sliding-window attention: flash-attn >= {r['window_size_detected_from']} "
                "required (exllamav2 reads window_size from it)"
            )
        return reasons

    @staticmethod
    def paged(q: BackendQuery) -> bool:
        lib = q.facts.lib("flash-attn")
        features = _details(q, "flash-attn").get("features") or flash_features(lib.version)
        return bool(features.get("paged"))


class Xformers:
    name = "xformers"

    @staticmethod
    def validate(q: BackendQuery) -> list[str]:
        r = rules()["xformers"]
        exl2 = q.exllamav2_version
        if exl2 < Version(r["min_exllamav2"]):
            return [f"exllamav2 {q.exllamav2} has no xformers path (added in {r['min_exllamav2']})"]
        # What the model needs first: no xformers release can serve it.
        reasons: list[str] = _eager_only(q)
        if q.softcap:
            reasons.append("the model needs logit softcapping, which the xformers path ignores")
        if q.sliding_window:
            reasons.append("the model needs sliding-window attention, which the xformers path ignores")
        version, missing = _installed(q, r["package"])
        reasons += missing
        if version is None:
            return reasons
        details = _details(q, r["package"])
        release = xformers_release(version)
        # The mask import exllamav2 performs at `import exllamav2`.
        wanted = next((row for row in r["mask_import"] if exl2 in SpecifierSet(row["exllamav2"])), None)
        if wanted is not None:
            paths = details.get("import_paths") or {}
            ok = paths.get(wanted["path"])
            if ok is False or (ok is None and release is None):
                reasons.append(
                    f"exllamav2 {q.exllamav2} imports {wanted['path']}, which xformers {version} lacks "
                    "(ImportError breaks `import exllamav2`)"
                )
        if details.get("has_cpp_library") is False:
            built = (details.get("built_for") or {}).get("torch")
            torch = q.torch_version() or "?"
            why = (
                f"built for torch {built}, this is torch {torch}" if built else details.get("cpp_load_error")
            )
            reasons.append(f"xformers {version} C++/CUDA ops do not load ({why or 'unknown reason'})")
        if details.get("flash_version_error"):
            reasons.append(f"`import xformers.ops` fails: {details['flash_version_error']}")
        elif release is not None and release.flash_window_enforced:
            flash = q.facts.version_of("flash-attn")
            if flash and not release.accepts_flash_attn(flash):
                lo, hi = release.flash_window or ("?", "?")
                reasons.append(
                    f"xformers {version} raises ImportError with flash-attn {flash} (accepts {lo}..{hi}); "
                    "this also breaks `import exllamav2`"
                )
        if q.rocm:
            arches = {g.architecture for g in q.gpus if g.vendor == "amd"}
            bad = sorted(a or "unknown" for a in arches if a not in r["rocm_gfx"])
            if bad:
                reasons.append(
                    f"xformers ROCm kernels are built for {', '.join(r['rocm_gfx'])} only, "
                    f"not {', '.join(bad)}"
                )
        elif release is not None:
            weakest = q.weakest_cc()
            if weakest and weakest[0] < _cc(release.min_cc):
                cc, gpu = weakest
                reasons.append(
                    f"xformers {version} no longer supports {gpu.name} (compute capability {cc[0]}.{cc[1]} < "
                    f"{release.min_cc})"
                )
        return reasons

    @staticmethod
    def warnings(q: BackendQuery) -> list[str]:
        release = xformers_release(q.facts.version_of("xformers") or "")
        out = []
        if release and release.cutlass_max_cc:
            newest = max((g.cc for g in q.gpus if g.cc), default=None)
            if newest and newest > _cc(release.cutlass_max_cc):
                out.append(
                    f"xformers {release.version} refuses its cutlass kernel above compute capability "
                    f"{release.cutlass_max_cc}; only its flash (FA2) op serves these GPUs"
                )
        return out


class Sdpa:
    name = "sdpa"

    @staticmethod
    def validate(q: BackendQuery) -> list[str]:
        r = rules()["sdpa"]
        exl2 = q.exllamav2_version
        if exl2 < Version(r["min_exllamav2"]):
            return [f"exllamav2 {q.exllamav2} has no SDPA path (added in {r['min_exllamav2']})"]
        reasons = _eager_only(q)
        if exl2 in SpecifierSet(r["broken_exllamav2"]):
            reasons.append(f"WRONG on exllamav2 {q.exllamav2}: {r['broken_reason']}")
        torch = q.facts.lib("torch")
        has_lr = _details(q, "torch").get("has_causal_lower_right")
        if not torch.installed:
            reasons.append("torch is not installed")
        elif not has_lr:
            reasons.append(
                f"torch {torch.version} lacks causal_lower_right (needs torch >= {r['torch_min']})"
            )
        if q.softcap:
            reasons.append("the model needs logit softcapping, which exllamav2's SDPA path skips")
        return reasons


class Matmul:
    name = "matmul"

    @staticmethod
    def validate(q: BackendQuery) -> list[str]:
        return []


REGISTRY: dict[str, Any] = {cls.name: cls for cls in (FlashAttn, Xformers, Sdpa, Matmul)}
assert tuple(REGISTRY) == BACKENDS


# ------------------------------------------------------------------------------------------------ ranking


@dataclass
class Selection:
    """The chosen backend, the exllamav2 switches that realise it, and why the others were not chosen."""

    backend: str
    valid: list[str]  # in precedence order
    rejected: dict[str, list[str]]  # backend -> reasons
    forced: bool = False
    paged: bool = False
    switches: dict[str, bool] = field(default_factory=dict)  # no_flash_attn, no_xformers, no_sdpa
    warnings: list[str] = field(default_factory=list)


def check_name(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    key = {"flash": "flash_attn", "flashattn": "flash_attn", "torch": "sdpa", "eager": "matmul"}.get(key, key)
    if key not in REGISTRY:
        raise UsageError(f"unknown backend {name!r}; valid options are: {', '.join(BACKENDS)}, auto")
    return key


def switches_for(choice: str, rejected: dict[str, list[str]]) -> dict[str, bool]:
    """exllamav2's `no_*` switches that make its precedence (flash -> xformers -> sdpa -> matmul) land on
    `choice`: every backend ranked above it is switched off, and so is any invalid one below it, because
    exllamav2 still falls back to those for padded (non-causal) batches."""
    rank = BACKENDS.index(choice)
    switch = {"flash_attn": "no_flash_attn", "xformers": "no_xformers", "sdpa": "no_sdpa"}
    return {
        flag: (BACKENDS.index(name) < rank or name in rejected) and name != choice
        for name, flag in switch.items()
    }


def select(q: BackendQuery, forced: str | None = None) -> Selection:
    """The best valid backend (or the forced one, refused with its reasons when invalid)."""
    rejected: dict[str, list[str]] = {}
    valid: list[str] = []
    for name, backend in REGISTRY.items():
        reasons = backend.validate(q)
        if reasons:
            rejected[name] = reasons
        else:
            valid.append(name)
    if forced is not None:
        choice = check_name(forced)
        if choice in rejected:
            raise BackendRefusedError(f"backend {choice} is not valid here: {'; '.join(rejected[choice])}")
    else:
        choice = valid[0]  # matmul is always valid
    warnings = list(Xformers.warnings(q)) if choice == "xformers" else []
    if choice == "matmul":
        warnings.append("matmul attention: " + rules()["matmul"]["fp16_note"])
    if q.rocm and choice == "sdpa":
        warnings.append("SDPA on ROCm: " + rules()["sdpa"]["rocm_note"])
    flash = q.facts.lib("flash-attn")
    if flash.installed and flash.import_status in ("error", "crashed", "timeout"):
        warnings.append(
            "flash-attn is installed but its import fails: that breaks `import exllamav2` itself; the "
            "profile sets EXLLAMA_NO_FLASH_ATTN before the import (or uninstall flash-attn)"
        )
    return Selection(
        backend=choice,
        valid=valid,
        rejected=rejected,
        forced=forced is not None,
        paged=choice == "flash_attn" and FlashAttn.paged(q),
        switches=switches_for(choice, rejected),
        warnings=warnings,
    )
