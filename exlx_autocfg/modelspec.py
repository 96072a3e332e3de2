"""What the planner needs to know about a model: its dimensions and tensors, from a directory or the catalog.

`load_model_spec(ref)` takes a model directory (config.json + *.safetensors, headers only) or a catalog
reference such as `yi-34b@4.0bpw` / `llama3-8b` (profiles/models.toml). config.json is read the way
exllamav2 0.3.2 reads it (`config.py` `ExLlamaV2Config.prepare`: same keys, same fallbacks, same defaults),
so the numbers here are the numbers exllamav2 will use. Every expected failure is a one-line ModelSpecError.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from exlx_autocfg.architectures import ArchRules, arch_rules, supported_architectures
from exlx_autocfg.data import load_data
from exlx_autocfg.errors import ModelSpecError
from exlx_autocfg.exl2_layout import DEFAULT_HEAD_BITS, checkpoint_tensors, tensor_nbytes
from exlx_autocfg.plan_types import ModelSummary
from exlx_autocfg.safetensors_header import read_header

DEFAULT_CATALOG_BPW = 4.0
MAX_CONFIG_BYTES = 16 * 1024 * 1024  # a config.json is a few kB; refuse to slurp something huge


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    file: str | None = None  # file name inside the model directory; None for catalog models


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str | None
    source: str  # "directory" | "catalog"
    architecture: str
    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int  # exllamav2's config.max_seq_len default (same key order)
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    sliding_window: int
    uses_swa: bool
    attn_logit_softcapping: float | None
    final_logit_softcapping: float | None
    num_experts: int | None
    num_experts_per_tok: int | None
    tie_word_embeddings: bool
    quant_method: str | None  # "exl2", "gptq", ... or None for an unquantized checkpoint
    bits_per_weight: float | None
    head_bits: int | None
    use_qk_norm: bool = False
    partial_rotary_factor: float = 1.0
    tensors: tuple[TensorInfo, ...] = ()
    fingerprint: str | None = None
    catalog_id: str | None = None
    hf_repo: str | None = None

    @property
    def rules(self) -> ArchRules:
        rules = arch_rules(self.architecture)
        assert rules is not None  # load_model_spec refuses unknown architectures
        return rules

    @property
    def num_key_value_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @cached_property
    def tensor_bytes(self) -> dict[str, int]:
        """name -> bytes on disk (what exllamav2's `STFile.measure` returns)."""
        return {t.name: t.nbytes for t in self.tensors}

    @property
    def total_tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def summary(self) -> ModelSummary:
        return ModelSummary(
            name=self.name,
            path=self.path,
            architecture=self.architecture,
            layers=self.num_hidden_layers,
            hidden_size=self.hidden_size,
            attention_heads=self.num_attention_heads,
            kv_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            vocab_size=self.vocab_size,
            max_position_embeddings=self.max_position_embeddings,
            bits_per_weight=self.bits_per_weight,
            fingerprint=self.fingerprint,
            source=self.source,
        )


# --------------------------------------------------------------------------------------------------
# config.json, read as exllamav2 0.3.2 reads it
# --------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# Model directories
# --------------------------------------------------------------------------------------------------


def _read_config_file(path: Path) -> tuple[bytes, Any]:
    if not path.is_file():
        raise ModelSpecError(f"{path}: missing (not a model directory?)")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ModelSpecError(f"{path}: {path.stat().st_size} bytes is too large for a config.json")
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelSpecError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return raw, json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ModelSpecError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ModelSpecError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (ValueError, RecursionError):
        raise ModelSpecError(f"{path}: not valid JSON") from None


def _load_directory(directory: Path) -> ModelSpec:
    config_path = directory / "config.json"
    raw_config, config = _read_config_file(config_path)
    fields = parse_config(config, where=str(config_path))
    files = sorted(directory.glob("*.safetensors"))  # exllamav2 globs *.safetensors, ignoring the index
    if not files:
        raise ModelSpecError(f"{directory}: no .safetensors files")
    digest = hashlib.sha256(raw_config)
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        header = read_header(file)
        digest.update(file.name.encode() + b"\0" + header.header_bytes)
        for t in header.tensors.values():
            if t.name in tensors:
                raise ModelSpecError(f"{file}: tensor {t.name!r} also in {tensors[t.name].file}")
            tensors[t.name] = TensorInfo(t.name, t.dtype, t.shape, t.nbytes, file.name)
    _check_index(directory, tensors)
    spec = ModelSpec(
        name=directory.name,
        path=str(directory),
        source="directory",
        tensors=tuple(tensors.values()),
        fingerprint=digest.hexdigest(),
        **fields,
    )
    _check_tensors(spec, directory)
    return spec


def _check_index(directory: Path, tensors: dict[str, TensorInfo]) -> None:
    index_path = directory / "model.safetensors.index.json"
    if not index_path.exists():
        return
    _, index = _read_config_file(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise ModelSpecError(f"{index_path}: no weight_map object")
    for name, file in weight_map.items():
        info = tensors.get(name)
        if info is None or info.file != file:
            raise ModelSpecError(f"{index_path}: maps {name!r} to {file!r}, which does not hold it")


def _linear_keys(spec: ModelSpec, layer: int) -> list[tuple[str, str | None, int, int]]:
    """(key, fused key, in_features, out_features) of the linears exllamav2 expects in one layer."""
    rules, p = spec.rules, f"model.layers.{layer}"
    h, d = spec.hidden_size, spec.head_dim
    q_out, kv_out = spec.num_attention_heads * d, spec.num_key_value_heads * d
    fq = f"{p}.{rules.fused_qkv}" if rules.fused_qkv else None
    out = [
        (f"{p}.self_attn.q_proj", fq, h, q_out),
        (f"{p}.self_attn.k_proj", fq, h, kv_out),
        (f"{p}.self_attn.v_proj", fq, h, kv_out),
        (f"{p}.self_attn.o_proj", None, q_out, h),
    ]
    inter = spec.intermediate_size
    if rules.moe:
        for e in range(spec.num_experts or 0):
            ep = f"{p}.block_sparse_moe.experts.{e}"
            out += [(f"{ep}.w1", None, h, inter), (f"{ep}.w3", None, h, inter), (f"{ep}.w2", None, inter, h)]
        return out
    fm = f"{p}.{rules.fused_mlp}" if rules.fused_mlp else None
    if rules.mlp_gate:
        out.append((f"{p}.mlp.gate_proj", fm, h, inter))
    out += [(f"{p}.mlp.up_proj", fm, h, inter), (f"{p}.mlp.down_proj", None, inter, h)]
    return out


def _check_tensors(spec: ModelSpec, directory: Path) -> None:
    """The keys exllamav2's `check_keys` demands, with shapes that agree with config.json."""
    have = {t.name: t for t in spec.tensors}

    def need(key: str, rows: int, cols: int, alt: str | None = None) -> None:
        for k in (key, alt):
            if k is None:
                continue
            if f"{k}.q_weight" in have:
                invperm = have.get(f"{k}.q_invperm")
                if invperm is None or invperm.shape != (rows,):
                    raise ModelSpecError(
                        f"{directory}: {k}.q_invperm shape "
                        f"{invperm.shape if invperm else 'missing'} != ({rows},) from config.json"
                    )
                return
            if f"{k}.qweight" in have:
                return
            w = have.get(f"{k}.weight")
            if w is not None:
                if k == key and len(w.shape) == 2 and w.shape[1] != rows and w.shape[0] != rows:
                    raise ModelSpecError(
                        f"{directory}: {k}.weight shape {list(w.shape)} does not match "
                        f"in_features {rows} from config.json"
                    )
                return
        raise ModelSpecError(
            f"{directory}: tensor {key} missing (config.json says {spec.num_hidden_layers} "
            f"layers of {spec.architecture})"
        )

    emb = have.get("model.embed_tokens.weight")
    if emb is None:
        raise ModelSpecError(f"{directory}: tensor model.embed_tokens missing")
    if emb.shape != (spec.vocab_size, spec.hidden_size):
        raise ModelSpecError(
            f"{directory}: model.embed_tokens shape {list(emb.shape)} != "
            f"[{spec.vocab_size}, {spec.hidden_size}] from config.json"
        )
    if "model.norm.weight" not in have:
        raise ModelSpecError(f"{directory}: tensor model.norm missing")
    for layer in range(spec.num_hidden_layers):
        for key, fused, rows, cols in _linear_keys(spec, layer):
            need(key, rows, cols, fused)
    if not spec.tie_word_embeddings and spec.rules.lm_head == "lm_head":
        need("lm_head", spec.hidden_size, spec.vocab_size)


# --------------------------------------------------------------------------------------------------
# Catalog
# --------------------------------------------------------------------------------------------------

_REF = re.compile(r"^(?P<id>[^@]+?)(?:@(?P<q>fp16|[0-9]+(?:\.[0-9]+)?)(?:bpw)?)?$", re.IGNORECASE)


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


@functools.cache
def _catalog_spec(model_id: str, bpw: float | None) -> ModelSpec:
    entry = catalog()[model_id]
    config = catalog_config(model_id)
    fields = parse_config(config, where=f"catalog {model_id}")
    quant = "fp16" if bpw is None else "exl2"
    if bpw is not None:
        fields.update(quant_method="exl2", bits_per_weight=bpw, head_bits=DEFAULT_HEAD_BITS)
    probe = ModelSpec(name=model_id, path=None, source="catalog", **fields)
    layout = checkpoint_tensors(
        probe, probe.rules, quant=quant, bpw=bpw or 16.0, torch_dtype=config.get("torch_dtype", "float16")
    )
    tensors = tuple(TensorInfo(n, dt, shape, tensor_nbytes(dt, shape)) for n, dt, shape in layout)
    canonical = json.dumps({"catalog": model_id, "config": config, "bpw": bpw}, sort_keys=True)
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


def _looks_like_path(ref: str) -> bool:
    return os.sep in ref or ref.startswith((".", "~")) or (os.altsep is not None and os.altsep in ref)


def load_model_spec(ref: str | os.PathLike[str], *, bpw: float | None = None) -> ModelSpec:
    """A model directory, or a catalog reference `id[@<bpw>[bpw]|@fp16]` (default 4.0 bpw)."""
    text = os.fspath(ref)
    path = Path(text).expanduser()
    if path.is_dir():
        return _load_directory(path)
    match = _REF.match(text.strip())
    model_id = resolve_catalog_id(match.group("id")) if match else None
    if model_id is None:
        if path.exists():
            raise ModelSpecError(f"{text}: not a model directory (give the folder holding config.json)")
        if _looks_like_path(text):
            raise ModelSpecError(f"{text}: no such directory")
        known = ", ".join(sorted(catalog()))
        raise ModelSpecError(
            f"unknown model {text!r}: not a directory and not in the catalog (known: {known})"
        )
    q = match.group("q") if match else None
    if q is not None and q.lower() == "fp16":
        chosen: float | None = None
    else:
        chosen = float(q) if q is not None else (bpw if bpw is not None else DEFAULT_CATALOG_BPW)
        if not 2.0 <= chosen <= 8.0:
            raise ModelSpecError(f"{text}: EXL2 bits per weight must be between 2.0 and 8.0, got {chosen:g}")
    return _catalog_spec(model_id, chosen)


__all__ = [
    "ModelSpec",
    "TensorInfo",
    "catalog",
    "catalog_config",
    "load_model_spec",
    "parse_config",
    "resolve_catalog_id",
]
