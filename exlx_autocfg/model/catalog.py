"""The model catalog (`profiles/models.toml`): models planned before they are downloaded, their tensors laid
out as exllamav2's converter writes them (`model.layout`) at the bits per weight asked for.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

from exlx_autocfg.data import load_data
from exlx_autocfg.model.config import parse_config
from exlx_autocfg.model.layout import DEFAULT_HEAD_BITS, checkpoint_tensors, tensor_nbytes
from exlx_autocfg.model.spec import ModelSpec, TensorInfo

DEFAULT_CATALOG_BPW = 4.0

def catalog() -> dict[str, dict[str, Any]]:
    return load_data("models.toml")["models"]


@functools.cache
def _alias_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for model_id, entry in catalog().items():
        for name in (
            model_id,
            *entry.get("aliases", []),
            entry.get("hf_repo", ""),
            entry.get("hf_repo", "").rsplit("/", 1)[-1],
        ):
            if name:
                table.setdefault(name.lower(), model_id)
    return table


def resolve_catalog_id(name: str) -> str | None:
    """Catalog id for an id, alias, HF repo id or repo name (case-insensitive); None if unknown."""
    return _alias_table().get(name.strip().lower())


def catalog_config(model_id: str) -> dict[str, Any]:
    """The config.json of a catalog model (as published), for fixtures and for the catalog spec itself."""
    return json.loads(json.dumps(catalog()[model_id]["config"]))


def catalog_preprocessor(model_id: str) -> dict[str, Any] | None:
    """The preprocessor_config.json of a catalog model (as published), None for a text-only model."""
    prep = catalog()[model_id].get("preprocessor")
    return json.loads(json.dumps(prep)) if prep is not None else None


def _torch_dtype(config: dict[str, Any]) -> str:
    """torch_dtype of the checkpoint (top level, else text_config as in Gemma 3 / Mistral 3 configs)."""
    dtype = config.get("torch_dtype") or (config.get("text_config") or {}).get("torch_dtype")
    return dtype if isinstance(dtype, str) else "float16"


@functools.cache
def catalog_spec(model_id: str, bpw: float | None) -> ModelSpec:
    entry = catalog()[model_id]
    config = catalog_config(model_id)
    preprocessor = catalog_preprocessor(model_id)
    fields = parse_config(
        config,
        where=f"catalog {model_id} config",
        preprocessor=preprocessor,
        preprocessor_where=f"catalog {model_id} preprocessor",
    )
    quant = "fp16" if bpw is None else "exl2"
    if bpw is not None:
        fields.update(quant_method="exl2", bits_per_weight=bpw, head_bits=DEFAULT_HEAD_BITS)
    probe = ModelSpec(name=model_id, path=None, source="catalog", **fields)
    layout = checkpoint_tensors(probe, quant=quant, bpw=bpw or 16.0, torch_dtype=_torch_dtype(config))
    tensors = tuple(TensorInfo(n, dt, shape, tensor_nbytes(dt, shape)) for n, dt, shape in layout)
    canonical = json.dumps(
        {"catalog": model_id, "config": config, "preprocessor": preprocessor, "bpw": bpw}, sort_keys=True
    )
    label = f"{model_id}@{bpw:g}bpw" if bpw is not None else f"{model_id}@fp16"
    return ModelSpec(
        name=label,
        path=None,
        source="catalog",
        tensors=tensors,
        fingerprint=hashlib.sha256(canonical.encode()).hexdigest(),
        catalog_id=model_id,
        hf_repo=entry.get("hf_repo"),
        **fields,
    )
