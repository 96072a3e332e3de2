"""PEFT LoRA adapter directories for tests: adapter_config.json and an adapter_model.safetensors written with
the header only (the data region a hole), in the PEFT layout (`base_model.model.` + the module key), for the
model in a (sparse) model directory."""

from __future__ import annotations

import json
from pathlib import Path

from exlx_autocfg.model.safetensors import write_header_only

PREFIX = "base_model.model."
ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_adapter(
    root: Path,
    base_dir: Path,
    *,
    name: str = "adapter",
    r: int = 8,
    modules: tuple[str, ...] = ALL,
    dtype: str = "BF16",
    config: dict | None = None,
    extra: list[tuple[str, str, tuple[int, ...]]] = (),
    drop: tuple[str, ...] = (),
    layers: int | None = None,
) -> Path:
    """A PEFT LoRA directory for the model in base_dir: lora_A (r, in) and lora_B (out, r) per module."""
    cfg = json.loads((base_dir / "config.json").read_text())
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim", h // heads)
    dims = {
        "q_proj": ("self_attn", h, heads * hd),
        "k_proj": ("self_attn", h, kv * hd),
        "v_proj": ("self_attn", h, kv * hd),
        "o_proj": ("self_attn", heads * hd, h),
        "gate_proj": ("mlp", h, inter),
        "up_proj": ("mlp", h, inter),
        "down_proj": ("mlp", inter, h),
    }
    tensors = []
    for layer in range(layers if layers is not None else cfg["num_hidden_layers"]):
        for m in modules:
            part, i, o = dims[m]
            key = f"{PREFIX}model.layers.{layer}.{part}.{m}"
            tensors += [(f"{key}.lora_A.weight", dtype, (r, i)), (f"{key}.lora_B.weight", dtype, (o, r))]
    tensors = [t for t in tensors if not any(t[0].endswith(d) for d in drop)] + list(extra)
    d = root / name
    d.mkdir(parents=True)
    conf = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": 2 * r,
        "target_modules": list(modules),
        "bias": "none",
        "base_model_name_or_path": "some/base",
        "task_type": "CAUSAL_LM",
    }
    conf.update(config or {})
    (d / "adapter_config.json").write_text(json.dumps(conf))
    write_header_only(d / "adapter_model.safetensors", tensors, {"format": "pt"})
    return d
