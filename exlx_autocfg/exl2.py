"""exllamav2's vocabulary, in one place: its backends and their precedence, the switch and environment
variable that turn each off, the page size, the cache modes and their classes, and the one function that
says which backend exllamav2 lands on.

Everything comes from `profiles/exllamav2.toml` (names, with their sources in the wheel) and
`profiles/backends.toml` (the version thresholds). The planner, the profile, the loader, the emitters and
the checks all read these names here; none spells `EXLLAMA_NO_*` or a cache class itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from exlx_autocfg.data import load_data
from exlx_autocfg.facts.types import Facts
from exlx_autocfg.versions import at_least, in_specifier


def vocabulary() -> dict[str, Any]:
    return load_data("exllamav2.toml")


def backend_rules() -> dict[str, Any]:
    return load_data("backends.toml")


_V = vocabulary()

LATEST: str = _V["release"]["latest"]  # exllamav2 assumed when the target interpreter has none
BACKENDS: tuple[str, ...] = tuple(_V["precedence"]["order"])  # exllamav2's own precedence
SWITCHED: tuple[str, ...] = tuple(b for b in BACKENDS if b in _V["switch"])  # all but matmul
SWITCH: dict[str, str] = {b: _V["switch"][b]["config"] for b in SWITCHED}  # backend -> "no_flash_attn"
SWITCHES: tuple[str, ...] = tuple(SWITCH.values())  # ExLlamaV2Config attributes, in precedence order
ENV: dict[str, str] = {SWITCH[b]: _V["switch"][b]["env"] for b in SWITCHED}  # "no_sdpa" -> "EXLLAMA_NO_SDPA"
OFF_ENV: dict[str, str] = {b: ENV[SWITCH[b]] for b in SWITCHED}  # backend -> the env var that turns it off
IMPORT_FLAG: dict[str, str] = {b: _V["switch"][b]["import_flag"] for b in SWITCHED}  # attn.py has_* flags
PAGED_IMPORT_FLAG: str = _V["switch"]["paged_import_flag"]
SCRIPT_FLAG: dict[str, str] = {SWITCH[b]: _V["switch"][b]["script_flag"] for b in SWITCHED}  # -nfa ...
PAGE_SIZE: int = int(_V["pages"]["size"])
CACHE_MODES: tuple[str, ...] = tuple(_V["cache"]["modes"])  # most precise first
CACHE_CLASS: dict[str, str] = {m: _V["cache"][m]["class"] for m in CACHE_MODES}
Q_BLOCK_SIZE: int = int(_V["cache"]["q_block_size"])
DEFAULT_MAX_INPUT_LEN: int = int(_V["defaults"]["max_input_len"])
DEFAULT_RESERVE_FIRST: int = int(_V["defaults"]["autosplit_reserve_first_bytes"])
DEFAULT_RESERVE_OTHER: int = int(_V["defaults"]["autosplit_reserve_other_bytes"])


@dataclass(frozen=True)
class CacheLayout:
    """How a cache class stores one K/V element (cache.py)."""

    cls: str
    element_bytes: int
    k_per_element: int
    v_per_element: int
    scales: bool


def cache_layout(mode: str) -> CacheLayout:
    if mode not in CACHE_MODES:
        raise ValueError(f"cache mode must be one of {', '.join(CACHE_MODES)}, got {mode!r}")
    row = _V["cache"][mode]
    return CacheLayout(
        row["class"], row["element_bytes"], row["k_per_element"], row["v_per_element"], row["scales"]
    )


def normalise_backend(name: str) -> str | None:
    """A backend name as users type it ('flash', 'flash-attn', 'torch', 'eager') -> ours; None if unknown."""
    key = name.strip().lower().replace("-", "_")
    key = {"flash": "flash_attn", "flashattn": "flash_attn", "torch": "sdpa", "eager": "matmul"}.get(key, key)
    return key if key in BACKENDS else None


# ------------------------------------------------------------------------------------------ the switches


def switches_for(choice: str, invalid: frozenset[str] | set[str] | tuple[str, ...] = ()) -> dict[str, bool]:
    """The `no_*` switches that make exllamav2's precedence land on `choice`: every backend ranked above it
    is off, and so is any `invalid` one below it, because exllamav2 still falls back to those for padded
    (non-causal) batches."""
    if choice not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {choice!r}")
    rank = BACKENDS.index(choice)
    return {SWITCH[b]: b != choice and (BACKENDS.index(b) < rank or b in invalid) for b in SWITCHED}


def env_for(switches: Mapping[str, bool]) -> dict[str, str | None]:
    """Env var -> "1" (must be present) or None (must be absent): exllamav2 tests presence, not value."""
    return {ENV[s]: ("1" if switches.get(s) else None) for s in SWITCHES}


def switches_from_env(env: Mapping[str, str]) -> dict[str, bool]:
    """The switches an environment sets (presence is what counts, even '0')."""
    return {s: ENV[s] in env for s in SWITCHES}


# ------------------------------------------------------------------------------------ where it lands


@dataclass(frozen=True)
class ImportFlags:
    """What exllamav2.attn decided at import: which backends it can call (attn.py module flags)."""

    flash_attn: bool = False
    xformers: bool = False
    sdpa: bool = False
    flash_paged: bool = False
    flash_window: bool = False
    flash_softcap: bool = False

    def has(self, backend: str) -> bool:
        return backend == "matmul" or bool(getattr(self, backend))

    @classmethod
    def from_module(cls, attn: Any) -> ImportFlags:
        """Read the flags off a real `exllamav2.attn` module."""
        return cls(
            flash_attn=bool(getattr(attn, IMPORT_FLAG["flash_attn"], False)),
            xformers=bool(getattr(attn, IMPORT_FLAG["xformers"], False)),
            sdpa=bool(getattr(attn, IMPORT_FLAG["sdpa"], False)),
            flash_paged=bool(getattr(attn, PAGED_IMPORT_FLAG, False)),
            flash_window=bool(getattr(attn, "has_flash_attn_with_window", False)),
            flash_softcap=bool(getattr(attn, "has_flash_attn_with_softcap", False)),
        )


def xformers_mask_import(exllamav2: str | None) -> str | None:
    """The xformers mask class path `import exllamav2` imports at this version (None: it imports none)."""
    version = exllamav2 or LATEST
    rows = backend_rules()["xformers"]["mask_import"]
    return next((r["path"] for r in rows if in_specifier(version, r["exllamav2"])), None)


def flash_features(version: str | None) -> dict[str, bool]:
    """The flash-attn features exllamav2 sees for `version`: it reads window_size/softcap from the signature
    only in its >= 2.5.7 branch (attn.py L49-55), so an older flash-attn counts as having neither."""
    r = backend_rules()["flash_attn"]
    detected = at_least(version, r["window_size_detected_from"])
    return {
        "window_size": detected and at_least(version, r["window_size_version"]),
        "softcap": detected and at_least(version, r["softcap_version"]),
        "kvcache": at_least(version, r["kvcache_version"]),
        "paged": at_least(version, r["paged_min_version"]),
    }


def import_flags(
    facts: Facts, exllamav2: str | None = None, env: Mapping[str, str] | None = None
) -> ImportFlags:
    """The flags `import exllamav2` would set in the interpreter the facts describe (attn.py L26-81), with
    the environment's switches in force (a switched-off backend is never imported). Libraries whose import
    fails for another reason than a missing module break `import exllamav2` itself; they count as absent."""
    rules = backend_rules()
    version = exllamav2 or facts.version_of("exllamav2") or LATEST
    env = facts.env if env is None else env
    flags: dict[str, bool] = {}
    fa = facts.lib("flash-attn")
    fa_ok = (
        ENV[SWITCH["flash_attn"]] not in env
        and fa.installed
        and fa.import_status in ("ok", "not-tried")
        and at_least(fa.version, rules["flash_attn"]["min_version"])
    )
    paged_line = at_least(fa.version, rules["flash_attn"]["paged_min_version"])
    if fa_ok and paged_line and "No module named" in str(fa.details.get("cuda_module_error") or ""):
        fa_ok = False  # >= 2.5.7 imports flash_attn_2_cuda inside `except ModuleNotFoundError`
    features = fa.details.get("features") or flash_features(fa.version)
    flags["flash_attn"] = fa_ok
    flags["flash_paged"] = fa_ok and paged_line
    flags["flash_window"] = fa_ok and bool(features.get("window_size"))
    flags["flash_softcap"] = fa_ok and bool(features.get("softcap"))
    x = facts.lib("xformers")
    flags["xformers"] = (
        ENV[SWITCH["xformers"]] not in env
        and at_least(version, rules["xformers"]["min_exllamav2"])
        and x.installed
        and x.import_status in ("ok", "not-tried")
    )
    torch = facts.lib("torch")
    lower_right = torch.details.get("has_causal_lower_right")
    if lower_right is None:
        lower_right = torch.installed and at_least(torch.version, rules["torch"]["causal_lower_right"])
    flags["sdpa"] = (
        ENV[SWITCH["sdpa"]] not in env
        and at_least(version, rules["sdpa"]["min_exllamav2"])
        and bool(lower_right)
    )
    return ImportFlags(**flags)


def compat_overrides(
    switches: Mapping[str, bool],
    flags: ImportFlags,
    *,
    softcap: bool = False,
    sliding_window: bool = False,
    eager_only: bool = False,
) -> dict[str, bool]:
    """ExLlamaV2Config.arch_compat_overrides (config.py L636-672): the switches after exllamav2 turns off
    backends the model cannot use (eager-only architectures: all; softcap or SWA without flash-attn support:
    flash-attn; softcap or SWA: xformers)."""
    out = {s: bool(switches.get(s, False)) for s in SWITCHES}
    if eager_only:
        return dict.fromkeys(SWITCHES, True)
    if (
        flags.flash_attn
        and not out[SWITCH["flash_attn"]]
        and ((softcap and not flags.flash_softcap) or (sliding_window and not flags.flash_window))
    ):
        out[SWITCH["flash_attn"]] = True
    if flags.xformers and not out[SWITCH["xformers"]] and (softcap or sliding_window):
        out[SWITCH["xformers"]] = True
    return out


def lands_on(switches: Mapping[str, bool], flags: ImportFlags, *, softcap: bool = False) -> str:
    """The backend exllamav2's causal forward uses with these config switches (after arch_compat_overrides)
    and import flags: flash-attn, then xformers (attn.py L1144-1149), else `_attn_torch`, which takes SDPA
    unless it is off or the model softcaps (L880), else matmul."""
    for backend in SWITCHED:
        if not flags.has(backend) or switches.get(SWITCH[backend], False):
            continue
        if backend == "sdpa" and softcap:
            continue
        return backend
    return "matmul"
