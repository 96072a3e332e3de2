"""Sparse model directories of real architectures, for tests of everything that reads a model.

`make_model_dir(tmp_path, "yi-34b", bpw=4.0)` writes the published config.json of that model (from the
catalog, profiles/models.toml, or FIXTURE_CONFIGS for architectures the catalog has no model of) plus
`quantization_config` as exllamav2's converter writes it, a preprocessor_config.json for multimodal models,
and safetensors files whose headers carry the FULL-SIZE tensor shapes while the data region is a hole: a 34B
model costs a few hundred kB of disk.

Which tensors, and their shapes, come from the real exllamav2 0.3.2 wheel (tests/support/real_layout.py: its
module graph, its converter's QParams tables and group arithmetic), never from the code under test
(model/layout.py, model/graph.py), so comparing our accounting with exllamav2's on these directories
compares two independent things.

arch: a catalog id or alias ("llama3-8b", "gemma3-27b", "qwen3-30b-a3b", ...), an entry of FIXTURE_CONFIGS
("gpt2", "dbrx", "pixtral-12b", ...) or one of the tiny test architectures in TINY_CONFIGS.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from exlx_autocfg.model.catalog import catalog, catalog_config, catalog_preprocessor, resolve_catalog_id
from exlx_autocfg.model.layout import DEFAULT_HEAD_BITS, tensor_nbytes
from exlx_autocfg.model.safetensors import write_header_only
from tests.support import real_layout
from tests.support.vision_configs import TINY_VISION

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


_MEAN_STD = {
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
}

# Full-size configs of architectures the catalog has no model of, for the real-wheel comparisons. Shaped
# like the published config.json of the model named in each comment (the dimensions are what matter: these
# directories are compared with exllamav2's accounting of the same directory, not with the model itself).
FIXTURE_CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2": {  # openai-community/gpt2
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_embd": 768,
        "n_head": 12,
        "n_layer": 12,
        "n_positions": 1024,
        "n_ctx": 1024,
        "vocab_size": 50257,
        "layer_norm_epsilon": 1e-05,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "torch_dtype": "float32",
    },
    "starcoder": {  # bigcode/starcoderbase (GPTBigCode, MQA, learned positions)
        "architectures": ["GPTBigCodeForCausalLM"],
        "model_type": "gpt_bigcode",
        "n_embd": 6144,
        "n_head": 48,
        "n_layer": 40,
        "n_inner": 24576,
        "n_positions": 8192,
        "vocab_size": 49152,
        "multi_query": True,
        "layer_norm_epsilon": 1e-05,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "torch_dtype": "float32",
    },
    "starcoder2-15b": {  # bigcode/starcoder2-15b, with the layer_norm_epsilon key exllamav2 0.3.2 reads
        "architectures": ["Starcoder2ForCausalLM"],
        "model_type": "starcoder2",
        "hidden_size": 6144,
        "num_attention_heads": 48,
        "num_key_value_heads": 4,
        "num_hidden_layers": 40,
        "intermediate_size": 24576,
        "vocab_size": 49152,
        "max_position_embeddings": 16384,
        "rope_theta": 100000,
        "norm_epsilon": 1e-05,
        "layer_norm_epsilon": 1e-05,
        "sliding_window": 4096,
        "use_bias": True,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "torch_dtype": "bfloat16",
    },
    "internlm2-7b": {  # internlm/internlm2-chat-7b (fused wqkv, alternate packing)
        "architectures": ["InternLM2ForCausalLM"],
        "model_type": "internlm2",
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "num_hidden_layers": 32,
        "intermediate_size": 14336,
        "vocab_size": 92544,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"type": "dynamic", "factor": 2.0},
        "bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    },
    "dbrx": {  # databricks/dbrx-instruct (16 experts, fused experts and Wqkv in FP16)
        "architectures": ["DbrxForCausalLM"],
        "model_type": "dbrx",
        "d_model": 6144,
        "n_heads": 48,
        "n_layers": 40,
        "max_seq_len": 32768,
        "vocab_size": 100352,
        "attn_config": {"kv_n_heads": 8, "rope_theta": 500000, "clip_qkv": 8},
        "ffn_config": {"ffn_hidden_size": 10752, "moe_num_experts": 16, "moe_top_k": 4},
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    },
    "gemmoe": {  # Crystalcareai/GemMoE-Beta-1 (Gemma 7B with 8 experts)
        "architectures": ["GemmoeForCausalLM"],
        "model_type": "gemmoe",
        "hidden_size": 3072,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "head_dim": 256,
        "num_hidden_layers": 28,
        "intermediate_size": 24576,
        "vocab_size": 256000,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-06,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "rope_theta": 10000.0,
        "torch_dtype": "bfloat16",
    },
    "gemma-7b": {  # google/gemma-7b
        "architectures": ["GemmaForCausalLM"],
        "model_type": "gemma",
        "hidden_size": 3072,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "head_dim": 256,
        "num_hidden_layers": 28,
        "intermediate_size": 24576,
        "vocab_size": 256000,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-06,
        "rope_theta": 10000.0,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "torch_dtype": "bfloat16",
    },
    "orion-14b": {  # OrionStarAI/Orion-14B-Base (LayerNorm)
        "architectures": ["OrionForCausalLM"],
        "model_type": "orion",
        "hidden_size": 5120,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
        "num_hidden_layers": 40,
        "intermediate_size": 15360,
        "vocab_size": 84608,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    },
    "index-1.9b": {  # IndexTeam/Index-1.9B-Chat (vocab 65029: a padded head)
        "architectures": ["IndexForCausalLM"],
        "model_type": "index",
        "hidden_size": 2048,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "num_hidden_layers": 36,
        "intermediate_size": 5888,
        "vocab_size": 65029,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-06,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    },
    "minicpm-2b": {  # openbmb/MiniCPM-2B-sft-bf16 (tied head, muP scales)
        "architectures": ["MiniCPMForCausalLM"],
        "model_type": "minicpm",
        "hidden_size": 2304,
        "num_attention_heads": 36,
        "num_key_value_heads": 36,
        "num_hidden_layers": 40,
        "intermediate_size": 5760,
        "vocab_size": 122753,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-05,
        "scale_emb": 12,
        "dim_model_base": 256,
        "scale_depth": 1.4,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
    },
    "granite-3-8b": {  # ibm-granite/granite-3.0-8b-instruct
        "architectures": ["GraniteForCausalLM"],
        "model_type": "granite",
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "num_hidden_layers": 40,
        "intermediate_size": 12800,
        "vocab_size": 49155,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "embedding_multiplier": 12.0,
        "residual_multiplier": 0.22,
        "logits_scaling": 16.0,
        "attention_multiplier": 0.0078125,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
    },
    "yi-6b": {  # 01-ai/Yi-6B as first published (YiForCausalLM, ln1/ln2)
        "architectures": ["YiForCausalLM"],
        "model_type": "Yi",
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "num_hidden_layers": 32,
        "intermediate_size": 11008,
        "vocab_size": 64000,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-05,
        "rope_theta": 5000000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    },
    "pixtral-12b": {  # mistral-community/pixtral-12b (Llava + Pixtral tower)
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "text_config": {
            "model_type": "mistral",
            "hidden_size": 5120,
            "head_dim": 128,
            "intermediate_size": 14336,
            "max_position_embeddings": 1024000,
            "num_attention_heads": 32,
            "num_hidden_layers": 40,
            "num_key_value_heads": 8,
            "rms_norm_eps": 1e-05,
            "rope_theta": 1000000000.0,
            "vocab_size": 131072,
        },
        "vision_config": {
            "model_type": "pixtral",
            "hidden_size": 1024,
            "head_dim": 64,
            "image_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "num_hidden_layers": 24,
            "patch_size": 16,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
        },
        "vision_feature_layer": -1,
        "projector_hidden_act": "gelu",
        "image_token_index": 10,
        "torch_dtype": "bfloat16",
    },
    "qwen2-vl-7b": {  # Qwen/Qwen2-VL-7B-Instruct
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "hidden_size": 3584,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "num_hidden_layers": 28,
        "intermediate_size": 18944,
        "vocab_size": 152064,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
        "tie_word_embeddings": False,
        "vision_config": {
            "depth": 32,
            "embed_dim": 1280,
            "mlp_ratio": 4,
            "num_heads": 16,
            "in_chans": 3,
            "hidden_size": 3584,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
        },
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "torch_dtype": "bfloat16",
    },
}

FIXTURE_PREPROCESSORS: dict[str, dict[str, Any]] = {
    "pixtral-12b": {
        "image_processor_type": "PixtralImageProcessor",
        "patch_size": {"height": 16, "width": 16},
        "size": {"longest_edge": 1024},
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        **_MEAN_STD,
    },
    "qwen2-vl-7b": {
        "image_processor_type": "Qwen2VLImageProcessor",
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        **_MEAN_STD,
    },
}

# HF LayerNorms with a bias (exllamav2 loads it, and compile.py writes it; weight_footprint ignores it)
_NORM_BIAS = {"GPT2LMHeadModel", "GPTBigCodeForCausalLM", "Starcoder2ForCausalLM", "OrionForCausalLM"}


def model_config(arch: str) -> dict[str, Any]:
    """The config.json dict for a tiny arch, a fixture config or a catalog model (a fresh copy)."""
    for table in (TINY_CONFIGS, FIXTURE_CONFIGS):
        if arch in table:
            return json.loads(json.dumps(table[arch]))
    if arch in TINY_VISION:
        return json.loads(json.dumps(TINY_VISION[arch][0]))
    model_id = resolve_catalog_id(arch)
    if model_id is None:
        raise KeyError(f"unknown arch {arch!r}: not a tiny or fixture config and not in the catalog")
    return catalog_config(model_id)


def model_preprocessor(arch: str) -> dict[str, Any] | None:
    if arch in FIXTURE_PREPROCESSORS:
        return json.loads(json.dumps(FIXTURE_PREPROCESSORS[arch]))
    if arch in TINY_VISION:
        return json.loads(json.dumps(TINY_VISION[arch][1]))
    model_id = resolve_catalog_id(arch)
    return catalog_preprocessor(model_id) if model_id in catalog() else None


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
    preprocessor: Any = "default",
    vision: bool = True,
    **config_overrides: Any,
) -> Path:
    """Write a sparse model directory under `root` and return its path.

    quant: "exl2" (what exllamav2's converter writes: output.safetensors / output-0000N-of-0000M) or
    "fp16" (a Hugging Face export: model.safetensors / model-0000N-of-0000M). shards > 1 also writes
    model.safetensors.index.json. config_overrides replace config.json keys (None deletes the key).
    preprocessor: the preprocessor_config.json dict to write (default: the model's own; None: none).
    vision=False leaves out the vision tower tensors (exllamav2 loads the text model without them).
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
    directory = Path(root) / (name or f"{arch}-{quant}" + (f"-{bpw:g}bpw" if quant == "exl2" else ""))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=4))
    prep = model_preprocessor(arch) if preprocessor == "default" else preprocessor
    if prep is not None:
        (directory / "preprocessor_config.json").write_text(json.dumps(prep, indent=2))
    dtype = config.get("torch_dtype") or (config.get("text_config") or {}).get("torch_dtype") or "float16"
    arch_name = config["architectures"][0]
    tensors = real_layout.lm_tensors(str(directory), quant, bpw, head_bits, dtype, arch_name in _NORM_BIAS)
    if quant == "fp16":
        tensors = [(real_layout.hf_name(arch_name, n), dt, shape) for n, dt, shape in tensors]
    stem = "output" if quant == "exl2" else "model"
    _write(directory, stem, tensors, shards)
    if vision and prep is not None and "vision_config" in config:
        extra = real_layout.vision_tensors(str(directory), dtype)
        write_header_only(directory / f"{stem}-vision.safetensors", extra, {"format": "pt"})
    return directory


def _write(directory: Path, stem: str, tensors: list, shards: int) -> None:
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
