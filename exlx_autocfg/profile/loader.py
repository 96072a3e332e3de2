"""Apply a profile to ExLlamaV2: the runtime loader (an edge: it imports exllamav2 and, in `load`, the GPU).

`prepare(model_dir, profile=None, ...)` finds or makes the profile, checks it against fresh facts
(`staleness`), sets the `EXLLAMA_NO_*` switches before exllamav2 is imported, builds and fills the real
`ExLlamaV2Config` and returns it with the cache class, the split and the reserves. It touches no GPU.
`load(...)` does `prepare`, then creates the model, cache, tokenizer and dynamic generator on the GPU(s).

Why the switches must come first: exllamav2/attn.py decides at import time whether flash-attn, xformers and
torch SDPA are usable (`has_flash_attn`, `has_xformers`, `has_lower_right_sdpa`), and a flash-attn or
xformers built for another torch can make `import exllamav2` itself fail. The switches are presence tests
(`'EXLLAMA_NO_SDPA' in os.environ`), so "off" means the variable is absent, not "0".
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exlx_autocfg import exl2
from exlx_autocfg.errors import (
    ExlxError,
    ModelSpecError,
    OptionError,
    ProfileError,
    StaleProfileError,
    UsageError,
)
from exlx_autocfg.facts.types import Facts
from exlx_autocfg.profile.format import (
    Profile,
    default_profile_path,
    machine_identity,
    profile_from_plan,
    profiles_for_model,
    read_profile,
    write_profile,
)
from exlx_autocfg.profile.staleness import Change, find_changes
from exlx_autocfg.settings import Settings, SettingsError, validate_settings

ON_STALE = ("replan", "refuse", "warn")


def _backend_library(backend: str) -> str:
    """What makes a backend importable for exllamav2 (attn.py L33-81), for "did not import" messages."""
    r = exl2.backend_rules()
    return {
        "flash_attn": f"flash-attn >= {r['flash_attn']['min_version']}",
        "xformers": f"xformers with {exl2.xformers_mask_import(None) or 'its mask classes'}",
        "sdpa": f"torch >= {r['sdpa']['torch_min']} (causal_lower_right)",
        "paged": f"flash-attn >= {r['flash_attn']['paged_min_version']}",
    }[backend]


REFUSED_HINT = ("re-plan with `exlx-autocfg profile`, or let the loader re-plan: on_stale='replan' "
                "(--on-stale replan)")


class LoaderError(ExlxError):
    """exllamav2 cannot run the profile in this process (imported with other switches, a backend missing)."""

    code = "error.loader"


class StaleProfileWarning(UserWarning):
    """The profile no longer matches the machine, libraries or model (on_stale='warn' or 'replan')."""


@dataclass
class Prepared:
    """Everything `load` needs, built without touching a GPU."""

    config: Any  # exllamav2.ExLlamaV2Config, filled from the profile; arch_compat_overrides applied
    cache_class: type  # ExLlamaV2Cache / _Q8 / _Q6 / _Q4
    profile: Profile  # the profile applied (re-planned when it was stale and on_stale='replan')
    profile_path: Path | None
    settings: Settings  # the profile's settings with the overrides applied
    backend: str  # the attention backend exllamav2 will use for causal forwards with this config
    gpu_split: list[float] | None
    autosplit: bool
    reserve_vram: list[int] | None  # autosplit reserve_vram per device (None: exllamav2's defaults)
    paged: bool
    max_batch_size: int
    changes: list[Change] = field(default_factory=list)  # what made the profile stale (empty: current)
    replanned: bool = False
    notes: list[str] = field(default_factory=list)  # what the loader did, one line each
    # What loads beside the model (issue 12), in TabbyAPI's order: the draft first, then the model
    # (tensor-parallel or not), then the adapters.
    tensor_parallel: bool = False
    draft_config: Any = None  # exllamav2.ExLlamaV2Config of the draft, max_seq_len etc. set to the model's
    draft_cache_class: type | None = None
    draft_gpu_split: list[float] | None = None  # None: load_autosplit (with the model's reserves)
    loras: list[tuple[str, float]] = field(default_factory=list)  # (directory, scale) after the model
    vision: bool = False  # ExLlamaV2VisionTower(config).load() after the draft, before the model

    @property
    def cache_tokens(self) -> int:
        """The cache length (a paged tensor-parallel cache holds every sequence's pages, as planned)."""
        batch = self.max_batch_size if self.tensor_parallel and self.paged else 1
        return self.config.max_seq_len * batch

    def make_cache(self, model: Any, *, lazy: bool | None = None) -> Any:
        """The planned cache for `model` (lazy for autosplit: allocated while the model loads; for a
        tensor-parallel model ExLlamaV2Cache_TP over the planned base class, after load_tp)."""
        if self.tensor_parallel:
            from exllamav2 import ExLlamaV2Cache_TP

            return ExLlamaV2Cache_TP(model, base=self.cache_class, batch_size=1,
                                     max_seq_len=self.cache_tokens)
        return self.cache_class(model, batch_size=1, max_seq_len=self.config.max_seq_len,
                                lazy=self.autosplit if lazy is None else lazy)

    def make_draft_cache(self, draft_model: Any, *, lazy: bool) -> Any:
        """The draft's cache: its own mode, the model's length (the dynamic generator asserts it)."""
        assert self.draft_cache_class is not None
        return self.draft_cache_class(draft_model, batch_size=1, max_seq_len=self.cache_tokens, lazy=lazy)


@dataclass
class Loaded:
    model: Any
    cache: Any
    tokenizer: Any
    generator: Any | None
    prepared: Prepared
    draft_model: Any = None
    draft_cache: Any = None
    loras: list[Any] = field(default_factory=list)  # ExLlamaV2Lora, set on the generator
    vision_model: Any = None  # ExLlamaV2VisionTower: vision_model.get_image_embeddings(model=..., ...)


# ---------------------------------------------------------------------------------------------------------


def prepare(
    model_dir: str | os.PathLike[str],
    profile: str | os.PathLike[str] | Profile | None = None,
    *,
    on_stale: str = "replan",
    facts: Facts | None = None,
    save: bool = True,
    **overrides: Any,
) -> Prepared:
    """Find or make the profile for `model_dir`, check it, and build the ExLlamaV2 config it describes.

    `profile`: a Profile, a path (made there when missing), or None for the default location (one file per
    model fingerprint and machine under the user config dir). `on_stale`: 'replan' (default; re-plan with
    the profile's request and rewrite it), 'refuse' (raise StaleProfileError) or 'warn' (use it anyway).
    `facts`: fresh facts (default: `detect()` of this interpreter). `overrides`: settings keys applied on
    top of the profile (`max_seq_len=8192`, `cache_mode="Q4"`, `backend="matmul"`...), validated like a
    hand edit. `save`: write new or re-planned profiles to their path.

    Raises OptionError / UsageError (bad arguments or overrides), ModelSpecError (the model directory),
    ProfileError / SpecialFileError / OutputError (the profile file: unreadable, invalid, not a regular
    file, cannot be written), StaleProfileError (on_stale='refuse'), LoaderError (exllamav2 in this
    process cannot run the profile), ProbeError (detect() could not probe this interpreter).
    """
    if on_stale not in ON_STALE:
        raise OptionError("on_stale", on_stale, f"choose one of {', '.join(ON_STALE)}")
    if not isinstance(model_dir, (str, os.PathLike)):
        raise OptionError("model_dir", model_dir, "must be the path of a model directory")
    if facts is not None and not isinstance(facts, Facts):
        raise OptionError("facts", facts, "must be a Facts document (exlx_autocfg.detect())")
    model_dir = Path(model_dir).expanduser()
    spec = _model_spec(model_dir)
    if facts is None:
        from exlx_autocfg.facts.detect import detect

        facts = detect()
    notes: list[str] = []
    path, prof = _find_profile(profile, spec, facts)
    changes: list[Change] = []
    replanned = False
    if prof is None:
        prof = _plan_profile(facts, spec, {})
        notes.append("no profile for this model and machine yet: planned one")
        if save and path is not None:
            write_profile(prof, path)
            notes.append(f"wrote profile {path}")
    else:
        from exlx_autocfg.profile.stamps import read_companion_stamps

        changes = find_changes(prof, facts, spec.fingerprint, model_dir=str(model_dir),
                               companions=read_companion_stamps(prof.computed_for))
        if changes:
            what = "; ".join(c.message for c in changes)
            where = f"profile {path}" if path else "the profile"
            if on_stale == "refuse":
                raise StaleProfileError(f"{where} is stale: {what}", hint=REFUSED_HINT)
            if on_stale == "warn":
                message = f"{where} is stale, using it anyway: {what}"
            else:
                prof = _plan_profile(facts, spec, prof.request)
                replanned = True
                message = f"{where} was stale, re-planned: {what}"
                if save and path is not None:
                    write_profile(prof, path)
                    message += f" (rewrote {path})"
            notes.append(message)
            warnings.warn(message, StaleProfileWarning, stacklevel=2)
    settings = apply_overrides(prof.settings, overrides)
    if overrides:
        notes.append("overrides: " + ", ".join(f"{k}={v!r}" for k, v in sorted(overrides.items())))
    # The settings as they are (hand edits and overrides included), re-checked with the memory model against
    # the GPUs the profile was made for: an edit that cannot work is refused before anything is loaded.
    from exlx_autocfg.planner.evaluate import memory_recheck_skipped
    from exlx_autocfg.profile.recheck import settings_problems

    problems = settings_problems(prof, spec, settings)
    skipped = memory_recheck_skipped(settings)
    if skipped:
        notes.append(skipped)
    if problems:
        where = f"profile {path}" if path else "the profile"
        what = "; ".join(f.message for f in problems)
        if on_stale != "warn":
            raise ProfileError(f"{where}: its settings cannot work on the GPUs it was made for: {what}",
                               hint="re-plan with `exlx-autocfg profile`, or fix the edit (on_stale='warn' "
                               "loads it anyway)")
        message = f"{where}: its settings cannot work on the GPUs it was made for, using them anyway: {what}"
        notes.append(message)
        warnings.warn(message, StaleProfileWarning, stacklevel=2)

    module, import_problem = _import_exllamav2(settings, notes)
    config = _build_config(module, model_dir, settings, notes)
    attn = sys.modules["exllamav2.attn"]
    backend = effective_backend(attn, config)
    paged = settings.paged
    flags = exl2.ImportFlags.from_module(attn)
    problem = import_problem
    if problem is None and backend != settings.backend:
        problem = (f"exllamav2 would run attention with {backend}, not the profile's {settings.backend}: "
                   f"{_why_not(settings.backend, config)}")
    if problem is None and paged and not flags.flash_paged:
        problem = (f"the profile's paged mode needs {_backend_library('paged')}, and exllamav2 found no "
                   "paged attention")
    if problem is not None:
        if on_stale != "warn":
            raise LoaderError(problem, hint=(
                "call exlx_autocfg.prepare() before importing exllamav2, or start a new process"
                if import_problem else "re-plan: `exlx-autocfg profile` (on_stale='warn' runs anyway)"))
        if paged and not flags.flash_paged:
            paged = False
            problem += "; running unpaged"
        notes.append(problem)
        warnings.warn(problem, StaleProfileWarning, stacklevel=2)
    draft_config, draft_cache_class = None, None
    if settings.draft is not None:
        draft_config = _build_draft_config(module, spec, settings, notes)
        draft_cache_class = getattr(module, settings.draft.cache_class)
    loras = _check_loras(spec, settings, notes)
    if settings.vision:
        if not getattr(config, "vision_model_type", None):
            raise LoaderError(f"the profile loads a vision tower, but exllamav2 finds no vision_config in "
                              f"{model_dir}/config.json", hint="re-plan without --vision")
        notes.append(f"vision: ExLlamaV2VisionTower ({config.vision_model_type}) loaded on the first GPU "
                     "after the draft, before the model")
    if settings.tensor_parallel:
        notes.append(f"tensor parallel: load_tp(gpu_split={settings.gpu_split}, expect_cache_base="
                     f"{settings.cache_class}), then ExLlamaV2Cache_TP")
    return Prepared(
        config=config,
        cache_class=getattr(module, settings.cache_class),
        profile=prof,
        profile_path=path,
        settings=settings,
        backend=backend,
        gpu_split=list(settings.gpu_split) if settings.gpu_split is not None else None,
        autosplit=settings.autosplit,
        reserve_vram=list(settings.reserve_bytes) or None,
        paged=paged,
        max_batch_size=settings.max_batch_size,
        changes=changes,
        replanned=replanned,
        notes=notes,
        tensor_parallel=settings.tensor_parallel,
        draft_config=draft_config,
        draft_cache_class=draft_cache_class,
        draft_gpu_split=(list(settings.draft.gpu_split) if settings.draft and settings.draft.gpu_split
                         else None),
        loras=loras,
        vision=settings.vision,
    )


def load(
    model_dir: str | os.PathLike[str],
    profile: str | os.PathLike[str] | Profile | None = None,
    *,
    generator: bool = True,
    progress: bool = False,
    **kw: Any,
) -> Loaded:
    """`prepare`, then load the model with the planned split (or autosplit with the planned reserves), the
    cache, the tokenizer and a dynamic generator (paged when the profile says so, else unpaged, batch 1).
    Keyword arguments go to `prepare` (on_stale, facts, save, overrides). Raises what `prepare` raises, and
    LoaderError when torch sees no GPU."""
    prepared = prepare(model_dir, profile, **kw)
    import exllamav2
    import torch

    if not torch.cuda.is_available():
        raise LoaderError("load() needs a GPU and torch sees none (prepare() works without one)")
    reserves = _reserves(prepared.reserve_vram, torch.cuda.device_count())
    draft_model = draft_cache = None
    if prepared.draft_config is not None:  # first, as TabbyAPI loads it
        draft_model = exllamav2.ExLlamaV2(prepared.draft_config)
        if prepared.draft_gpu_split is not None:
            draft_model.load(gpu_split=prepared.draft_gpu_split, progress=progress)
            draft_cache = prepared.make_draft_cache(draft_model, lazy=False)
        else:
            draft_cache = prepared.make_draft_cache(draft_model, lazy=True)
            draft_model.load_autosplit(draft_cache, reserve_vram=reserves, progress=progress)
    vision_model = None
    if prepared.vision:  # after the draft, before the model (TabbyAPI backends/exllamav2/model.py)
        vision_model = exllamav2.ExLlamaV2VisionTower(prepared.config)
        vision_model.load(progress=progress)
    model = exllamav2.ExLlamaV2(prepared.config)
    if prepared.tensor_parallel:
        model.load_tp(gpu_split=prepared.gpu_split, progress=progress,
                      expect_cache_tokens=prepared.cache_tokens, expect_cache_base=prepared.cache_class)
        cache = prepared.make_cache(model)
    elif prepared.autosplit:
        cache = prepared.make_cache(model, lazy=True)  # autosplit allocates it layer by layer while loading
        model.load_autosplit(cache, reserve_vram=reserves, progress=progress)
    else:
        model.load(gpu_split=prepared.gpu_split, progress=progress)
        cache = prepared.make_cache(model, lazy=False)
    loras = [exllamav2.ExLlamaV2Lora.from_directory(model, path, scale) for path, scale in prepared.loras]
    tokenizer = exllamav2.ExLlamaV2Tokenizer(prepared.config)
    gen = None
    if generator:
        from exllamav2.generator import ExLlamaV2DynamicGenerator

        # Unpaged mode serves one sequence at a time (generator/dynamic.py: "max supported batch size is 1").
        gen = ExLlamaV2DynamicGenerator(model=model, cache=cache, tokenizer=tokenizer, paged=prepared.paged,
                                        max_batch_size=prepared.max_batch_size if prepared.paged else 1,
                                        draft_model=draft_model, draft_cache=draft_cache)
        if loras:
            gen.set_loras(loras)
    return Loaded(model=model, cache=cache, tokenizer=tokenizer, generator=gen, prepared=prepared,
                  draft_model=draft_model, draft_cache=draft_cache, loras=loras, vision_model=vision_model)


# ---------------------------------------------------------------------------------------------------------
# Pieces (public where tests and other tools reuse them)


def apply_overrides(settings: Settings, overrides: dict[str, Any]) -> Settings:
    """`settings` with `overrides` applied and validated; a backend override also sets its switches."""
    known = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UsageError(f"unknown override {unknown[0]!r} (known: {', '.join(sorted(known))})")
    if not overrides:
        return settings
    changes = dict(overrides)
    if "backend" in changes:
        backend = exl2.normalise_backend(str(changes["backend"])) or str(changes["backend"])
        if backend not in exl2.BACKENDS:
            raise UsageError(f"backend: {changes['backend']!r} is not one of {', '.join(exl2.BACKENDS)}")
        settings = settings.with_backend(backend)  # its switches, unpaged off flash-attn; explicit ones win
        del changes["backend"]
    new = dataclasses.replace(settings, **changes)
    try:
        validate_settings(new)
    except SettingsError as exc:
        raise UsageError(f"override settings.{exc.key}: {exc.problem}") from None
    return new


def effective_backend(attn: Any, config: Any) -> str:
    """The backend exllamav2's causal forward picks with this config (after arch_compat_overrides)."""
    switches = {s: bool(getattr(config, s)) for s in exl2.SWITCHES}
    return exl2.lands_on(switches, exl2.ImportFlags.from_module(attn),
                         softcap=bool(config.attn_logit_softcapping))


def _why_not(backend: str, config: Any) -> str:
    if backend == "matmul":
        return "a faster backend is still enabled in the config"
    attn = sys.modules["exllamav2.attn"]
    switch = exl2.SWITCH[backend]
    if getattr(config, switch):
        return f"config.{switch} is set (arch_compat_overrides or the model's architecture turned it off)"
    flag = exl2.IMPORT_FLAG[backend]
    if not getattr(attn, flag):
        return f"exllamav2.attn.{flag} is False: {_backend_library(backend)} did not import"
    if backend == "sdpa" and config.attn_logit_softcapping:
        return "the model uses logit softcapping, which exllamav2 runs only with flash-attn or matmul"
    return "a backend ahead of it in exllamav2's precedence is enabled"


def _import_exllamav2(settings: Settings, notes: list[str]) -> tuple[Any, str | None]:
    """Set the switches and import exllamav2; or, when it is already imported, say what the earlier import
    rules out. Returns (the exllamav2 module, a one-line problem or None)."""
    if "exllamav2.attn" in sys.modules:
        notes.append("exllamav2 was already imported; its backends were checked against the profile")
        return sys.modules["exllamav2"], _already_imported_problem(sys.modules["exllamav2.attn"], settings)
    for var, value in settings.env.items():
        present = value is not None
        if present and var not in os.environ:
            os.environ[var] = "1"
            notes.append(f"set {var}")
        elif not present and var in os.environ:
            # A stale switch from the shell would silently turn off the backend the profile chose.
            del os.environ[var]
            notes.append(f"unset {var} (the profile uses that backend)")
    try:
        return importlib.import_module("exllamav2"), None
    except Exception as exc:  # a broken extension or library breaks the import itself: one clear line
        first = (str(exc).strip().splitlines() or [""])[0]
        raise LoaderError(f"import exllamav2 failed: {type(exc).__name__}: {first}",
                          hint="run `exlx-autocfg check` for the cause and the fix") from None


def _already_imported_problem(attn: Any, settings: Settings) -> str | None:
    """exllamav2 decided its backends when it was imported: did the profile's backend survive?

    Backends the profile turns off need nothing: the config's no_* flags turn them off per call. A backend
    the profile wants but the import disabled cannot come back without a new process.
    """
    needed = [settings.backend] if settings.backend != "matmul" else []
    if settings.paged:
        needed.append("paged")
    for b in needed:
        flag = exl2.PAGED_IMPORT_FLAG if b == "paged" else exl2.IMPORT_FLAG[b]
        if getattr(attn, flag, False):
            continue
        var = exl2.OFF_ENV["flash_attn" if b == "paged" else b]
        cause = f"{var} was set" if var in os.environ else f"{_backend_library(b)} did not import"
        what = "paged mode" if b == "paged" else f"backend {settings.backend!r}"
        return (f"exllamav2 was imported before the profile was applied and {cause}, so "
                f"exllamav2.attn.{flag} is False: the profile's {what} cannot run in this process")
    return None


def _new_config(module: Any, directory: str | Path, settings: Settings, what: str) -> Any:
    """exllamav2's ExLlamaV2Config of `directory` with the profile's lengths, batch and backend switches."""
    try:
        config = module.ExLlamaV2Config(str(directory))
    except Exception as exc:  # exllamav2 reports bad model dirs with asserts and KeyErrors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelSpecError(f"exllamav2 cannot read the {what} in {directory}: {first}") from None
    config.max_seq_len = settings.max_seq_len
    config.max_input_len = settings.max_input_len
    config.max_attention_size = settings.max_attention_size
    config.max_batch_size = settings.max_batch_size
    for switch, value in settings.switches.items():
        setattr(config, switch, value)
    return config


def _build_config(module: Any, model_dir: Path, settings: Settings, notes: list[str]) -> Any:
    config = _new_config(module, model_dir, settings, "model")
    before = {k: getattr(config, k) for k in exl2.SWITCHES}
    config.arch_compat_overrides(quiet=True)  # hosts must call it (examples and TabbyAPI do)
    for key, was in before.items():
        if getattr(config, key) != was:
            notes.append(f"exllamav2 arch_compat_overrides set {key} = {getattr(config, key)} for this model")
    return config


def _build_draft_config(module: Any, spec: Any, settings: Settings, notes: list[str]) -> Any:
    """The draft's real ExLlamaV2Config: read from its directory, its max_seq_len, max_input_len,
    max_attention_size and switches the model's (TabbyAPI model.py L372-376; the dynamic generator asserts
    draft max_seq_len >= the model's), its RoPE settings from the profile. The pair is judged again, so a
    hand-edited draft that cannot draft for the model is refused here."""
    from exlx_autocfg.model.companions import read_draft, tokenizer_of
    from exlx_autocfg.planner import draft as dr
    from exlx_autocfg.planner.companions import refuse_draft

    d = settings.draft
    assert d is not None
    if not d.path:
        raise LoaderError(f"the profile's draft {d.name} has no local directory (planned from the "
                          "catalog or the "
                          "Hub)", hint="download it and re-plan with --draft DIR")
    draft = read_draft(d.path)
    refuse_draft(dr.judge_draft(spec, draft.spec, cache_size=settings.max_seq_len,
                                cache_mode=settings.cache_mode, draft_cache_mode=d.cache_mode,
                                model_tokenizer=tokenizer_of(spec), draft_tokenizer=draft.tokenizer,
                                lora_count=len(settings.loras)),
                 f"draft {d.path}")
    config = _new_config(module, d.path, settings, "draft model")
    config.scale_pos_emb = d.rope_scale
    config.scale_alpha_value = d.rope_alpha
    config.arch_compat_overrides(quiet=True)
    load = f"load(gpu_split={d.gpu_split})" if d.gpu_split else "load_autosplit(draft_cache)"
    notes.append(f"draft {d.name}: {d.cache_class}, max_seq_len {settings.max_seq_len} (the model's), "
                 "rope alpha "
                 f"{d.rope_alpha:g}; {load} before the model")
    return config


def _check_loras(spec: Any, settings: Settings, notes: list[str]) -> list[tuple[str, float]]:
    """Each adapter read and judged against the model (what ExLlamaV2Lora would refuse raises
    LoraRefusedError); returns (directory, scale) for ExLlamaV2Lora.from_directory after the model."""
    from exlx_autocfg.model.lora import read_adapter
    from exlx_autocfg.planner.companions import checked_lora

    out = []
    for lora in settings.loras:
        planned = checked_lora(read_adapter(lora.path), spec, lora.scale, f"LoRA {lora.path}")
        notes.append(f"LoRA {lora.name}: ExLlamaV2Lora.from_directory(model, {lora.path!r}, "
                     f"{lora.scale:g}) after "
                     f"the model ({planned.gpu_bytes / 1024**2:,.1f} MiB on the GPUs of its modules)")
        out.append((lora.path, lora.scale))
    return out


def _reserves(reserve: list[int] | None, device_count: int) -> list[int] | None:
    """The planned reserves padded with exllamav2's defaults to every device (it indexes them by device)."""
    if not reserve:
        return None
    defaults = [exl2.DEFAULT_RESERVE_FIRST] + [exl2.DEFAULT_RESERVE_OTHER] * max(device_count - 1, 0)
    return [*reserve[:device_count], *defaults[len(reserve):device_count]]


def _model_spec(model_dir: Path) -> Any:
    if not model_dir.is_dir():
        raise ModelSpecError(f"model directory {model_dir} does not exist")
    from exlx_autocfg.model.load import load_model_spec

    return load_model_spec(model_dir)


def _find_profile(profile: str | os.PathLike[str] | Profile | None, spec: Any,
                  facts: Facts) -> tuple[Path | None, Profile | None]:
    if isinstance(profile, Profile):
        return None, profile
    if profile is None:
        machine = machine_identity(facts)
        path = default_profile_path(spec.name, spec.fingerprint, machine)
        if not path.exists():  # e.g. planned from the Hub before the download: same model, another name
            path = next(iter(profiles_for_model(spec.fingerprint, machine)), path)
    else:
        path = Path(profile).expanduser()
    return path, (read_profile(path) if path.exists() else None)


def _plan_profile(facts: Facts, spec: Any, request: dict[str, Any]) -> Profile:
    from exlx_autocfg.planner.core import plan

    return profile_from_plan(plan(facts, spec, **request), facts)
