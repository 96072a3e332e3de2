"""config.json, read the way exllamav2 0.3.2 reads it (`config.py` `ExLlamaV2Config.prepare`: same keys, same
fallbacks, same defaults), so the numbers here are the numbers exllamav2 will use. Every expected failure
is a one-line ModelSpecError naming the file and the key.
"""

from __future__ import annotations

import errno
import functools
import json
import math
from pathlib import Path
from typing import Any

from exlx_autocfg.atomic import read_regular
from exlx_autocfg.errors import ModelSpecError
from exlx_autocfg.model.architectures import arch_rules, supported_architectures

MAX_CONFIG_BYTES = 16 * 1024 * 1024  # a config.json is a few kB; refuse to slurp something huge

_MISSING = object()


def _lookup(config: dict, key: str) -> Any:
    node: Any = config
    for part in key.split("->"):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _read(
    config: dict,
    kind: type,
    keys: list[str],
    default: Any = _MISSING,
    *,
    text_config: bool = False,
    where: str = "config.json",
) -> Any:
    """exllamav2 config.py `read()`: first key present wins; int<->float as it converts; wrong type fails."""
    candidates = list(keys) + ([f"text_config->{k}" for k in keys] if text_config else [])
    for key in candidates:
        value = _lookup(config, key)
        if value is None:
            continue
        if kind is float and type(value) is int:
            value = float(value)
        if kind is int and type(value) is float and value.is_integer():
            value = int(value)
        if type(value) is bool and kind is not bool:
            raise ModelSpecError(f"{where}: {key} must be {kind.__name__}, got {value!r}")
        if not isinstance(value, kind):
            raise ModelSpecError(
                f"{where}: {key} must be {kind.__name__}, got {type(value).__name__} {value!r}"
            )
        return value
    if default is _MISSING:
        raise ModelSpecError(f"{where}: missing {' / '.join(keys)}")
    return default


def _positive(where: str, name: str, value: int) -> int:
    if value <= 0:
        raise ModelSpecError(f"{where}: {name} must be positive, got {value}")
    return value


def parse_config(config: Any, *, where: str = "config.json") -> dict[str, Any]:
    """The ModelSpec fields config.json determines (everything but name/path/source/tensors/fingerprint)."""
    if not isinstance(config, dict):
        raise ModelSpecError(f"{where}: not a JSON object")
    archs = config.get("architectures")
    if not isinstance(archs, list) or len(archs) != 1 or not isinstance(archs[0], str):
        raise ModelSpecError(f"{where}: 'architectures' must list exactly one architecture, got {archs!r}")
    arch = archs[0]
    rules = arch_rules(arch)
    if rules is None:
        raise ModelSpecError(
            f"{where}: architecture {arch} is not supported by exllamav2 0.3.2 as modelled here "
            f"(supported: {', '.join(supported_architectures())})"
        )
    r = functools.partial(_read, config, where=where)
    layers = _positive(
        where, "num_hidden_layers", r(int, ["num_hidden_layers", "n_layers", "n_layer"], text_config=True)
    )
    hidden = _positive(where, "hidden_size", r(int, ["hidden_size", "d_model", "n_embd"], text_config=True))
    heads = r(int, ["num_attention_heads", "n_heads", "n_head"], 0, text_config=True)
    if heads < 0:
        raise ModelSpecError(f"{where}: num_attention_heads must be positive, got {heads}")
    head_dim = r(int, ["head_dim"], hidden // heads if heads else _MISSING, text_config=True)
    head_dim = _positive(where, "head_dim", head_dim)
    if not heads:
        heads = hidden // head_dim
    heads = _positive(where, "num_attention_heads", heads)
    kv_heads = _positive(
        where,
        "num_key_value_heads",
        r(int, ["num_key_value_heads", "attn_config->kv_n_heads"], heads, text_config=True),
    )
    if heads % kv_heads:
        raise ModelSpecError(
            f"{where}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}"
        )
    inter = r(int, ["intermediate_size", "ffn_config->ffn_hidden_size", "n_inner"], text_config=True)
    experts = r(int, ["num_local_experts", "ffn_config->moe_num_experts", "num_experts"], None)
    experts_per_tok = r(int, ["num_experts_per_tok", "ffn_config->moe_top_k"], None)
    if rules.moe:
        inter = r(int, ["moe_intermediate_size"], inter)
        if not experts or experts < 1:
            raise ModelSpecError(f"{where}: {arch} needs num_local_experts >= 1, got {experts!r}")
        if experts_per_tok is not None and not 1 <= experts_per_tok <= experts:
            raise ModelSpecError(f"{where}: num_experts_per_tok {experts_per_tok} not in 1..{experts}")
    inter = _positive(where, "intermediate_size", inter)
    vocab = _positive(where, "vocab_size", r(int, ["vocab_size"], text_config=True))
    max_pos = _positive(
        where,
        "max_position_embeddings",
        r(
            int,
            [
                "max_sequence_length",
                "model_max_length",
                "max_position_embeddings",
                "max_seq_len",
                "n_positions",
            ],
            2048,
            text_config=True,
        ),
    )
    rope_theta = r(float, ["rope_theta", "attn_config->rope_theta"], 10000.0, text_config=True)
    if not math.isfinite(rope_theta) or rope_theta <= 0:
        raise ModelSpecError(f"{where}: rope_theta must be a positive number, got {rope_theta}")
    sliding = r(int, ["sliding_window", "sliding_window_size"], 0, text_config=True)
    if sliding < 0:
        raise ModelSpecError(f"{where}: sliding_window must not be negative, got {sliding}")
    rope_scaling = r(dict, ["rope_scaling", "text_config->rope_scaling"], None)
    attn_cap = r(float, ["attn_logit_softcapping"], None)
    final_cap = r(float, ["final_logit_softcapping"], None)
    tie = r(bool, ["tie_word_embeddings"], rules.lm_head != "lm_head")
    use_qk_norm = r(bool, ["use_qk_norm"], rules.use_qk_norm)
    rotary = r(float, ["partial_rotary_factor"], 1.0)
    if not 0.0 < rotary <= 1.0:
        raise ModelSpecError(f"{where}: partial_rotary_factor must be in (0, 1], got {rotary}")
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
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        sliding_window=sliding,
        uses_swa=rules.uses_swa and sliding > 0,
        attn_logit_softcapping=attn_cap or None,
        final_logit_softcapping=final_cap or None,
        num_experts=experts if rules.moe else None,
        num_experts_per_tok=experts_per_tok if rules.moe else None,
        tie_word_embeddings=tie,
        quant_method=quant_method,
        bits_per_weight=bits,
        head_bits=head_bits,
        use_qk_norm=use_qk_norm,
        partial_rotary_factor=rotary,
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
    bits = _read(qc, float, ["bits"], None, where=f"{where} quantization_config")
    head_bits = _read(qc, int, ["head_bits"], None, where=f"{where} quantization_config")
    if bits is not None and not (0 < bits <= 32 and math.isfinite(bits)):
        raise ModelSpecError(f"{where}: quantization_config.bits {bits} is out of range")
    if head_bits is not None and not 0 < head_bits <= 32:
        raise ModelSpecError(f"{where}: quantization_config.head_bits {head_bits} is out of range")
    return method, bits, head_bits


def read_json_file(path: Path) -> tuple[bytes, Any]:
    """(raw bytes, parsed JSON) of a regular file; ModelSpecError when it is missing, unreadable or not JSON,
    SpecialFileError when it is a FIFO, device, socket or directory (refused by type, never opened)."""
    try:
        raw = read_regular(path, limit=MAX_CONFIG_BYTES)
    except FileNotFoundError:
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
