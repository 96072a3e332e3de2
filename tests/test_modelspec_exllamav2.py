"""Every catalog model and every fixture architecture, written as a sparse directory, is accepted by the real
exllamav2 0.3.2 and read the same way: our ModelSpec holds the numbers its own ExLlamaV2Config computes, and
our architecture table holds its ExLlamaV2ArchParams field for field."""

from __future__ import annotations

from dataclasses import fields

import pytest

from exlx_autocfg.model.architectures import arch_rules, supported_architectures
from exlx_autocfg.model.catalog import catalog
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.planner import memory
from tests.support.model_dirs import FIXTURE_CONFIGS, TINY_CONFIGS, make_model_dir

REDUCED = {"qwen3-235b-a22b": 2, "qwen3-30b-a3b": 4}  # 128 experts a layer: fewer layers, same shapes


def _arch_config(name: str) -> dict:
    config: dict = {"architectures": [name]}
    if name in ("LlavaForConditionalGeneration", "Mistral3ForConditionalGeneration"):
        config["vision_config"] = {"model_type": "pixtral"}
    if name.startswith("Qwen2") and "VL" in name:
        config["vision_config"] = {}
    return config


@pytest.mark.parametrize("name", supported_architectures())
def test_architecture_table_is_exllamav2s(exl2, name):
    """Each [architectures.*] entry equals the real ExLlamaV2ArchParams for that string (lm, vt, mmp)."""
    from exllamav2.architecture import ExLlamaV2ArchParams, RopeStyle, no_default

    real = ExLlamaV2ArchParams(name, _arch_config(name))
    ours = arch_rules(name)
    assert real.arch_string == name  # recognised: not the Llama fallback
    style = {RopeStyle.NONE: "none", RopeStyle.NEOX: "neox", RopeStyle.GPTJ: "gptj"}
    pairs = [(ours.lm, real.lm)]
    if ours.vision:
        pairs += [(ours.vision.vt, real.vt), (ours.vision.mmp, real.mmp)]
    for mine, theirs in pairs:
        for f in fields(mine):
            if f.name == "defaults":
                continue
            got = getattr(mine, f.name)
            want = getattr(theirs, f.name)
            if f.name == "keys":
                got = {k: v for k, v in got.items() if v is not None}
                want = {k: v for k, v in want.items() if v is not None}
            elif f.name == "rope_style":
                want = style[want]
            elif f.name in ("layer_keys", "expect_keys"):
                want = tuple(tuple(k) for k in want)
            elif f.name == "mlp_bias" and mine is (ours.vision.mmp if ours.vision else None):
                continue  # Pixtral / Mistral 3 read it from config.json (checked in the vision tests)
            assert got == want, f"{name} {f.name}"
        for key in ("vocab_size", "rms_norm_eps", "head_dim", "num_attention_heads", "num_key_value_heads"):
            want = getattr(theirs, f"default_{key}")
            assert mine.defaults.get(key, no_default) == want or (
                key not in mine.defaults and want is no_default
            )
        assert mine.defaults.get("use_qk_norm", False) == theirs.default_use_qk_norm
        assert mine.defaults.get("sliding_window_pattern", 1) == theirs.default_sliding_window_pattern
        assert mine.defaults.get("rope_theta", 10000) == theirs.default_rope_theta
    assert ours.lm_prefix == real.lm_prefix
    assert ours.keymap == tuple(tuple(pair) for pair in (real.keymap or ()))
    assert ours.orig_weights_transposed == real.orig_weights_transposed
    prefixes = (ours.vision.vt_prefix, ours.vision.mmp_prefix) if ours.vision else ("", "")
    assert prefixes == (real.vt_prefix, real.mmp_prefix)


def test_unrecognised_architectures_fall_back_to_llama_in_exllamav2(exl2):
    """What we refuse is what exllamav2 would silently load as Llama (Gemma 3 1B, a Llava without Pixtral)."""
    from exllamav2.architecture import ExLlamaV2ArchParams

    for name, config in (
        ("Gemma3ForCausalLM", {}),
        ("LlavaForConditionalGeneration", {"vision_config": {"model_type": "clip_vision_model"}}),
        ("MambaForCausalLM", {}),
    ):
        assert (
            ExLlamaV2ArchParams(name, {"architectures": [name], **config}).arch_string == "LlamaForCausalLM"
        )
        assert arch_rules(name) is None or arch_rules(name).requires_vision_model_type


