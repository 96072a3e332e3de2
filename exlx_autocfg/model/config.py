"""config.json, read the way exllamav2 0.3.2 reads it (`config.py` `ExLlamaV2Config.prepare`: the same keys
in the same order, `text_config` where it looks there and nowhere else, the same per-architecture defaults
such as Gemma 3's `default_*` values, the same overrides from architecture.py), so the numbers here are the
numbers exllamav2 will use. Every expected failure is a one-line ModelSpecError naming the file and the key.
Line numbers below are config.py @ v0.3.2.
"""

from __future__ import annotations

import errno
import functools
import json
import math
import os
from pathlib import Path
from typing import Any

from exlx_autocfg.atomic import read_regular
from exlx_autocfg.errors import ModelSpecError
from exlx_autocfg.model.architectures import ArchRules, arch_rules, supported_architectures
from exlx_autocfg.model.readkeys import MISSING, positive, read_key
from exlx_autocfg.model.vision import VisionSpec, parse_vision

MAX_CONFIG_BYTES = 16 * 1024 * 1024  # a config.json is a few kB; refuse to slurp something huge


def _architecture(config: dict, where: str) -> tuple[str, ArchRules]:
    archs = config.get("architectures")
    if not isinstance(archs, list) or len(archs) != 1 or not isinstance(archs[0], str):
        raise ModelSpecError(f"{where}: 'architectures' must list exactly one architecture, got {archs!r}")
    arch = archs[0]
    rules = arch_rules(arch)
    vision_config = config.get("vision_config")
    if rules is not None and rules.requires_vision_model_type:
        # architecture.py L309-313, L351-355: recognised only with this vision tower
        got = vision_config.get("model_type") if isinstance(vision_config, dict) else None
        if got != rules.requires_vision_model_type:
            raise ModelSpecError(
                f"{where}: {arch} is recognised by exllamav2 0.3.2 only with a "
                f"{rules.requires_vision_model_type} vision_config (vision_config.model_type is {got!r}); "
                "it would load the model as LlamaForCausalLM and produce garbage"
            )
    if rules is None:
        raise ModelSpecError(
            f"{where}: architecture {arch} is not one exllamav2 0.3.2 recognises; it would load the model as "
            f"LlamaForCausalLM and produce garbage (recognised: {', '.join(supported_architectures())})"
        )
    if rules.sets_vision_model_type and not isinstance(vision_config, dict):
        # architecture.py L484/L500: read_config["vision_config"].update(...) raises without one
        raise ModelSpecError(
            f"{where}: missing vision_config ({arch} needs one; exllamav2 0.3.2 raises KeyError)"
        )
    return arch, rules


def vision_model_type(config: dict, rules: ArchRules | None) -> str | None:
    """config.py L494 `vision_config->model_type`, after architecture.py rewrote it for Qwen2-VL."""
    if rules is not None and rules.sets_vision_model_type:
        return rules.sets_vision_model_type
    vc = config.get("vision_config")
    value = vc.get("model_type") if isinstance(vc, dict) and vc else None
    return value or None


