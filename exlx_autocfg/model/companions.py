"""What loads beside a model, read from where the user names it: a draft model (a directory, a catalog
reference or `hf:ORG/REPO@REV`, like the model) with its tokenizer facts, and LoRA adapter directories
given as `DIR[:SCALE]`.

The planner takes these inputs already read (`DraftInput`, `LoraInput`) or reads the references itself, as
it does for the model; reading happens once, so a Hub quant table plans every branch against one read.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from exlx_autocfg.errors import OptionError
from exlx_autocfg.model.lora import LoraAdapter, read_adapter
from exlx_autocfg.model.spec import ModelSpec
from exlx_autocfg.model.tokenizer import TokenizerInfo, from_config, read_tokenizer_info


@dataclass(frozen=True)
class DraftInput:
    spec: ModelSpec
    tokenizer: TokenizerInfo | None  # None: nothing known (a Hub draft: no tokenizer files are read)
    reference: str  # what the user gave (directory, catalog reference, hf:...)


@dataclass(frozen=True)
class LoraInput:
    adapter: LoraAdapter
    scale: float
    reference: str  # the directory as given


def reference_of(spec: ModelSpec) -> str:
    """A reference `load_model_spec` reads back to the same model (for re-planning from a profile)."""
    if spec.path:
        return os.path.abspath(spec.path)
    if spec.hub is not None:
        return spec.hub.reference
    return spec.name


def tokenizer_of(spec: ModelSpec) -> TokenizerInfo | None:
    """The tokenizer facts of a model: its directory's tokenizer.json / tokenizer.model and special ids, a
    catalog model's published config.json ids; None for a Hub model (its tokenizer is not read)."""
    if spec.path:
        return read_tokenizer_info(spec.path)
    if spec.catalog_id:
        from exlx_autocfg.model.catalog import catalog_config

        return from_config(catalog_config(spec.catalog_id))
    return None


def read_draft(ref: str | os.PathLike[str] | ModelSpec | DraftInput) -> DraftInput:
    """A draft model from a reference (what `load_model_spec` reads) or a spec already read. Raises
    ModelSpecError / HubError / SpecialFileError like the model's reading, OptionError for a wrong type."""
    if isinstance(ref, DraftInput):
        return ref
    if isinstance(ref, ModelSpec):
        return DraftInput(ref, tokenizer_of(ref), reference_of(ref))
    if not isinstance(ref, (str, os.PathLike)) or not os.fspath(ref).strip():
        raise OptionError("draft", ref, "must be a draft model directory, a catalog reference or hf:ORG/REPO")
    from exlx_autocfg.model.load import load_model_spec

    spec = load_model_spec(ref)
    return DraftInput(spec, tokenizer_of(spec), reference_of(spec) if spec.path else os.fspath(ref))


def parse_lora_option(text: str) -> tuple[str, float]:
    """`DIR[:SCALE]` -> (DIR, SCALE); the part after the last colon is a scale only when it is a number, so a
    path with colons (C:\\loras\\x) stays a path. SCALE defaults to 1.0 (TabbyAPI's `scaling`)."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
        except ValueError:
            return text, 1.0
        if not math.isfinite(scale) or scale < 0:
            raise OptionError("lora", text, f"scale {tail} must be a finite number >= 0", flag="--lora")
        return head, scale
    return text, 1.0


def read_lora(ref: Any) -> LoraInput:
    """An adapter from `DIR[:SCALE]`, a (DIR, SCALE) pair, a {"path", "scale"} mapping (a profile's
    request) or a LoraInput. Raises AdapterError (no adapter_config.json, no safetensors, a bad rank) or
    OptionError."""
    if isinstance(ref, LoraInput):
        return ref
    if isinstance(ref, dict):
        path, scale = ref.get("path"), ref.get("scale", 1.0)
    elif isinstance(ref, (list, tuple)) and len(ref) == 2:
        path, scale = ref
    elif isinstance(ref, (str, os.PathLike)):
        path, scale = parse_lora_option(os.fspath(ref))
    else:
        raise OptionError("loras", ref, "each adapter must be DIR[:SCALE] or (DIR, SCALE)")
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path).strip():
        raise OptionError("loras", ref, "must name an adapter directory", flag="--lora")
    number = isinstance(scale, (int, float)) and not isinstance(scale, bool)
    if not number or not math.isfinite(scale) or scale < 0:
        raise OptionError("loras", ref, "the scale must be a finite number >= 0", flag="--lora")
    return LoraInput(read_adapter(path), float(scale), os.path.abspath(os.fspath(path)))
