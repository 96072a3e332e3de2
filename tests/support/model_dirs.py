"""Sparse model directories of real architectures, for tests of everything that reads a model.

`make_model_dir(tmp_path, "yi-34b", bpw=4.0)` writes the published config.json of that model (from the
catalog, profiles/models.toml) plus `quantization_config` as exllamav2's converter writes it, and
safetensors files whose headers carry the FULL-SIZE tensor shapes (EXL2 q_weight/q_scale/... or FP16)
while the data region is a hole: a 34B model costs a few hundred kB of disk. The real exllamav2 0.3.2
`ExLlamaV2Config(dir)` + `ExLlamaV2(config)` accept these directories (tests/test_modelspec_exllamav2.py).

arch: a catalog id or alias ("llama3-8b", "yi-34b", "nous-capybara-34b", "gemma2-9b", "phi3-mini",
"mixtral-8x7b", "command-r-35b", ...) or one of the tiny test architectures in TINY_CONFIGS.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from exlx_autocfg.model.catalog import catalog_config, resolve_catalog_id
from exlx_autocfg.model.config import parse_config
from exlx_autocfg.model.layout import DEFAULT_HEAD_BITS, checkpoint_tensors, tensor_nbytes
from exlx_autocfg.model.safetensors import write_header_only
from exlx_autocfg.model.spec import ModelSpec

# Small but real-shaped configs (every dimension a multiple of 32, GQA where the family has it) for
# tests that must run exllamav2 code paths quickly.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny-llama": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "vocab_size": 1024,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
    },
    "tiny-qwen3": {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": 256,
        "intermediate_size": 768,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 64,
        "num_hidden_layers": 2,
        "vocab_size": 1024,
        "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
    },
    "tiny-granite": {
        "architectures": ["GraniteForCausalLM"],
        "model_type": "granite",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "num_hidden_layers": 2,
        "vocab_size": 1024,
        "max_position_embeddings": 4096,
        "embedding_multiplier": 12.0,
        "residual_multiplier": 0.22,
        "logits_scaling": 8.0,
        "attention_multiplier": 0.015625,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
    },
    "tiny-gemma2": {
        "architectures": ["Gemma2ForCausalLM"],
        "model_type": "gemma2",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 128,
        "num_hidden_layers": 2,
        "vocab_size": 1024,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "attn_logit_softcapping": 50.0,
        "final_logit_softcapping": 30.0,
        "query_pre_attn_scalar": 128,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "torch_dtype": "float32",
    },
    "tiny-phi3": {
        "architectures": ["Phi3ForCausalLM"],
        "model_type": "phi3",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": 1056,
        "max_position_embeddings": 4096,
        "original_max_position_embeddings": 4096,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "sliding_window": 2047,
        "bos_token_id": 1,
        "eos_token_id": 32000,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    },
    "tiny-mixtral": {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "vocab_size": 1024,
        "max_position_embeddings": 4096,
        "num_local_experts": 4,
        "num_experts_per_tok": 2,
        "rms_norm_eps": 1e-05,
        "rope_theta": 1000000.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    },
    "tiny-cohere": {
        "architectures": ["CohereForCausalLM"],
        "model_type": "cohere",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "num_hidden_layers": 2,
        "vocab_size": 1024,
        "max_position_embeddings": 8192,
        "layer_norm_eps": 1e-05,
        "logit_scale": 0.0625,
        "rope_theta": 8000000.0,
        "use_qk_norm": False,
        "bos_token_id": 5,
        "eos_token_id": 255001,
        "torch_dtype": "float16",
    },
}

EXL2_CALIBRATION = {"rows": 100, "length": 2048, "dataset": "(default)"}  # convert_exl2.py defaults


def model_config(arch: str) -> dict[str, Any]:
    """The config.json dict for a tiny arch or a catalog model (a fresh copy)."""
    if arch in TINY_CONFIGS:
        return json.loads(json.dumps(TINY_CONFIGS[arch]))
    model_id = resolve_catalog_id(arch)
    if model_id is None:
        raise KeyError(f"unknown arch {arch!r}: not a tiny config and not in the catalog")
    return catalog_config(model_id)


def _shards(tensors: list[tuple[str, str, tuple[int, ...]]], count: int) -> list[list]:
    """Split in file order into `count` runs of about equal bytes (the converter fills shards in order)."""
    total = sum(tensor_nbytes(dt, s) for _, dt, s in tensors)
    target = math.ceil(total / count)
    shards: list[list] = [[]]
    size = 0
    for t in tensors:
        nbytes = tensor_nbytes(t[1], t[2])
        if size + nbytes > target and shards[-1] and len(shards) < count:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += nbytes
    return shards


def make_model_dir(
    root: Path,
    arch: str = "llama3-8b",
    *,
    quant: str = "exl2",
    bpw: float = 4.0,
    name: str | None = None,
    shards: int = 1,
    head_bits: int = DEFAULT_HEAD_BITS,
    **config_overrides: Any,
) -> Path:
    """Write a sparse model directory under `root` and return its path.

    quant: "exl2" (what exllamav2's converter writes: output.safetensors / output-0000N-of-0000M) or
    "fp16" (a Hugging Face export: model.safetensors / model-0000N-of-0000M). shards > 1 also writes
    model.safetensors.index.json. config_overrides replace config.json keys (None deletes the key).
    """
    config = model_config(arch)
    for key, value in config_overrides.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    if quant == "exl2":
        config["quantization_config"] = {
            "quant_method": "exl2",
            "version": "0.3.2",
            "bits": float(bpw),
            "head_bits": head_bits,
            "calibration": dict(EXL2_CALIBRATION),
        }
    fields = parse_config(config, where=f"make_model_dir({arch})")
    dims = ModelSpec(name=arch, path=None, source="directory", **fields)
    tensors = checkpoint_tensors(
        dims,
        dims.rules,
        quant=quant,
        bpw=bpw,
        head_bits=head_bits,
        torch_dtype=config.get("torch_dtype", "float16"),
    )

    directory = Path(root) / (name or f"{arch}-{quant}" + (f"-{bpw:g}bpw" if quant == "exl2" else ""))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=4))
    stem = "output" if quant == "exl2" else "model"
    groups = _shards(tensors, shards) if shards > 1 else [tensors]
    weight_map: dict[str, str] = {}
    total = 0
    for i, group in enumerate(groups, start=1):
        file = (
            f"{stem}.safetensors" if len(groups) == 1 else f"{stem}-{i:05d}-of-{len(groups):05d}.safetensors"
        )
        write_header_only(directory / file, group, {"format": "pt"})
        for tname, dt, shape in group:
            weight_map[tname] = file
            total += tensor_nbytes(dt, shape)
    if len(groups) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return directory