@pytest.mark.parametrize("arch", sorted(catalog()) + sorted(FIXTURE_CONFIGS) + sorted(TINY_CONFIGS))
def test_exllamav2_reads_what_we_read(exl2, tmp_path, arch):
    overrides = {"num_hidden_layers": REDUCED[arch]} if arch in REDUCED else {}
    d = make_model_dir(tmp_path, arch, bpw=4.65, **overrides)
    spec = load_model_spec(d)
    cfg = exl2.ExLlamaV2Config(str(d))  # prepare(): config.json + every header + its check_keys
    assert spec.architecture == cfg.arch.arch_string
    assert spec.num_hidden_layers == cfg.num_hidden_layers
    assert spec.hidden_size == cfg.hidden_size
    assert spec.num_attention_heads == cfg.num_attention_heads
    assert spec.num_key_value_heads == cfg.num_key_value_heads
    assert spec.head_dim == cfg.head_dim
    assert spec.intermediate_size == cfg.intermediate_size
    assert spec.vocab_size == cfg.vocab_size
    assert spec.max_position_embeddings == cfg.max_seq_len
    assert spec.rope_theta == cfg.rotary_embedding_base
    assert spec.rope_theta_alt == cfg.rotary_embedding_base_alt
    assert spec.sliding_window == cfg.sliding_window
    assert spec.sliding_window_pattern == cfg.sliding_window_pattern
    assert spec.partial_rotary_factor == cfg.partial_rotary_factor
    assert spec.norm_eps == cfg.norm_eps
    assert spec.uses_swa == bool((cfg.arch.lm.swa or cfg.arch.lm.alternating_swa) and cfg.sliding_window)
    assert spec.swa_arch == bool(cfg.arch.lm.swa or cfg.arch.lm.alternating_swa)
    assert spec.attn_logit_softcapping == cfg.attn_logit_softcapping
    assert spec.final_logit_softcapping == cfg.final_logit_softcapping
    assert spec.num_experts == (cfg.num_experts if cfg.arch.lm.is_moe else None)
    assert spec.config_num_experts == cfg.num_experts
    assert spec.use_qk_norm == cfg.use_qk_norm
    assert spec.mrope_section == (tuple(cfg.mrope_section) if getattr(cfg, "mrope_section", None) else None)
    assert (spec.attention_bias_qkv, spec.attention_bias_o, spec.mlp_bias) == (
        cfg.arch.lm.attention_bias_qkv,
        cfg.arch.lm.attention_bias_o,
        cfg.arch.lm.mlp_bias,
    )
    assert spec.head_alt_key == (
        cfg.arch.lm.keys["lm_head"] if cfg.arch.lm.keys["lm_head"] != "lm_head" else None
    )
    assert spec.eager_only == cfg.arch.lm.eager_attn_only
    assert spec.mrope == cfg.arch.lm.mrope
    assert set(t.name for t in spec.tensors) == set(cfg.tensor_file_map)
    assert spec.rules.parallel_decoder == cfg.arch.lm.parallel_decoder_blocks
    assert spec.rules.moe == cfg.arch.lm.is_moe
    assert spec.checkpoint_fused_mlp == cfg.checkpoint_fused_mlp
    if cfg.vision_model_type and spec.rules.vision:
        v = spec.vision
        assert v is not None and v.model_type == cfg.vision_model_type
        assert (v.num_layers, v.hidden_size, v.intermediate_size) == (
            cfg.vision_num_layers,
            cfg.vision_hidden_size,
            cfg.vision_intermediate_size,
        )
        assert (v.num_attention_heads, v.num_key_value_heads, v.head_dim) == (
            cfg.vision_num_attention_heads,
            cfg.vision_num_key_value_heads,
            cfg.vision_head_dim,
        )
        assert v.patch_size == cfg.vision_patch_size["height"] == cfg.vision_patch_size["width"]
        assert v.spatial_merge_size == cfg.vision_spatial_merge_size
        assert v.merger_intermediate_size == getattr(cfg, "vision_merger_intermediate_size", None)
        assert v.window_size == cfg.vision_window_size
        assert v.fullatt_block_indexes == (
            tuple(cfg.vision_fullatt_block_indexes) if cfg.vision_fullatt_block_indexes else None
        )
    else:
        assert spec.vision is None


@pytest.mark.parametrize("arch", sorted(catalog()))
def test_catalog_spec_names_the_tensors_exllamav2_builds(exl2, tmp_path, arch):
    """The catalog lays out the checkpoint itself (model/layout.py): same tensor names as a directory built
    from the real module graph, same unquantized shapes, same quantized in/out dims; only the EXL2 group mix
    differs (the converter's per-layer choice vs the catalog's uniform stand-in)."""
    overrides = {"num_hidden_layers": REDUCED[arch]} if arch in REDUCED else {}
    if overrides:
        return  # the catalog has no reduced-layer variant; the full model is covered by the other tests
    directory = load_model_spec(make_model_dir(tmp_path, arch, bpw=4.0))
    listed = load_model_spec(f"{arch}@4.0bpw")
    assert listed.source == "catalog" and listed.path is None and listed.hf_repo == catalog()[arch]["hf_repo"]
    real = {t.name: t for t in directory.tensors}
    ours = {t.name: t for t in listed.tensors}
    assert set(ours) == set(real)
    for name, t in ours.items():
        if name.endswith((".q_weight", ".q_scale", ".q_scale_max", ".q_groups")):
            if name.endswith((".q_weight", ".q_scale")):
                assert t.shape[-1] == real[name].shape[-1], name  # padded out_features
            continue
        assert (t.dtype, t.shape) == (real[name].dtype, real[name].shape), name
    costs = memory.module_costs(listed)
    assert [c.key for c in costs] == [c.key for c in memory.module_costs(directory)]


def test_fp16_checkpoints_too(exl2, tmp_path):
    for arch in ("phi3-mini", "gemma2-9b", "qwen2.5-7b", "tiny-mixtral", "command-r-35b", "gpt2", "dbrx"):
        d = make_model_dir(tmp_path, arch, quant="fp16")
        spec = load_model_spec(d)
        cfg = exl2.ExLlamaV2Config(str(d))
        assert spec.quant_method is None and spec.bits_per_weight is None
        assert set(t.name for t in spec.tensors) == set(cfg.tensor_file_map)
