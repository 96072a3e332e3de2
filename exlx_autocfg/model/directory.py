"""Model directories: config.json and the safetensors headers (never the tensor data), checked the way
exllamav2's `ExLlamaV2Config.prepare` / `check_keys` check them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from exlx_autocfg.errors import ModelSpecError
from exlx_autocfg.model.config import parse_config, read_json_file
from exlx_autocfg.model.safetensors import SafetensorsHeader, read_header
from exlx_autocfg.model.spec import ModelSpec, TensorInfo


def load_directory(directory: Path) -> ModelSpec:
    config_path = directory / "config.json"
    raw_config, config = read_json_file(config_path)
    files = sorted(directory.glob("*.safetensors"))  # exllamav2 globs *.safetensors, ignoring the index
    if not files:
        raise ModelSpecError(f"{directory}: no .safetensors files")
    index_path = directory / "model.safetensors.index.json"
    # lexists: a FIFO or a dangling link named like the index is refused by read_json_file, not skipped
    index = read_json_file(index_path)[1] if os.path.lexists(index_path) else None
    return spec_from_parts(
        name=directory.name,
        path=str(directory),
        source="directory",
        where=str(directory),
        raw_config=raw_config,
        config=config,
        config_where=str(config_path),
        headers=[(file.name, read_header(file)) for file in files],
        index=index,
        index_where=str(index_path),
        present={entry.name for entry in directory.iterdir()} if index is not None else None,
    )


def spec_from_parts(
    *,
    name: str,
    path: str | None,
    source: str,
    where: str,
    raw_config: bytes,
    config: Any,
    config_where: str,
    headers: list[tuple[str, SafetensorsHeader]],
    index: Any = None,
    index_where: str = "model.safetensors.index.json",
    present: set[str] | None = None,
    **extra: Any,
) -> ModelSpec:
    """A ModelSpec from config.json's bytes and the safetensors headers (file name -> header), however they
    were read: a model directory and the same files on the Hub give the same tensors and fingerprint.

    The fingerprint is sha256 over the config.json bytes, then for each file in name order its name, a NUL
    and its raw header (8-byte length + JSON)."""
    fields = parse_config(config, where=config_where)
    digest = hashlib.sha256(raw_config)
    tensors: dict[str, TensorInfo] = {}
    for file_name, header in sorted(headers, key=lambda item: item[0]):
        digest.update(file_name.encode() + b"\0" + header.header_bytes)
        for t in header.tensors.values():
            if t.name in tensors:
                raise ModelSpecError(f"{header.path}: tensor {t.name!r} also in {tensors[t.name].file}")
            tensors[t.name] = TensorInfo(t.name, t.dtype, t.shape, t.nbytes, file_name)
    if index is not None:
        _check_index(index_where, index, tensors, where, present)
    spec = ModelSpec(
        name=name,
        path=path,
        source=source,
        tensors=tuple(tensors.values()),
        fingerprint=digest.hexdigest(),
        **fields,
        **extra,
    )
    _check_tensors(spec, where)
    return spec


def _check_index(index_where: str, index: Any, tensors: dict[str, TensorInfo], where: str,
                 present: set[str] | None) -> None:
    """model.safetensors.index.json, when present, must agree with the files exactly: every entry names a
    file that is there and holds that tensor, and every tensor the files hold is listed (Hugging Face
    loaders read the index, not the files: a tensor missing from it is a tensor they never load).
    `present`: the names of every file beside the index (None: not known)."""
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise ModelSpecError(f"{index_where}: no weight_map object")
    shards = {t.file for t in tensors.values()}
    for name, file in weight_map.items():
        if not isinstance(file, str):
            raise ModelSpecError(f"{index_where}: maps {name!r} to {file!r}, which is not a file name")
        info = tensors.get(name)
        if info is not None and info.file == file:
            continue
        mapped = f"{index_where}: maps {name!r} to {file!r}"
        if file not in shards:
            if Path(file).name != file or (present is not None and file not in present):
                raise ModelSpecError(f"{mapped}, which is missing from {where}")
            raise ModelSpecError(f"{mapped}, which is not one of its .safetensors files")
        held = f" (it is in {info.file})" if info is not None else " (no file holds it)"
        raise ModelSpecError(f"{mapped}, which does not hold it{held}")
    unlisted = [name for name in tensors if name not in weight_map]
    if unlisted:
        more = f" and {len(unlisted) - 1} more" if len(unlisted) > 1 else ""
        raise ModelSpecError(
            f"{index_where}: lists {len(weight_map)} of the {len(tensors)} tensors the files hold "
            f"(not listed: {unlisted[0]!r}{more})"
        )


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


def _check_tensors(spec: ModelSpec, directory: str) -> None:
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
