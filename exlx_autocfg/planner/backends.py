"""Attention backends: each one judges itself against the facts, the model and the exllamav2 version.

Modelled on vLLM's `validate_configuration()`: a backend returns the coded findings that say why it cannot
serve this query (none means valid); the ranking walks exllamav2's own precedence (`exl2.BACKENDS`) and the
first valid backend wins; a backend the user forces but that has findings is refused with them. Every
threshold comes from `profiles/backends.toml` (each rule with its source) or the xformers release table
(`profiles/xformers.toml`); this module only applies them.

Where a fact was not measured (what-if plans, `detect --no-import`) the rules derive it from the version with
the same data: flash-attn features by version, xformers import paths and torch ABI from the release table,
torch's `causal_lower_right` from its version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exlx_autocfg import exl2
from exlx_autocfg.errors import BackendRefusedError, UsageError
from exlx_autocfg.facts.derived import derived_details
from exlx_autocfg.facts.types import GPU, Facts
from exlx_autocfg.findings import Finding, finding, has_code, messages
from exlx_autocfg.versions import CC, at_least, base_release, cc_of, cc_text, in_specifier, version_of
from exlx_autocfg.xformers_releases import xformers_release

# Findings that mean "this backend runs but gives wrong output" (as opposed to "cannot run here").
WRONG_OUTPUT = frozenset({"backend.sdpa.causal_defect"})
# Findings that mean the library is simply absent (checks of an optional library skip these).
NOT_INSTALLED = frozenset(
    {"backend.flash_attn.not_installed", "backend.xformers.not_installed", "backend.sdpa.torch_missing"}
)


rules = exl2.backend_rules  # profiles/backends.toml, read once (exl2 owns it)


def gives_wrong_output(findings: list[Finding]) -> Finding | None:
    return next((f for f in findings if f.code in WRONG_OUTPUT), None)


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
    def needs(self) -> tuple[str, ...]:
        """The model features (`[features]` in backends.toml) this query's model needs."""
        return tuple(f for f in rules()["features"] if getattr(self, f, False))

    @property
    def rocm(self) -> bool:
        torch = self.facts.lib("torch")
        return (
            any(g.vendor == "amd" for g in self.gpus)
            or bool(torch.details.get("hip_version"))
            or "rocm" in (torch.build or {})
            or "rocm" in (torch.local_tag or "")
        )

    def weakest(self) -> tuple[CC, GPU] | None:
        known = [(g.cc, g) for g in self.gpus if g.cc is not None]
        return min(known, key=lambda t: t[0]) if known else None

    def torch_version(self) -> str | None:
        return self.facts.version_of("torch")


def _feature(name: str) -> str:
    return rules()["features"][name]


def _installed(q: BackendQuery, package: str, prefix: str) -> tuple[str | None, list[Finding]]:
    """(version, findings) for a library that must be installed and importable."""
    lib = q.facts.lib(package)
    if not lib.installed or not lib.version:
        return None, [finding(f"{prefix}.not_installed", f"{package} is not installed", package=package)]
    if lib.import_status in ("error", "crashed", "timeout"):
        what = lib.import_error or lib.import_status
        return lib.version, [
            finding(
                f"{prefix}.import_fails",
                f"`import {package.replace('-', '_')}` fails ({what})",
                package=package,
                version=lib.version,
                import_status=lib.import_status,
            )
        ]
    return lib.version, []


def _details(q: BackendQuery, package: str) -> dict[str, Any]:
    """Measured details, completed by the ones derived from the version where the probe did not measure."""
    lib = q.facts.lib(package)
    derived = derived_details(package, lib.version or "", q.torch_version()) if lib.version else {}
    return {**derived, **{k: v for k, v in lib.details.items() if v is not None}}


# ------------------------------------------------------------------------------------------------ backends


