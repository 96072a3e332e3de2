"""The profile file: the settings a plan chose, what they were computed for, and why.

A profile is TOML (humans may edit it) with four parts: `[settings]` (what the loader applies to
ExLlamaV2), `[computed_for]` (the GPUs, libraries, interpreter and model fingerprint the plan saw, which
`staleness` compares with fresh facts), `[[reasons]]` (the planner's decisions) and `[request]` (the plan
options, so a stale profile can be re-planned the same way). docs/profile.md describes every key.

Reading validates strictly: a typo, an unknown value, a negative length or a wrong type is a `ProfileError`
whose one-line message names the key. Writing is atomic: the complete text goes to a temporary file in the
same directory, is fsynced and renamed over the target, so readers see either the old or the new profile.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import tomli_w

from exlx_autocfg.atomic import read_regular, write_text_atomic
from exlx_autocfg.errors import ProfileError
from exlx_autocfg.facts.types import Facts
from exlx_autocfg.findings import Finding
from exlx_autocfg.planner.types import Plan, Reason, in_cuda_order
from exlx_autocfg.serde import from_data, schema_problem, to_data
from exlx_autocfg.settings import BESIDE, Settings, SettingsError, validate_settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

PROFILE_SCHEMA = 2
MAX_PROFILE_BYTES = 16 * 1024 * 1024  # a profile is a few kB; refuse to slurp something huge

# The libraries whose version, build and import state decide which attention backend exllamav2 can use
# (exllamav2/attn.py imports flash_attn, xformers.ops and torch's causal_lower_right at import time).
TRACKED_LIBRARIES: tuple[str, ...] = ("torch", "xformers", "flash-attn", "exllamav2")

@dataclass
class GPUStamp:
    index: int  # NVML index
    name: str
    memory_total: int  # bytes
    uuid: str | None = None
    pci_bus_id: str | None = None
    compute_capability: str | None = None
    cuda_index: int | None = None
    used: bool = True  # whether the plan puts anything on it
    vendor: str = "nvidia"  # nvidia | amd


@dataclass
class LibraryStamp:
    installed: bool
    version: str | None = None
    local_tag: str | None = None  # build tag: "cu121", "rocm6.1"
    import_status: str = "not-tried"
    import_error: str | None = None
    ops_error: str | None = None  # compiled ops that do not load (xformers C++ lib, flash_attn_2_cuda, ext)
    ext: str | None = None  # exllamav2 only: prebuilt | prebuilt-broken | jit-cached | jit-needed
    import_paths: dict[str, bool] = field(default_factory=dict)  # xformers only: which names resolve


@dataclass
class ModelStamp:
    name: str
    dir: str | None = None
    fingerprint: str | None = None  # sha256 over config.json and the safetensors headers
    architecture: str = ""
    hf_repo: str | None = None  # planned from the Hugging Face Hub: the repo,
    hf_revision: str | None = None  # the revision asked for (branch, tag or commit)
    hf_commit: str | None = None  # and the commit it resolved to


@dataclass
class LoraStamp:
    """A LoRA adapter the profile was planned with (its settings entry has the scale)."""

    name: str
    dir: str
    fingerprint: str | None = None  # sha256 over adapter_config.json and the safetensors header


@dataclass
class ComputedFor:
    model: ModelStamp
    gpus: list[GPUStamp] = field(default_factory=list)
    libraries: dict[str, LibraryStamp] = field(default_factory=dict)
    python: str = ""  # the interpreter the facts describe
    python_version: str = ""
    driver_version: str | None = None
    what_if: bool = False
    machine: str = ""  # machine identity: hash of the GPUs and the interpreter
    draft: ModelStamp | None = field(default=None, metadata=BESIDE)  # the draft planned beside the model
    loras: list[LoraStamp] = field(default_factory=list, metadata=BESIDE)  # the adapters planned with it

    def used_gpus(self) -> list[GPUStamp]:
        """The GPUs the settings use, in CUDA order."""
        return in_cuda_order([g for g in self.gpus if g.used])


@dataclass
class Profile:
    settings: Settings
    computed_for: ComputedFor
    reasons: list[Reason] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    request: dict[str, Any] = field(default_factory=dict)
    tool_version: str = ""
    created: str = ""  # ISO 8601 UTC
    schema: int = PROFILE_SCHEMA


# ---------------------------------------------------------------------------------------------------------
# Building a profile from a plan and the facts it was made from (pure)


def stamp_libraries(facts: Facts) -> dict[str, LibraryStamp]:
    """The library facts that matter to exllamav2's backend choice, as the profile records them."""
    stamps = {}
    for name in TRACKED_LIBRARIES:
        lib = facts.lib(name)
        details = lib.details or {}
        ops_error = (details.get("cpp_load_error") or details.get("cuda_module_error")
                     or details.get("func_error") or details.get("ext_error"))
        paths = details.get("import_paths") if name == "xformers" else None
        stamps[name] = LibraryStamp(
            installed=lib.installed,
            version=lib.version,
            local_tag=lib.local_tag,
            import_status=lib.import_status,
            import_error=_one_line(lib.import_error),
            ops_error=_one_line(ops_error) if isinstance(ops_error, str) else None,
            ext=details.get("ext") if name == "exllamav2" else None,
            import_paths={str(k): bool(v) for k, v in (paths or {}).items()},
        )
    return stamps


