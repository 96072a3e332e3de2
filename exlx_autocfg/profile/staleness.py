"""Is a profile still right for this machine? A pure comparison of what it was computed for with fresh facts.

`find_changes(profile, facts, model_fingerprint)` returns one `Change` per difference that can make the
profile wrong, each with a one-line reason a user can act on: another GPU or less VRAM, a GPU that moved
in CUDA's order, a library upgraded/downgraded/rebuilt, an xformers whose import paths moved, a flash-attn
or exllamav2 extension that no longer loads, a changed model. An empty list means the profile is current.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from exlx_autocfg.facts.types import Facts
from exlx_autocfg.profile.format import (
    ComputedFor,
    GPUStamp,
    LibraryStamp,
    LoraStamp,
    ModelStamp,
    Profile,
    computed_for_facts,
)

GIB = 1024**3


@dataclass(frozen=True)
class Change:
    kind: str  # "gpu" | "vram" | "library" | "model" | "draft" | "lora"
    subject: str  # "GPU 0", "xformers", "model"
    message: str  # one line, complete on its own
    code: str = ""  # exlx_autocfg.findings.CODES: stale.*

    def __str__(self) -> str:
        return self.message


def find_changes(profile: Profile, facts: Facts, model_fingerprint: str | None, *,
                 model_dir_exists: bool = True, model_dir: str | None = None,
                 companions: tuple[ModelStamp | None, list[LoraStamp]] | None = None) -> list[Change]:
    """Differences between the profile's computed-for and fresh facts + the model's current fingerprint.

    `model_fingerprint` None with `model_dir_exists` False means the model directory is gone. `model_dir`:
    the directory the profile is being applied to, when it may not be the one it was made for.
    `companions`: the draft's and the adapters' stamps now (`profile.stamps.read_companion_stamps`; a
    fingerprint None means gone); None leaves them uncompared.
    """
    old = profile.computed_for
    new = computed_for_facts(facts, ModelStamp(name=old.model.name, dir=model_dir or old.model.dir,
                                               fingerprint=model_fingerprint))
    changes = compare(old, new, model_dir_exists=model_dir_exists)
    if companions is not None:
        changes += companion_changes(old, *companions)
    return changes


def companion_changes(old: ComputedFor, draft: ModelStamp | None, loras: list[LoraStamp]) -> list[Change]:
    """The draft and the adapters the profile was planned with, against what their directories hold now."""
    out = []
    was = old.draft
    if was is not None and was.dir:
        if draft is None or draft.fingerprint is None:
            out.append(Change("draft", "draft", f"draft model directory {was.dir} no longer exists or "
                                                "no longer "
                              "reads as a model", "stale.draft.gone"))
        elif was.fingerprint and draft.fingerprint != was.fingerprint:
            out.append(Change("draft", "draft", f"draft model {was.name} changed: config.json or the "
                              f"safetensors headers differ (fingerprint {was.fingerprint[:12]} -> "
                              f"{draft.fingerprint[:12]})", "stale.draft.changed"))
    now = {os.path.normpath(x.dir): x for x in loras}
    for stamp in old.loras:
        fresh = now.get(os.path.normpath(stamp.dir))
        if fresh is None or fresh.fingerprint is None:
            out.append(Change("lora", f"LoRA {stamp.name}", f"LoRA adapter {stamp.dir} no longer exists or "
                              "no longer reads as an adapter", "stale.lora.gone"))
        elif stamp.fingerprint and fresh.fingerprint != stamp.fingerprint:
            out.append(Change("lora", f"LoRA {stamp.name}", f"LoRA adapter {stamp.name} changed: "
                              "adapter_config.json or the safetensors header differ (fingerprint "
                              f"{stamp.fingerprint[:12]} -> {fresh.fingerprint[:12]})", "stale.lora.changed"))
    return out


def compare(old: ComputedFor, new: ComputedFor, *, model_dir_exists: bool = True) -> list[Change]:
    return [*_model_changes(old.model, new.model, model_dir_exists), *_gpu_changes(old.gpus, new.gpus),
            *_library_changes(old.libraries, new.libraries)]


# ---------------------------------------------------------------------------------------------------------


def _model_changes(old: ModelStamp, new: ModelStamp, dir_exists: bool) -> list[Change]:
    if old.dir and not dir_exists:
        return [Change("model", "model", f"model directory {old.dir} no longer exists", "stale.model.gone")]
    if old.fingerprint and new.fingerprint and old.fingerprint != new.fingerprint:
        if old.hf_repo and not old.dir:  # planned before the download
            where = new.dir or "the model"
            return [Change("model", "model",
                           f"the profile was planned from hf:{old.hf_repo}@{old.hf_revision} (commit "
                           f"{(old.hf_commit or '?')[:12]}), but {where} holds another revision or model: "
                           "config.json or the safetensors headers differ "
                           f"(fingerprint {old.fingerprint[:12]} -> {new.fingerprint[:12]})",
                           "stale.model.other_revision")]
        if old.dir and new.dir and os.path.normpath(old.dir) != os.path.normpath(new.dir):
            return [Change("model", "model",
                           f"the profile was computed for another model: {old.name} in {old.dir}, "
                           f"not {new.dir}", "stale.model.other")]
        return [Change("model", "model",
                       f"model {old.name} changed: config.json or the safetensors headers differ "
                       f"(fingerprint {old.fingerprint[:12]} -> {new.fingerprint[:12]})",
                       "stale.model.changed")]
    return []


def _gpu_key(g: GPUStamp) -> str:
    return g.uuid or g.pci_bus_id or f"index {g.index}"


def _gpu_label(g: GPUStamp) -> str:
    return f"GPU {g.index} ({g.name})"


def _gpu_changes(old: list[GPUStamp], new: list[GPUStamp]) -> list[Change]:
    changes = []
    matched: set[int] = set()  # positions in `new`
    for was in old:
        pos = next((i for i, g in enumerate(new) if _gpu_key(g) == _gpu_key(was)), None)
        if pos is None and not was.uuid:
            # Without UUIDs a GPU is matched by its index; a different card there is "another GPU".
            pos = next((i for i, g in enumerate(new) if g.index == was.index and i not in matched), None)
        if pos is None:
            what = "used by the profile" if was.used else "present when the profile was made"
            uuid = f" [{was.uuid}]" if was.uuid else ""
            changes.append(Change("gpu", f"GPU {was.index}", f"{_gpu_label(was)}{uuid}, {what}, is gone",
                                  "stale.gpu.gone"))
            continue
        matched.add(pos)
        now = new[pos]
        if now.name != was.name:
            changes.append(Change("gpu", f"GPU {was.index}",
                                  f"GPU {was.index} is now {now.name} (profile computed for {was.name})",
                                  "stale.gpu.replaced"))
            continue
        if now.memory_total != was.memory_total:
            less = now.memory_total < was.memory_total
            changes.append(Change("vram", f"GPU {was.index}",
                                  f"{_gpu_label(now)} has {'less' if less else 'more'} VRAM: "
                                  f"{now.memory_total / GIB:.1f} GiB, profile computed for "
                                  f"{was.memory_total / GIB:.1f} GiB", "stale.gpu.vram"))
        if was.used and was.cuda_index is not None and now.cuda_index is not None \
                and now.cuda_index != was.cuda_index:
            changes.append(Change("gpu", f"GPU {was.index}",
                                  f"{_gpu_label(now)} is now CUDA device {now.cuda_index} "
                                  f"(was {was.cuda_index}): "
                                  "the split would land on another card (check CUDA_VISIBLE_DEVICES and "
                                  "CUDA_DEVICE_ORDER)", "stale.gpu.cuda_order"))
    for i, g in enumerate(new):
        if i not in matched:
            changes.append(Change("gpu", f"GPU {g.index}",
                                  f"new {_gpu_label(g)} with {g.memory_total / GIB:.1f} GiB is present; "
                                  "the profile was computed without it", "stale.gpu.new"))
    return changes


def _library_changes(old: dict[str, LibraryStamp], new: dict[str, LibraryStamp]) -> list[Change]:
    changes = []
    for name in sorted(set(old) | set(new)):
        was = old.get(name) or LibraryStamp(installed=False)
        now = new.get(name) or LibraryStamp(installed=False)
        changes.extend(Change("library", name, m, code) for code, m in _one_library(name, was, now))
    return changes


def _one_library(name: str, was: LibraryStamp, now: LibraryStamp) -> list[tuple[str, str]]:
    if was.installed and not now.installed:
        return [("stale.library.removed", f"{name} {was.version or ''} was removed".replace("  ", " "))]
    if now.installed and not was.installed:
        return [("stale.library.installed",
                 f"{name} {now.version or ''} is now installed (it was not when the profile was made)"
                 .replace("  ", " "))]
    if not now.installed:
        return []
    out = []
    if was.version != now.version and _public(was.version) != _public(now.version):
        out.append(("stale.library.version",
                    f"{name} {_direction(was.version, now.version)} {was.version} -> {now.version}"))
    elif was.version != now.version or (was.local_tag or "") != (now.local_tag or ""):
        out.append(("stale.library.build",
                    f"{name} {_public(now.version)} build tag changed: {_tag(was)} -> {_tag(now)}"))
    tried = was.import_status != "not-tried" and now.import_status != "not-tried"
    if tried and was.import_status == "ok" and now.import_status != "ok":
        detail = f": {now.import_error}" if now.import_error else ""
        out.append(("stale.library.import_fails",
                    f"{name} {now.version} now fails to import ({now.import_status}){detail}"))
    elif tried and was.import_status != "ok" and now.import_status == "ok":
        out.append(("stale.library.imports",
                    f"{name} {now.version} now imports (it failed when the profile was made)"))
    if tried and now.import_status == "ok":
        if not was.ops_error and now.ops_error:
            out.append(("stale.library.ops_fail",
                        f"{name} {now.version} compiled ops no longer load: {now.ops_error}"))
        elif was.ops_error and not now.ops_error:
            out.append(("stale.library.ops_load",
                        f"{name} {now.version} compiled ops now load (they did not when the profile "
                        "was made)"))
    if was.ext and now.ext and was.ext != now.ext:
        out.append(("stale.library.extension", f"{name} extension changed: {was.ext} -> {now.ext}"))
    if tried:
        gone = sorted(p for p, ok in was.import_paths.items() if ok and now.import_paths.get(p) is False)
        came = sorted(p for p, ok in now.import_paths.items() if ok and was.import_paths.get(p) is False)
        if gone or came:
            parts = [f"{p} no longer resolves" for p in gone] + [f"{p} now resolves" for p in came]
            out.append(("stale.library.import_paths", f"{name} import paths moved: " + "; ".join(parts)))
    return out


def _direction(old: str | None, new: str | None) -> str:
    try:
        a, b = Version(old or "0"), Version(new or "0")
    except InvalidVersion:
        return "changed"
    return "upgraded" if b > a else "downgraded" if b < a else "rebuilt"


def _public(version: str | None) -> str | None:
    """The version without its local build tag ("2.4.1+cu121" -> "2.4.1")."""
    return version.split("+", 1)[0] if version else version


def _tag(lib: LibraryStamp) -> str:
    tag = lib.local_tag or (lib.version.partition("+")[2] if lib.version else "")
    return f"+{tag}" if tag else "(no tag)"