def _eager_only(q: BackendQuery) -> list[Finding]:
    """arch_compat_overrides (config.py L640-647): an eager-only architecture gets no flash-attn, xformers
    or SDPA (profiles/backends.toml [model_features.eager_only])."""
    if not q.eager_only:
        return []
    return [finding("backend.eager_only", rules()["model_features"]["eager_only"]["reason"])]


class FlashAttn:
    name = "flash_attn"

    @staticmethod
    def validate(q: BackendQuery) -> list[Finding]:
        r = rules()["flash_attn"]
        # The hardware reason first: it holds whatever gets installed, so it is the one users need.
        out: list[Finding] = _eager_only(q)
        if q.rocm:
            out.append(
                finding(
                    "backend.flash_attn.rocm",
                    "ROCm: flash-attn is not used on HIP (TabbyAPI compatibility mode sets no_flash_attn)",
                )
            )
        else:
            weakest = q.weakest()
            if weakest and weakest[0] < cc_of(r["min_cc"]):
                cc, gpu = weakest
                out.append(
                    finding(
                        "backend.flash_attn.compute_capability",
                        f"{gpu.name} has compute capability {cc_text(cc)} < {r['min_cc']} "
                        '("FlashAttention only supports Ampere GPUs or newer")',
                        gpu=gpu.name,
                        compute_capability=cc_text(cc),
                        min_cc=r["min_cc"],
                    )
                )
        version, missing = _installed(q, r["package"], "backend.flash_attn")
        out += missing
        if version is None:
            return out
        v = version_of(version)
        if v is None or base_release(v) < version_of(r["min_version"]):
            out.append(
                finding(
                    "backend.flash_attn.too_old",
                    f"flash-attn {version} < {r['min_version']}: exllamav2 does not use it",
                    version=version,
                    min_version=r["min_version"],
                )
            )
        features = _details(q, r["package"]).get("features") or exl2.flash_features(version)
        for need in q.needs:
            feature = r["needs"].get(need)
            if feature and not features.get(feature):
                since = r["softcap_version"] if feature == "softcap" else r["window_size_detected_from"]
                code = (
                    "backend.flash_attn.no_softcap"
                    if feature == "softcap"
                    else "backend.flash_attn.no_window"
                )
                out.append(
                    finding(
                        code,
                        f"the model needs {_feature(need)}: flash-attn >= {since} required"
                        + (" (exllamav2 reads window_size from it)" if feature != "softcap" else ""),
                        feature=need,
                        version=version,
                        required=since,
                    )
                )
        return out

    @staticmethod
    def paged(q: BackendQuery) -> bool:
        lib = q.facts.lib("flash-attn")
        features = _details(q, "flash-attn").get("features") or exl2.flash_features(lib.version)
        return bool(features.get("paged"))