def stamp_gpus(facts: Facts, used_indices: set[int] | None = None) -> list[GPUStamp]:
    return [
        GPUStamp(
            index=g.index,
            name=g.name,
            memory_total=g.memory_total,
            uuid=g.uuid,
            pci_bus_id=g.pci_bus_id,
            compute_capability=g.compute_capability,
            cuda_index=g.cuda_index,
            used=used_indices is None or g.index in used_indices,
            vendor=g.vendor,
        )
        for g in facts.gpu.gpus
    ]


def computed_for_facts(facts: Facts, model: ModelStamp, used_indices: set[int] | None = None) -> ComputedFor:
    """What a profile records about the machine and the model (also the 'fresh' side of a staleness check)."""
    return ComputedFor(
        model=model,
        gpus=stamp_gpus(facts, used_indices),
        libraries=stamp_libraries(facts),
        python=facts.python.executable,
        python_version=facts.python.version,
        driver_version=facts.gpu.driver_version,
        what_if=facts.what_if,
        machine=machine_identity(facts),
    )


def profile_from_plan(plan: Plan, facts: Facts, *, created: str | None = None) -> Profile:
    hub = plan.model.hub
    model = ModelStamp(
        name=plan.model.name,
        dir=plan.model.path,
        fingerprint=plan.model.fingerprint,
        architecture=plan.model.architecture,
        hf_repo=hub.repo if hub else None,
        hf_revision=hub.revision if hub else None,
        hf_commit=hub.commit if hub else None,
    )
    used = {g.index for g in plan.gpus}
    cf = computed_for_facts(facts, model, used)
    cf.draft, cf.loras = companion_stamps(plan)
    return Profile(
        settings=copy.deepcopy(plan.settings),
        computed_for=cf,
        reasons=[_without_evidence(r) for r in plan.reasons],
        warnings=[Finding(w.code, w.message) for w in plan.warnings],
        request={k: v for k, v in plan.request.items() if v is not None},
        tool_version=plan.tool_version or _tool_version(),
        created=created or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )


def companion_stamps(plan: Plan) -> tuple[ModelStamp | None, list[LoraStamp]]:
    """What a profile records of the draft and the adapters, from the plan's sections."""
    draft = None
    if plan.draft is not None and plan.settings.draft is not None:
        draft = ModelStamp(name=plan.draft.get("model") or plan.settings.draft.name,
                           dir=plan.draft.get("path"),
                           fingerprint=plan.draft.get("fingerprint"),
                           architecture=plan.draft.get("architecture") or "")
    loras = [LoraStamp(name=str(x.get("name")), dir=str(x.get("path")), fingerprint=x.get("fingerprint"))
             for x in plan.loras]
    return draft, loras


def _without_evidence(r: Reason) -> Reason:
    """A reason as the profile keeps it: code and text, not the evidence (that is `plan --json`'s), so the
    file stays short enough to read and edit by hand."""
    rejected = {alt: [Finding(f.code, f.message) for f in fs] for alt, fs in r.rejected.items()}
    return Reason(r.decision, r.choice, r.code, r.why, {}, rejected)


