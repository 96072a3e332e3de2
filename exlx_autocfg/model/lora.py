"""A LoRA adapter directory, read the way exllamav2 0.3.2's `ExLlamaV2Lora.from_directory` finds it:
`adapter_config.json` plus `adapter_model.bin` (preferred by exllamav2 when both exist) or
`adapter_model.safetensors`. Only the safetensors header is read, never the tensor data, so an adapter of
any size costs a few kB; a `.bin` adapter (a pickle) cannot be read that way and is refused.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exlx_autocfg.errors import InputError, ModelSpecError
from exlx_autocfg.model.config import read_json_file
from exlx_autocfg.model.safetensors import read_header

CONFIG_FILE = "adapter_config.json"
WEIGHTS_BIN = "adapter_model.bin"
WEIGHTS_ST = "adapter_model.safetensors"


class AdapterError(InputError):
    """An adapter directory that cannot be read (one line)."""

    code = "error.adapter"


@dataclass(frozen=True)
class AdapterTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class LoraAdapter:
    path: str
    name: str
    r: int
    lora_alpha: float
    use_rslora: bool
    fan_in_fan_out: bool
    use_dora: bool
    peft_type: str | None
    base_model: str | None
    target_modules: tuple[str, ...]
    rank_pattern: dict[str, Any]
    alpha_pattern: dict[str, Any]
    tensors: tuple[AdapterTensor, ...]
    weights_file: str
    fingerprint: str  # sha256 over adapter_config.json and the safetensors header, for staleness
    config: dict[str, Any] = field(default_factory=dict)


def _number(config: dict[str, Any], key: str, where: Path, *, kind: type) -> Any:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AdapterError(f"{where}: {key} must be a number, got {value!r}")
    if kind is int and (not float(value).is_integer() or value < 1):
        raise AdapterError(f"{where}: {key} must be a positive integer, got {value!r}")
    return kind(value)


def read_adapter(directory: str | Path) -> LoraAdapter:
    """Read a LoRA adapter directory (config and safetensors header). One-line AdapterError otherwise."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise AdapterError(f"{directory}: no such adapter directory")
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise AdapterError(f"{directory}: no {CONFIG_FILE} (not a PEFT LoRA adapter directory)")
    try:
        raw, config = read_json_file(config_path)
    except ModelSpecError as exc:
        raise AdapterError(exc.message) from None
    if not isinstance(config, dict):
        raise AdapterError(f"{config_path}: not a JSON object")
    if (directory / WEIGHTS_BIN).exists():
        raise AdapterError(
            f"{directory / WEIGHTS_BIN}: exllamav2 loads the pickled .bin first, whose shapes cannot be read "
            f"without unpickling it; convert the adapter to {WEIGHTS_ST}"
        )
    weights = directory / WEIGHTS_ST
    if not weights.is_file():
        raise AdapterError(f"{directory}: no {WEIGHTS_ST} (exllamav2: 'No LoRA found')")
    header = read_header(weights)
    r = _number(config, "r", config_path, kind=int)
    alpha = _number(config, "lora_alpha", config_path, kind=float)
    targets = config.get("target_modules") or ()
    if isinstance(targets, str):
        targets = (targets,)
    digest = hashlib.sha256(raw)
    digest.update(header.header_bytes)
    return LoraAdapter(
        path=str(directory),
        name=directory.name,
        r=r,
        lora_alpha=alpha,
        use_rslora=bool(config.get("use_rslora", False)),
        fan_in_fan_out=bool(config.get("fan_in_fan_out", False)),
        use_dora=bool(config.get("use_dora", False)),
        peft_type=config.get("peft_type") if isinstance(config.get("peft_type"), str) else None,
        base_model=config.get("base_model_name_or_path")
        if isinstance(config.get("base_model_name_or_path"), str)
        else None,
        target_modules=tuple(str(t) for t in targets) if isinstance(targets, (list, tuple)) else (),
        rank_pattern=dict(config.get("rank_pattern") or {}),
        alpha_pattern=dict(config.get("alpha_pattern") or {}),
        tensors=tuple(AdapterTensor(t.name, t.dtype, t.shape) for t in header.tensors.values()),
        weights_file=WEIGHTS_ST,
        fingerprint=digest.hexdigest(),
        config=config,
    )