class Xformers:
    name = "xformers"

    @staticmethod
    def validate(q: BackendQuery) -> list[Finding]:
        r = rules()["xformers"]
        if not at_least(q.exllamav2, r["min_exllamav2"]):
            return [
                finding(
                    "backend.xformers.exllamav2_too_old",
                    f"exllamav2 {q.exllamav2} has no xformers path (added in {r['min_exllamav2']})",
                    exllamav2=q.exllamav2,
                    since=r["min_exllamav2"],
                )
            ]
        # What the model needs first: no xformers release can serve it.
        out = _eager_only(q) + [
            finding(
                "backend.xformers.ignores_feature",
                f"the model needs {_feature(need)}, which the xformers path ignores",
                feature=need,
            )
            for need in q.needs
            if need in r["ignores"]
        ]
        version, missing = _installed(q, r["package"], "backend.xformers")
        out += missing
        if version is None:
            return out
        details = _details(q, r["package"])
        release = xformers_release(version)
        wanted = exl2.xformers_mask_import(q.exllamav2)  # what `import exllamav2` imports
        if wanted is not None:
            ok = (details.get("import_paths") or {}).get(wanted)
            if ok is False or (ok is None and release is None):
                out.append(
                    finding(
                        "backend.xformers.mask_import_missing",
                        f"exllamav2 {q.exllamav2} imports {wanted}, which xformers {version} lacks "
                        "(ImportError breaks `import exllamav2`)",
                        path=wanted,
                        version=version,
                    )
                )
        if details.get("has_cpp_library") is False:
            built = (details.get("built_for") or {}).get("torch")
            torch = q.torch_version() or "?"
            if built:
                out.append(
                    finding(
                        "backend.xformers.cpp_ops_mismatch",
                        f"xformers {version} C++/CUDA ops do not load (built for torch {built}, "
                        f"this is torch {torch})",
                        version=version,
                        built_for_torch=built,
                        torch=torch,
                    )
                )
            else:
                why = details.get("cpp_load_error") or "unknown reason"
                out.append(
                    finding(
                        "backend.xformers.cpp_ops_fail",
                        f"xformers {version} C++/CUDA ops do not load ({why})",
                        version=version,
                    )
                )
        if details.get("flash_version_error"):
            out.append(
                finding(
                    "backend.xformers.flash_import_error",
                    f"`import xformers.ops` fails: {details['flash_version_error']}",
                    version=version,
                )
            )
        elif release is not None and release.flash_window_enforced:
            flash = q.facts.version_of("flash-attn")
            if flash and not release.accepts_flash_attn(flash):
                lo, hi = release.flash_window or ("?", "?")
                out.append(
                    finding(
                        "backend.xformers.flash_window",
                        f"xformers {version} raises ImportError with flash-attn {flash} (accepts "
                        f"{lo}..{hi}); this also breaks `import exllamav2`",
                        version=version,
                        flash_attn=flash,
                        accepts=[lo, hi],
                    )
                )
        if q.rocm:
            arches = {g.architecture for g in q.gpus if g.vendor == "amd"}
            bad = sorted(a or "unknown" for a in arches if a not in r["rocm_gfx"])
            if bad:
                out.append(
                    finding(
                        "backend.xformers.rocm_arch",
                        f"xformers ROCm kernels are built for {', '.join(r['rocm_gfx'])} only, "
                        f"not {', '.join(bad)}",
                        built=r["rocm_gfx"],
                        gfx=bad,
                    )
                )
        elif release is not None:
            weakest = q.weakest()
            if weakest and weakest[0] < cc_of(release.min_cc):
                cc, gpu = weakest
                out.append(
                    finding(
                        "backend.xformers.compute_capability",
                        f"xformers {version} no longer supports {gpu.name} (compute capability "
                        f"{cc_text(cc)} < {release.min_cc})",
                        version=version,
                        gpu=gpu.name,
                        compute_capability=cc_text(cc),
                        min_cc=release.min_cc,
                    )
                )
        return out

    @staticmethod
    def warnings(q: BackendQuery) -> list[Finding]:
        release = xformers_release(q.facts.version_of("xformers") or "")
        out = []
        if release and release.cutlass_max_cc:
            newest = max((g.cc for g in q.gpus if g.cc), default=None)
            if newest and newest > cc_of(release.cutlass_max_cc):
                out.append(
                    finding(
                        "backend.xformers.cutlass_max_cc",
                        f"xformers {release.version} refuses its cutlass kernel above compute capability "
                        f"{release.cutlass_max_cc}; only its flash (FA2) op serves these GPUs",
                        version=release.version,
                        cutlass_max_cc=release.cutlass_max_cc,
                    )
                )
        return out