def machine_identity(facts: Facts) -> str:
    """A short, stable id for (these GPUs, this interpreter): UUIDs are unique per board, so two machines
    never share one; without UUIDs (what-if, some AMD readers) name, VRAM and bus stand in."""
    gpus = sorted(g.uuid or f"{g.name}|{g.memory_total}|{g.pci_bus_id}" for g in facts.gpu.gpus)
    text = "\n".join([*gpus, facts.python.executable])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def default_profiles_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir("exlx-autocfg")) / "profiles"


def default_profile_path(model_name: str, model_fingerprint: str | None, machine: str) -> Path:
    """One file per (model fingerprint, machine identity) under the user config dir."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name).strip("-.")[:60] or "model"
    fp = (model_fingerprint or "nofingerprint")[:12]
    return default_profiles_dir() / f"{slug}-{fp}-{machine}.toml"


def profiles_for_model(model_fingerprint: str | None, machine: str) -> list[Path]:
    """Profiles in the default directory for this model fingerprint and machine, whatever the model was named
    (a profile planned from hf:ORG/REPO@REVISION is found for the directory it was downloaded to)."""
    directory = default_profiles_dir()
    if not model_fingerprint or not directory.is_dir():
        return []
    return sorted(directory.glob(f"*-{model_fingerprint[:12]}-{machine}.toml"))


# ---------------------------------------------------------------------------------------------------------
# Text form


def render_profile(profile: Profile) -> str:
    """The TOML text of a profile (validated first, so an invalid profile is never written)."""
    validate_profile(profile)
    cf = profile.computed_for
    gpus = ", ".join(g.name for g in cf.gpus if g.used) or "no GPU"
    header = (
        f"# exlx-autocfg profile: ExLlamaV2 settings for {_one_line(cf.model.name)} on {_one_line(gpus)}.\n"
        "# [settings] may be edited by hand; `exlx-autocfg verify PROFILE` checks it against this machine,\n"
        "# `exlx-autocfg show PROFILE` explains it. Format: docs/profile.md.\n"
    )
    data = _drop_none(to_data(profile))
    first = ("schema", "tool_version", "created")  # the identity lines on top, then the tables in order
    ordered = {k: data[k] for k in first if k in data} | {k: v for k, v in data.items() if k not in first}
    return header + tomli_w.dumps(ordered)


def parse_profile(text: str, source: str = "<profile>") -> Profile:
    """Parse and validate profile text; every problem is a one-line `ProfileError` naming the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile {source}: not valid TOML: {exc}") from None
    schema = data.get("schema")
    if type(schema) is int and schema == 1:
        data = _from_schema_1(data)
        schema = PROFILE_SCHEMA
    problem = schema_problem(schema, PROFILE_SCHEMA) if schema is not None else None
    if problem:
        raise ProfileError(f"profile {source}: schema: {problem}",
                           hint="re-create it with `exlx-autocfg profile`")
    try:
        _check_keys(Profile, data, "")
        profile = from_data(Profile, data)
    except (TypeError, ValueError) as exc:
        message = str(exc).removeprefix("Profile.")
        raise ProfileError(f"profile {source}: {message}") from None
    except ProfileError as exc:
        raise ProfileError(f"profile {source}: {exc.message}", hint=exc.hint) from None
    try:
        validate_profile(profile)
    except ProfileError as exc:
        raise ProfileError(f"profile {source}: {exc.message}", hint=exc.hint) from None
    return profile


