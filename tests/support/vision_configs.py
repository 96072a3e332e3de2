"""Tiny multimodal configs (every tower type exllamav2 0.3.2 implements) for tests that run the real vision
tower on the CPU, with their preprocessor_config.json. Real-shaped (patch sizes, merges, windows as the
published models have them), only narrower and shallower."""

from __future__ import annotations

from typing import Any

_MEAN_STD = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
_TEXT = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "vocab_size": 1024,
    "rms_norm_eps": 1e-06,
}

TINY_VISION: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "tiny-gemma3": (
        {
            "architectures": ["Gemma3ForConditionalGeneration"],
            "model_type": "gemma3",
            "mm_tokens_per_image": 16,
            "text_config": {**_TEXT, "model_type": "gemma3_text", "sliding_window": 64},
            "vision_config": {
                "model_type": "siglip_vision_model",
                "hidden_size": 64,
                "image_size": 112,
                "intermediate_size": 128,
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "patch_size": 14,
            },
            "torch_dtype": "bfloat16",
        },
        {
            "image_processor_type": "Gemma3ImageProcessor",
            "resample": 2,
            "rescale_factor": 0.00392156862745098,
            "size": {"height": 112, "width": 112},
            **_MEAN_STD,
        },
    ),
    "tiny-pixtral": (
        {
            "architectures": ["LlavaForConditionalGeneration"],
            "model_type": "llava",
            "vision_feature_layer": -1,
            "text_config": {**_TEXT, "model_type": "mistral", "head_dim": 64},
            "vision_config": {
                "model_type": "pixtral",
                "hidden_size": 64,
                "head_dim": 16,
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "intermediate_size": 128,
                "patch_size": 16,
                "rope_theta": 10000.0,
                "hidden_act": "silu",
            },
            "torch_dtype": "bfloat16",
        },
        {
            "image_processor_type": "PixtralImageProcessor",
            "patch_size": {"height": 16, "width": 16},
            "size": {"longest_edge": 128},
            "resample": 3,
            "rescale_factor": 0.00392156862745098,
            **_MEAN_STD,
        },
    ),
    "tiny-mistral3": (
        {
            "architectures": ["Mistral3ForConditionalGeneration"],
            "model_type": "mistral3",
            "spatial_merge_size": 2,
            "multimodal_projector_bias": False,
            "vision_feature_layer": -1,
            "text_config": {**_TEXT, "model_type": "mistral"},
            "vision_config": {
                "model_type": "pixtral",
                "hidden_size": 64,
                "head_dim": 16,
                "num_attention_heads": 4,
                "num_hidden_layers": 2,
                "intermediate_size": 128,
                "patch_size": 14,
                "rope_theta": 10000.0,
                "hidden_act": "silu",
            },
            "torch_dtype": "bfloat16",
        },
        {
            "image_processor_type": "PixtralImageProcessorFast",
            "patch_size": 14,
            "size": {"longest_edge": 112},
            "resample": 3,
            "rescale_factor": 0.00392156862745098,
            **_MEAN_STD,
        },
    ),
    "tiny-qwen2-vl": (
        {
            "architectures": ["Qwen2VLForConditionalGeneration"],
            "model_type": "qwen2_vl",
            **_TEXT,
            "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]},
            "vision_config": {
                "depth": 2,
                "embed_dim": 64,
                "mlp_ratio": 4,
                "num_heads": 4,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "spatial_patch_size": 14,
                "temporal_patch_size": 2,
            },
            "torch_dtype": "bfloat16",
        },
        {
            "image_processor_type": "Qwen2VLImageProcessor",
            "min_pixels": 3136,
            "max_pixels": 12544,
            "patch_size": 14,
            "temporal_patch_size": 2,
            "merge_size": 2,
            **_MEAN_STD,
        },
    ),
    "tiny-qwen2.5-vl": (
        {
            "architectures": ["Qwen2_5_VLForConditionalGeneration"],
            "model_type": "qwen2_5_vl",
            **_TEXT,
            "rope_scaling": {"type": "mrope", "mrope_section": [8, 12, 12]},
            "vision_config": {
                "depth": 4,
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_heads": 4,
                "patch_size": 14,
                "spatial_merge_size": 2,
                "spatial_patch_size": 14,
                "temporal_patch_size": 2,
                "window_size": 56,
                "fullatt_block_indexes": [1, 3],
                "out_hidden_size": 256,
            },
            "torch_dtype": "bfloat16",
        },
        {
            "image_processor_type": "Qwen2VLImageProcessor",
            "min_pixels": 3136,
            "max_pixels": 12544,
            "patch_size": 14,
            "temporal_patch_size": 2,
            "merge_size": 2,
            **_MEAN_STD,
        },
    ),
}