def parse_config(
    config: Any,
    *,
    where: str = "config.json",
    preprocessor: Any = None,
    preprocessor_where: str = "preprocessor_config.json",
) -> dict[str, Any]:
    """The ModelSpec fields config.json (and, for a multimodal model, preprocessor_config.json) determine:
    everything but name/path/source/tensors/fingerprint. `preprocessor` None: not given or the file does not
    exist (a model with a vision_config then fails as exllamav2 does)."""
    if not isinstance(config, dict):
        raise ModelSpecError(f"{where}: not a JSON object")
    arch, rules = _architecture(config, where)
    lm = rules.lm
    d = lm.defaults
    r = functools.partial(read_key, config, where=where)
    t = functools.partial(read_key, config, where=where, text_config=True)

    # L248-L255: vocab and token ids
    r(int, ["bos_token_id"], None)
    eos = r(object, ["eos_token_id"], None)
    if eos is not None and not isinstance(eos, int | list):
        raise ModelSpecError(f"{where}: eos_token_id must be int or list, got {eos!r}")
    r(int, ["pad_token_id"], None)
    vocab = positive(where, "vocab_size", t(int, ["vocab_size"], d.get("vocab_size", MISSING)))
    r(float, ["initializer_range"], 0.02)
    layers = positive(where, "num_hidden_layers", t(int, ["num_hidden_layers", "n_layers", "n_layer"]))
    # L262-265: norm epsilon under the architecture's key (required unless the arch has a default)
    eps_key = lm.key("norm_eps")
    norm_eps = t(float, [eps_key], d.get("rms_norm_eps", MISSING)) if eps_key else 1e-5
    hidden = positive(where, "hidden_size", t(int, ["hidden_size", "d_model", "n_embd"]))
    # L273-301: heads, head_dim (Gemma 3's defaults first), KV heads (MQA forces 1)
    heads = t(int, ["num_attention_heads", "n_heads", "n_head"], 0)
    if heads < 0:
        raise ModelSpecError(f"{where}: num_attention_heads must be positive, got {heads}")
    head_dim_default = d["head_dim"] if "head_dim" in d else (hidden // heads if heads else MISSING)
    head_dim = positive(where, "head_dim", t(int, ["head_dim"], head_dim_default))
    if not heads:
        heads = d["num_attention_heads"] if "num_attention_heads" in d else hidden // head_dim
    heads = positive(where, "num_attention_heads", heads)
    if lm.mqa:
        kv_heads = 1
    else:
        kv_default = d.get("num_key_value_heads", heads)
        kv_heads = positive(
            where,
            "num_key_value_heads",
            t(int, ["num_key_value_heads", "attn_config->kv_n_heads"], kv_default),
        )
    if heads % kv_heads:
        raise ModelSpecError(
            f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        )
    use_qk_norm = r(bool, ["use_qk_norm"], bool(d.get("use_qk_norm", False)))
    t(float, ["query_pre_attn_scalar"], None)
    t(float, ["attention_multiplier"], None)
    # L307-326: MLP (GPT-2's 4 x hidden default), experts
    inter_default = lm.default_inner_dim_mult * hidden if lm.default_inner_dim_mult else MISSING
    inter = t(int, ["intermediate_size", "ffn_config->ffn_hidden_size", "n_inner"], inter_default)
    experts = r(int, ["num_local_experts", "ffn_config->moe_num_experts", "num_experts"], None)
    experts_per_tok = r(int, ["num_experts_per_tok", "ffn_config->moe_top_k"], None)
    if lm.is_moe:
        inter = r(int, ["moe_intermediate_size"], inter)
        if not experts or experts < 1:
            raise ModelSpecError(
                f"{where}: {arch} needs num_local_experts / num_experts >= 1, got {experts!r}"
            )
        if experts_per_tok is not None and not 1 <= experts_per_tok <= experts:
            raise ModelSpecError(f"{where}: num_experts_per_tok {experts_per_tok} not in 1..{experts}")
    inter = positive(where, "intermediate_size", inter)
    # L330-353: scales and softcaps (read for their types: a wrong one stops exllamav2)
    r(float, ["logit_scale"], 1)
    r(float, ["logits_scaling"], None)
    r(float, ["scale_emb", "embedding_multiplier"], 1)
    r(float, ["residual_multiplier"], None)
    r(float, ["scale_depth"], None)
    attn_cap = r(float, ["attn_logit_softcapping"], None)
    final_cap = r(float, ["final_logit_softcapping"], None)
    r(int, ["norm_head"], None)
    # L357-381: positions
    rope_theta = t(float, ["rope_theta", "attn_config->rope_theta"], float(d.get("rope_theta", 10000.0)))
    if not math.isfinite(rope_theta) or rope_theta <= 0:
        raise ModelSpecError(f"{where}: rope_theta must be a positive number, got {rope_theta}")
    context_keys = [
        "max_sequence_length",
        "model_max_length",
        "max_position_embeddings",
        "max_seq_len",
        "n_positions",
    ]
    named_max = t(int, context_keys, None)
    max_pos = positive(where, "max_position_embeddings", 2048 if named_max is None else named_max)
    sliding = t(int, ["sliding_window", "sliding_window_size"], 0)
    if sliding < 0:
        raise ModelSpecError(f"{where}: sliding_window must not be negative, got {sliding}")
    pattern = r(int, ["sliding_window_pattern"], int(d.get("sliding_window_pattern", 1)))
    rotary = r(float, ["partial_rotary_factor"], 1.0)
    if not 0.0 < rotary <= 1.0:
        raise ModelSpecError(f"{where}: partial_rotary_factor must be in (0, 1], got {rotary}")
    rope_scaling = r(dict, ["rope_scaling", "text_config->rope_scaling"], None)
    mrope_section = _rope_scaling(config, rope_scaling, where) if rope_scaling else None
    r(str, ["quantization_config->checkpoint_format"], None)
    # architecture.py L920, L937-951: biases and the tied head from config.json
    qkv_bias, o_bias, mlp_bias = lm.attention_bias_qkv, lm.attention_bias_o, lm.mlp_bias
    if rules.attention_bias_qkv_from_config:
        qkv_bias = bool(config.get("attention_bias", False))
    if config.get("attention_bias", False) and not (qkv_bias or o_bias):
        qkv_bias = o_bias = True
    if config.get("mlp_bias", False):
        mlp_bias = True
    tie = bool(config.get("tie_word_embeddings", False))
    vision = _vision(config, rules, hidden, where, preprocessor, preprocessor_where)
    quant_method, bits, head_bits = _quantization(config, where)
    return dict(
        architecture=arch,
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=inter,
        vocab_size=vocab,
        max_position_embeddings=max_pos,
        max_seq_len_defaulted=named_max is None,
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        sliding_window=sliding,
        uses_swa=rules.uses_swa and sliding > 0,
        attn_logit_softcapping=attn_cap or None,
        final_logit_softcapping=final_cap or None,
        num_experts=experts if lm.is_moe else None,
        num_experts_per_tok=experts_per_tok if lm.is_moe else None,
        tie_word_embeddings=tie,
        quant_method=quant_method,
        bits_per_weight=bits,
        head_bits=head_bits,
        use_qk_norm=use_qk_norm,
        partial_rotary_factor=rotary,
        norm_eps=norm_eps,
        sliding_window_pattern=pattern,
        rope_theta_alt=lm.sliding_rope_theta,
        attention_bias_qkv=bool(qkv_bias),
        attention_bias_o=bool(o_bias),
        mlp_bias=bool(mlp_bias),
        config_num_experts=experts,
        mrope_section=mrope_section,
        vision=vision,
    )


def _rope_scaling(config: dict, rs: dict, where: str) -> tuple[int, ...] | None:
    """L383-412: the keys each rope_scaling type requires (exllamav2 asserts or raises KeyError)."""
    scaling, rope_type = rs.get("type"), rs.get("rope_type")
    if scaling and rope_type:
        raise ModelSpecError(
            f"{where}: rope_scaling has both 'type' ({scaling!r}) and 'rope_type' ({rope_type!r}); "
            "exllamav2 0.3.2 refuses that"
        )
    kind = scaling or rope_type
    needs = {
        "linear": ["factor"],
        "su": ["long_factor", "short_factor"],
        "longrope": ["long_factor", "short_factor"],
        "yarn": ["factor", "original_max_position_embeddings"],
        "llama3": ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"],
        "mrope": ["mrope_section"],
    }.get(kind, [])
    for key in needs:
        if key not in rs:
            raise ModelSpecError(f"{where}: rope_scaling.{key} missing (rope_scaling type {kind!r} needs it)")
    if kind in ("su", "longrope") and "original_max_position_embeddings" not in config:
        raise ModelSpecError(
            f"{where}: missing original_max_position_embeddings (rope_scaling type {kind!r} needs it)"
        )
    if kind == "mrope":
        section = rs["mrope_section"]
        if not isinstance(section, list) or not all(type(x) is int and x > 0 for x in section):
            raise ModelSpecError(f"{where}: rope_scaling.mrope_section must be a list of positive integers")
        return tuple(section)
    return None


def _vision(
    config: dict, rules: ArchRules, hidden: int, where: str, preprocessor: Any, preprocessor_where: str
) -> VisionSpec | None:
    model_type = vision_model_type(config, rules)
    if not model_type:
        return None
    vc = config.get("vision_config")
    if not isinstance(vc, dict):
        raise ModelSpecError(f"{where}: vision_config must be an object")
    if not isinstance(model_type, str):
        raise ModelSpecError(f"{where}: vision_config.model_type must be str, got {model_type!r}")
    if rules.sets_vision_model_type:  # the value exllamav2 writes into its copy of the config
        config = {**config, "vision_config": {**vc, "model_type": model_type}}
    return parse_vision(
        config,
        preprocessor,
        model_type,
        text_hidden_size=hidden,
        where=where,
        preprocessor_where=preprocessor_where,
    )


def _quantization(config: dict, where: str) -> tuple[str | None, float | None, int | None]:
    qc = config.get("quantization_config")
    if qc is None:
        return None, None, None
    if not isinstance(qc, dict):
        raise ModelSpecError(f"{where}: quantization_config is not an object")
    method = qc.get("quant_method")
    if method is not None and not isinstance(method, str):
        raise ModelSpecError(f"{where}: quantization_config.quant_method must be a string")
    bits = read_key(qc, float, ["bits"], None, where=f"{where} quantization_config")
    head_bits = read_key(qc, int, ["head_bits"], None, where=f"{where} quantization_config")
    if bits is not None and not (0 < bits <= 32 and math.isfinite(bits)):
        raise ModelSpecError(f"{where}: quantization_config.bits {bits} is out of range")
    if head_bits is not None and not 0 < head_bits <= 32:
        raise ModelSpecError(f"{where}: quantization_config.head_bits {head_bits} is out of range")
    return method, bits, head_bits


def read_json_file(path: Path, *, missing_ok: bool = False) -> tuple[bytes, Any]:
    """(raw bytes, parsed JSON) of a regular file; ModelSpecError when it is missing, unreadable or not JSON,
    SpecialFileError when it is a FIFO, device, socket or directory (refused by type, never opened). With
    missing_ok, (b"", None) when nothing at all is at `path` (a dangling link is still an error)."""
    try:
        raw = read_regular(path, limit=MAX_CONFIG_BYTES)
    except FileNotFoundError:
        if missing_ok and not os.path.lexists(path):
            return b"", None
        raise ModelSpecError(f"{path}: missing (not a model directory?)") from None
    except OSError as exc:
        if exc.errno == errno.EFBIG:
            size = path.stat().st_size
            raise ModelSpecError(f"{path}: {size} bytes is too large for a {path.name}") from None
        raise ModelSpecError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return raw, parse_json_bytes(raw, str(path))


def parse_json_bytes(raw: bytes, where: str) -> Any:
    """JSON from the bytes of a file named `where` (a path, or a file of a Hub revision)."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ModelSpecError(f"{where}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ModelSpecError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (ValueError, RecursionError):
        raise ModelSpecError(f"{where}: not valid JSON") from None