def _from_schema_1(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 profile (exlx-autocfg 0.1.0: reasons and warnings as plain text) read as schema 2: the same
    settings and computed-for, its texts kept under the code `legacy.text`."""

    def coded(text: Any) -> Any:
        return {"code": "legacy.text", "message": text} if isinstance(text, str) else text

    out = {**data, "schema": PROFILE_SCHEMA}
    if isinstance(data.get("warnings"), list):
        out["warnings"] = [coded(w) for w in data["warnings"]]
    if isinstance(data.get("reasons"), list):
        reasons = []
        for r in data["reasons"]:
            if isinstance(r, dict):
                r = {"code": "legacy.text", **r}
                rejected = r.get("rejected")
                if isinstance(rejected, dict):
                    r["rejected"] = {k: [coded(v)] if isinstance(v, str) else v for k, v in rejected.items()}
            reasons.append(r)
        out["reasons"] = reasons
    return out


def read_profile(path: str | os.PathLike[str]) -> Profile:
    """Read and validate a profile file. Raises ProfileError (missing, unreadable, not a profile) or
    SpecialFileError (a FIFO, device or directory: refused by type, never opened)."""
    path = Path(path)
    try:
        text = read_regular(path, limit=MAX_PROFILE_BYTES).decode("utf-8")
    except FileNotFoundError:
        raise ProfileError(f"profile {path}: no such file") from None
    except UnicodeDecodeError:
        raise ProfileError(f"profile {path}: cannot read: not UTF-8 text") from None
    except OSError as exc:
        raise ProfileError(f"profile {path}: cannot read: {exc.strerror or exc}") from None
    return parse_profile(text.removeprefix("\ufeff"), str(path))


def write_profile(profile: Profile, path: str | os.PathLike[str]) -> Path:
    """Write atomically: render fully, write a temp file beside the target, fsync, rename, fsync the dir.

    An existing profile is replaced only by a complete new one; on any failure the old file is untouched
    and no temporary file is left behind. The write holds the directory's lock (profiles of many models
    share one directory) and follows the output-target policy of `exlx_autocfg.atomic` (a symlink is
    written through; a device, FIFO or socket is refused with OutputError).
    """
    path = Path(path)
    text = render_profile(profile)  # may raise: nothing has touched the disk yet
    try:
        return write_text_atomic(path, text)
    except OSError as exc:
        raise ProfileError(f"cannot write profile {path}: {exc.strerror or exc}") from None


# ---------------------------------------------------------------------------------------------------------
# Validation


def validate_profile(profile: Profile) -> None:
    """Semantic checks on top of the types; raises `ProfileError` naming the first bad key."""
    problem = schema_problem(profile.schema, PROFILE_SCHEMA)
    if problem:
        _bad("schema", problem)
    try:
        validate_settings(profile.settings)
    except SettingsError as exc:
        _bad(f"settings.{exc.key}", exc.problem)
    for i, g in enumerate(profile.computed_for.gpus):
        if g.memory_total < 0:
            _bad(f"computed_for.gpus[{i}].memory_total", f"must not be negative, got {g.memory_total}")


def _bad(key: str, message: str) -> typing.NoReturn:
    raise ProfileError(f"{key}: {message}")


def _check_keys(tp: Any, value: Any, path: str) -> None:
    """Unknown keys (typos) and missing required keys, with the dotted key in the message."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is not type(None) and _shape_matches(arg, value):
                _check_keys(arg, value, path)
        return
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            return  # from_data reports the wrong type with the same key
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        for key in value:
            if key not in fields:
                close = difflib.get_close_matches(key, list(fields), n=1)
                hint = f" (did you mean {_join(path, close[0])}?)" if close else ""
                known = "" if close else f" (known keys: {', '.join(fields)})"
                raise ProfileError(f"{_join(path, key)}: unknown key{hint}{known}")
        for name, f in fields.items():
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required and name not in value:
                raise ProfileError(f"{_join(path, name)}: missing")
            if name in value:
                _check_keys(hints[name], value[name], _join(path, name))
    elif origin in (list, tuple) and isinstance(value, list):
        item = (typing.get_args(tp) or (Any,))[0]
        for i, v in enumerate(value):
            _check_keys(item, v, f"{path}[{i}]")
    elif origin is dict and isinstance(value, dict):
        _, val_tp = typing.get_args(tp) or (str, Any)
        for k, v in value.items():
            _check_keys(val_tp, v, _join(path, k))


def _shape_matches(tp: Any, value: Any) -> bool:
    if dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict:
        return isinstance(value, dict)
    if typing.get_origin(tp) in (list, tuple):
        return isinstance(value, list)
    return False


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _drop_none(value: Any) -> Any:
    """TOML has no null: absent keys take their defaults (None, or an empty table) when read back."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None and v != {}}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def _one_line(text: str | None) -> str | None:
    return " ".join(text.split()) if text else text


def _tool_version() -> str:
    from exlx_autocfg import __version__

    return __version__
