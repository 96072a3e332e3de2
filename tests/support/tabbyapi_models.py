"""TabbyAPI's own config models for the sections exlx-autocfg writes, to validate emitted YAML against.

The fields below are transcribed as data from theroyallab/tabbyAPI common/config_models.py at 79126f9 (the
exl2-checkpoint branch): name, type, default and pydantic constraints, with the line each was read from.
`models()` builds pydantic models with exactly those fields, the way TabbyAPI's `TabbyConfigModel` parses
config.yml (`BaseConfigModel` is a plain `BaseModel`: unknown keys are ignored, so `unknown_keys` is checked
separately: a key TabbyAPI does not know would be silently dropped).

When the real file is at hand (`TABBYAPI_CONFIG_MODELS=/path/to/config_models.py`, e.g. `git show
79126f9:common/config_models.py` from a TabbyAPI clone), `real_models()` imports it (it needs only pydantic)
and the tests validate against TabbyAPI's classes themselves and check this transcription against them.
"""

# ruff: noqa: UP007, UP045 -- spelled as TabbyAPI spells them (Optional/Union), the better to compare
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, constr, create_model

CACHE_SIZES = Literal["FP16", "Q8", "Q6", "Q4"]  # L12
CACHE_TYPE = Union[CACHE_SIZES, constr(pattern=r"^[2-8]\s*,\s*[2-8]$")]  # L13

# section -> (model name, {field: (type, default, constraints, source line)})
FIELDS: dict[str, tuple[str, dict[str, tuple[Any, Any, dict[str, Any], int]]]] = {
    "model": ("ModelConfig", {
        "model_dir": (str, "models", {}, 121),
        "inline_model_loading": (Optional[bool], False, {}, 128),
        "use_dummy_models": (Optional[bool], False, {}, 137),
        "dummy_model_names": (list[str], ["gpt-3.5-turbo"], {}, 145),
        "model_name": (Optional[str], None, {}, 153),
        "use_as_default": (list[str], [], {}, 161),
        "backend": (Optional[str], None, {}, 170),
        "max_seq_len": (Optional[int], None, {"ge": -1}, 177),
        "cache_size": (Optional[int], None, {"multiple_of": 256, "gt": 0}, 184),
        "cache_mode": (Optional[CACHE_TYPE], "FP16", {}, 194),
        "tensor_parallel": (Optional[bool], False, {}, 203),
        "tensor_parallel_backend": (Optional[str], "native", {}, 211),
        "gpu_split_auto": (Optional[bool], True, {}, 220),
        "autosplit_reserve": (list[float], [96], {}, 227),
        "gpu_split": (list[float], [], {}, 234),
        "rope_scale": (Optional[float], 1.0, {}, 241),
        "rope_alpha": (Optional[float | Literal["auto"]], None, {}, 250),
        "chunk_size": (Optional[int], 2048, {"gt": 0}, 259),
        "output_chunking": (Optional[bool], True, {}, 269),
        "max_batch_size": (Optional[int], None, {"ge": 1}, 278),
        "prompt_template": (Optional[str], None, {}, 289),
        "vision": (Optional[bool], False, {}, 299),
        "force_enable_thinking": (bool, False, {}, 303),
        "reasoning": (bool, False, {}, 312),
        "reasoning_start_token": (str, "<think>", {}, 319),
        "reasoning_end_token": (str, "</think>", {}, 323),
        "reasoning_suppress_header": (str, None, {}, 327),
        "tool_format": (Optional[str], None, {}, 334),
    }),
    "draft_model": ("DraftModelConfig", {
        "draft_mode": (Optional[Literal["model", "disabled", "mtp", "ngram"]], "model", {}, 352),
        "draft_model_dir": (Optional[str], "models", {}, 361),
        "draft_model_name": (Optional[str], None, {}, 365),
        "draft_rope_scale": (Optional[float], 1.0, {}, 371),
        "draft_rope_alpha": (Optional[float], None, {}, 379),
        "draft_cache_mode": (Optional[CACHE_SIZES], "FP16", {}, 388),
        "draft_gpu_split": (list[float], [], {}, 395),
        "draft_num_tokens": (Optional[int], None, {}, 402),
        "ngram_match_min": (Optional[int], 2, {}, 411),
    }),
    "lora": ("LoraConfig", {
        "lora_dir": (Optional[str], "loras", {}, 448),
        "loras": (None, None, {}, 451),  # Optional[List[LoraInstanceModel]]: built in models()
    }),
}
LORA_INSTANCE: dict[str, tuple[Any, Any, dict[str, Any], int]] = {  # L437-441
    "name": (Optional[str], None, {}, 440),
    "scaling": (float, 1.0, {"ge": 0}, 441),
}


def _model(name: str, fields: dict[str, tuple[Any, Any, dict[str, Any], int]], **ns: Any) -> type[BaseModel]:
    spec = {k: (tp, Field(default, **constraints)) for k, (tp, default, constraints, _) in fields.items()}
    # TabbyAPI's ModelConfig sets protected_namespaces=() (L343) for its model_* fields
    return create_model(name, __config__=ConfigDict(protected_namespaces=()), **spec, **ns)


def models() -> dict[str, type[BaseModel]]:
    """section -> a pydantic model with TabbyAPI's fields for it."""
    lora_instance = _model("LoraInstanceModel", LORA_INSTANCE)
    out = {}
    for section, (name, fields) in FIELDS.items():
        fixed = {k: (v[0] if k != "loras" else Optional[list[lora_instance]], *v[1:])
                 for k, v in fields.items()}
        out[section] = _model(name, fixed)
    return out


def real_models() -> dict[str, type[BaseModel]] | None:
    """TabbyAPI's own classes from $TABBYAPI_CONFIG_MODELS, or None when it is not set."""
    path = os.environ.get("TABBYAPI_CONFIG_MODELS")
    if not path or not Path(path).is_file():
        return None
    spec = importlib.util.spec_from_file_location("tabbyapi_config_models", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {"model": module.ModelConfig, "draft_model": module.DraftModelConfig, "lora": module.LoraConfig}


def unknown_keys(section: str, values: dict[str, Any]) -> list[str]:
    """Keys TabbyAPI's model for `section` does not have (it would ignore them silently)."""
    return sorted(set(values) - set(FIELDS[section][1]))


def validate(doc: dict[str, Any], classes: dict[str, type[BaseModel]] | None = None) -> dict[str, BaseModel]:
    """Each section of an emitted config through TabbyAPI's model for it (pydantic raises on a bad value);
    returns the parsed sections."""
    classes = classes or models()
    out = {}
    for section, values in doc.items():
        assert section in classes, f"TabbyAPI has no section {section!r}"
        assert not unknown_keys(section, values), unknown_keys(section, values)
        out[section] = classes[section].model_validate(values)
    return out