class Sdpa:
    name = "sdpa"

    @staticmethod
    def validate(q: BackendQuery) -> list[Finding]:
        r = rules()["sdpa"]
        if not at_least(q.exllamav2, r["min_exllamav2"]):
            return [
                finding(
                    "backend.sdpa.exllamav2_too_old",
                    f"exllamav2 {q.exllamav2} has no SDPA path (added in {r['min_exllamav2']})",
                    exllamav2=q.exllamav2,
                    since=r["min_exllamav2"],
                )
            ]
        out = _eager_only(q)
        if in_specifier(q.exllamav2, r["broken_exllamav2"]):
            out.append(
                finding(
                    "backend.sdpa.causal_defect",
                    f"WRONG on exllamav2 {q.exllamav2}: {r['broken_reason']}",
                    exllamav2=q.exllamav2,
                    broken=r["broken_exllamav2"],
                    defect=r["broken_reason"],
                )
            )
        torch = q.facts.lib("torch")
        if not torch.installed:
            out.append(finding("backend.sdpa.torch_missing", "torch is not installed"))
        elif not _details(q, "torch").get("has_causal_lower_right"):
            out.append(
                finding(
                    "backend.sdpa.no_lower_right",
                    f"torch {torch.version} lacks causal_lower_right (needs torch >= {r['torch_min']})",
                    torch=torch.version,
                    torch_min=r["torch_min"],
                )
            )
        out += [
            finding(
                "backend.sdpa.ignores_feature",
                f"the model needs {_feature(need)}, which exllamav2's SDPA path skips",
                feature=need,
            )
            for need in q.needs
            if need in r["ignores"]
        ]
        return out


class Matmul:
    name = "matmul"

    @staticmethod
    def validate(q: BackendQuery) -> list[Finding]:
        return []


REGISTRY: dict[str, Any] = {cls.name: cls for cls in (FlashAttn, Xformers, Sdpa, Matmul)}
assert set(REGISTRY) == set(exl2.BACKENDS)


# ------------------------------------------------------------------------------------------------ ranking


@dataclass
class Selection:
    """The chosen backend, the exllamav2 switches that realise it, and why the others were not chosen."""

    backend: str
    valid: list[str]  # in precedence order
    rejected: dict[str, list[Finding]]  # backend -> why not
    forced: bool = False
    paged: bool = False
    switches: dict[str, bool] = field(default_factory=dict)  # no_flash_attn, no_xformers, no_sdpa
    warnings: list[Finding] = field(default_factory=list)


def check_name(name: str) -> str:
    key = exl2.normalise_backend(name)
    if key is None:
        raise UsageError(f"unknown backend {name!r}; valid options are: {', '.join(exl2.BACKENDS)}, auto")
    return key


def select(q: BackendQuery, forced: str | None = None) -> Selection:
    """The best valid backend in exllamav2's precedence (or the forced one, refused when invalid)."""
    rejected: dict[str, list[Finding]] = {}
    valid: list[str] = []
    for name in exl2.BACKENDS:
        findings = REGISTRY[name].validate(q)
        if findings:
            rejected[name] = findings
        else:
            valid.append(name)
    if forced is not None:
        choice = check_name(forced)
        if choice in rejected:
            raise BackendRefusedError(f"backend {choice} is not valid here: {messages(rejected[choice])}")
    else:
        choice = valid[0]  # matmul is always valid
    warnings = list(Xformers.warnings(q)) if choice == "xformers" else []
    if choice == "matmul":
        warnings.append(
            finding("backend.matmul.fp16_softmax", "matmul attention: " + rules()["matmul"]["fp16_note"])
        )
    if q.rocm and choice == "sdpa":
        warnings.append(finding("backend.sdpa.rocm", "SDPA on ROCm: " + rules()["sdpa"]["rocm_note"]))
    if has_code(rejected.get("flash_attn", []), "backend.flash_attn.import_fails"):
        warnings.append(
            finding(
                "backend.flash_attn.import_breaks_exllamav2",
                "flash-attn is installed but its import fails: that breaks `import exllamav2` itself; the "
                f"profile sets {exl2.OFF_ENV['flash_attn']} before the import (or uninstall "
                "flash-attn)",
            )
        )
    return Selection(
        backend=choice,
        valid=valid,
        rejected=rejected,
        forced=forced is not None,
        paged=choice == "flash_attn" and FlashAttn.paged(q),
        switches=exl2.switches_for(choice, invalid=frozenset(rejected)),
        warnings=warnings,
    )
