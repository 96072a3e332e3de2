"""Model directories: config.json, preprocessor_config.json (multimodal models) and the safetensors headers
(never the tensor data), checked the way exllamav2 0.3.2's `ExLlamaV2Config.prepare` checks them: its keymap
applied to every tensor name, its `check_keys` per architecture (config.py L446-490), plus what it does not
check but would load wrongly (an expert count config.json and the tensors disagree on, a q_invperm whose rows
disagree with config.json).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from exlx_autocfg.errors import ModelSpecError
from exlx_autocfg.model.architectures import ArchRules, arch_rules, remap_key
from exlx_autocfg.model.config import parse_config, read_json_file, vision_model_type
from exlx_autocfg.model.graph import lm_modules
from exlx_autocfg.model.safetensors import SafetensorsHeader, read_header
from exlx_autocfg.model.spec import ModelSpec, TensorInfo

_SUFFIXES = (".q_weight", ".qweight", ".weight", "")  # check_keys, config.py L475
_SWIGLU = (("mlp.swiglu.w12",), ("mlp.swiglu.w3",))  # architecture.py make_fused_mlp L959-966
_LLAMA_MLP = (("mlp.down_proj",), ("mlp.gate_proj",), ("mlp.up_proj",))


def load_directory(directory: Path) -> ModelSpec:
    config_path = directory / "config.json"
    raw_config, config = read_json_file(config_path)
    prep_path = directory / PREPROCESSOR_FILE
    raw_prep, preprocessor = b"", None
    if needs_preprocessor(config):
        raw_prep, preprocessor = read_json_file(prep_path, missing_ok=True)
    files = sorted(directory.glob("*.safetensors"))  # exllamav2 globs *.safetensors, ignoring the index
    if not files:
        raise ModelSpecError(f"{directory}: no .safetensors files")
    index_path = directory / "model.safetensors.index.json"
    # missing_ok skips only an absent index: a FIFO or a dangling link named like it is refused
    _, index = read_json_file(index_path, missing_ok=True)
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
        raw_preprocessor=raw_prep,
        preprocessor=preprocessor,
        preprocessor_where=str(prep_path),
    )


PREPROCESSOR_FILE = "preprocessor_config.json"


def needs_preprocessor(config: Any) -> bool:
    """Whether exllamav2 would build a vision tower for this config.json, and so read
    preprocessor_config.json (its image size and patch merging size the tower)."""
    rules = arch_rules(config["architectures"][0]) if _one_arch(config) else None
    return isinstance(config, dict) and bool(vision_model_type(config, rules))


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
    raw_preprocessor: bytes = b"",
    preprocessor: Any = None,
    preprocessor_where: str = PREPROCESSOR_FILE,
    **extra: Any,
) -> ModelSpec:
    """A ModelSpec from config.json's bytes and the safetensors headers (file name -> header), however they
    were read: a model directory and the same files on the Hub give the same tensors and fingerprint.

    The fingerprint is sha256 over the config.json bytes, then (for a model with a vision tower)
    "preprocessor_config.json", a NUL and that file's bytes (none when it is absent), then for each
    safetensors file in name order its name, a NUL and its raw header (8-byte length + JSON)."""
    digest = hashlib.sha256(raw_config)
    if needs_preprocessor(config):
        digest.update(PREPROCESSOR_FILE.encode() + b"\0" + raw_preprocessor)
    fields = parse_config(
        config, where=config_where, preprocessor=preprocessor, preprocessor_where=preprocessor_where
    )
    rules = arch_rules(fields["architecture"])
    assert rules is not None  # parse_config refused anything else
    tensors: dict[str, TensorInfo] = {}
    raw_names: dict[str, str] = {}  # the names as stored (the index lists those) -> file
    for file_name, header in sorted(headers, key=lambda item: item[0]):
        digest.update(file_name.encode() + b"\0" + header.header_bytes)
        for t in header.tensors.values():
            tensor = remap_key(t.name, rules.keymap)  # stloader.py: exllamav2 sees only remapped names
            if tensor in tensors:
                also = f" (as {tensor!r})" if tensor != t.name else ""
                raise ModelSpecError(
                    f"{header.path}: tensor {t.name!r}{also} also in {tensors[tensor].file}"
                )
            tensors[tensor] = TensorInfo(tensor, t.dtype, t.shape, t.nbytes, file_name)
            raw_names[t.name] = file_name
    if index is not None:
        _check_index(index_where, index, raw_names, where, present)
    fused_mlp = (
        "model.layers.0.mlp.down_proj.weight" not in tensors
        and "model.layers.0.mlp.swiglu.w12.weight" in tensors
    )  # config.py L438-444 (without the language-model prefix, as exllamav2 looks)
    spec = ModelSpec(
        name=name,
        path=path,
        source=source,
        tensors=tuple(tensors.values()),
        fingerprint=digest.hexdigest(),
        checkpoint_fused_mlp=fused_mlp,
        **fields,
        **extra,
    )
    check_keys(spec, rules, where)
    if spec.vision is not None and spec.vision.num_layers > len(spec.tensors):
        raise ModelSpecError(
            f"{where}: config.json says the vision tower has {spec.vision.num_layers} layers, but the "
            f"safetensors files hold {len(spec.tensors)} tensors in all"
        )
    _check_experts(spec, where)
    _check_shapes(spec, where)
    return spec


def _one_arch(config: object) -> bool:
    if not isinstance(config, dict):
        return False
    archs = config.get("architectures")
    return isinstance(archs, list) and len(archs) == 1 and isinstance(archs[0], str)


def _check_index(
    index_where: str, index: Any, raw_names: dict[str, str], where: str, present: set[str] | None
) -> None:
    """model.safetensors.index.json, when present, must agree with the files exactly: every entry names a
    file that is there and holds that tensor, and every tensor the files hold is listed (Hugging Face
    loaders read the index, not the files: a tensor missing from it is a tensor they never load).
    `raw_names`: tensor name as stored -> file; `present`: the names of every file beside the index
    (None: not known)."""
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise ModelSpecError(f"{index_where}: no weight_map object")
    shards = set(raw_names.values())
    for name, file in weight_map.items():
        if not isinstance(file, str):
            raise ModelSpecError(f"{index_where}: maps {name!r} to {file!r}, which is not a file name")
        held_in = raw_names.get(name)
        if held_in == file:
            continue
        mapped = f"{index_where}: maps {name!r} to {file!r}"
        if file not in shards:
            if Path(file).name != file or (present is not None and file not in present):
                raise ModelSpecError(f"{mapped}, which is missing from {where}")
            raise ModelSpecError(f"{mapped}, which is not one of its .safetensors files")
        held = f" (it is in {held_in})" if held_in is not None else " (no file holds it)"
        raise ModelSpecError(f"{mapped}, which does not hold it{held}")
    unlisted = [name for name in raw_names if name not in weight_map]
    if unlisted:
        more = f" and {len(unlisted) - 1} more" if len(unlisted) > 1 else ""
        raise ModelSpecError(
            f"{index_where}: lists {len(weight_map)} of the {len(raw_names)} tensors the files hold "
            f"(not listed: {unlisted[0]!r}{more})"
        )


def check_keys(spec: ModelSpec, rules: ArchRules, where: str) -> None:
    """config.py check_keys for the language model (L446-488; the vision tower's and projector's key lists
    are empty in 0.3.2): every expected key present as .q_weight, .qweight, .weight or bare, per layer for
    each group of alternatives, per expert when config.json names more than one expert."""
    if spec.num_hidden_layers > len(spec.tensors):  # before expecting each of 2**40 layers' tensors
        raise ModelSpecError(
            f"{where}: config.json says num_hidden_layers {spec.num_hidden_layers}, but the safetensors "
            f"files hold {len(spec.tensors)} tensors in all (each layer has several)"
        )
    experts = spec.config_num_experts or 0
    if experts > len(spec.tensors):
        raise ModelSpecError(
            f"{where}: config.json says {experts} experts, but the safetensors files hold "
            f"{len(spec.tensors)} tensors in all"
        )
    lm = rules.lm
    expect = [list(group) for group in lm.expect_keys]
    if spec.tie_word_embeddings and ["lm_head"] in expect:  # architecture.py L946-951
        expect.remove(["lm_head"])
    layer_keys = list(lm.layer_keys)
    if spec.checkpoint_fused_mlp:
        layer_keys = [g for g in layer_keys if g not in _LLAMA_MLP] + list(_SWIGLU)
    experts = spec.config_num_experts
    if experts and experts != 1:
        layer_keys = sorted(
            {tuple(k.replace(".*.", f".{e}.") for k in group) for e in range(experts) for group in layer_keys}
        )
    have, prefix = spec.tensor_bytes, rules.lm_prefix

    def need(group: list[str]) -> None:
        if not any(prefix + key + suffix in have for key in group for suffix in _SUFFIXES):
            raise ModelSpecError(
                f"{where}: tensor {prefix}{group[-1]} missing (exllamav2 0.3.2 expects it for "
                f"{spec.architecture} with {spec.num_hidden_layers} layers{_experts_note(spec)} "
                "per config.json)"
            )

    # In exllamav2's order, checked as they come: a layer count the files do not hold fails at its first
    # missing layer instead of after listing every key of every layer.
    for group in expect:
        need(group)
    for layer in range(spec.num_hidden_layers):
        for group in layer_keys:
            need([f"model.layers.{layer}.{k}" for k in group])


def _experts_note(spec: ModelSpec) -> str:
    return f" and {spec.config_num_experts} experts" if spec.config_num_experts else ""


def _check_experts(spec: ModelSpec, where: str) -> None:
    """An MoE checkpoint with more experts than config.json says loads silently with the extra ones ignored;
    fewer fails check_keys. Either way config.json and the tensors disagree: say so with both numbers."""
    if not spec.is_moe:
        return
    pattern = spec.lm_prefix + "model.layers.0" + spec.rules.lm.keys["mlp_gate"]
    regex = re.compile(re.escape(pattern).replace(r"\*", r"(\d+)") + r"\.")
    found = {int(m.group(1)) for name in spec.tensor_bytes if (m := regex.match(name))}
    if not found:  # a fused-experts checkpoint (DBRX as published): one tensor for all experts
        return
    if len(found) != spec.num_experts or max(found) != len(found) - 1:
        key = "num_local_experts" if spec.architecture != "Qwen3MoeForCausalLM" else "num_experts"
        raise ModelSpecError(
            f"{where}/config.json: {key} is {spec.num_experts} but layer 0 holds {len(found)} experts "
            f"({pattern.replace('*', 'N')} for N in {min(found)}..{max(found)})"
        )


def _check_shapes(spec: ModelSpec, where: str) -> None:
    """What config.json promises against what the headers hold: the embedding, and the input rows of every
    EXL2 linear (q_invperm), which would otherwise fail only deep inside the CUDA kernels."""
    have = {t.name: t for t in spec.tensors}
    emb_key = spec.lm_prefix + "model.embed_tokens.weight"
    emb = have.get(emb_key)
    if (
        emb is None
        or len(emb.shape) != 2
        or emb.shape[1] != spec.hidden_size
        or emb.shape[0] < spec.vocab_size
    ):
        got = list(emb.shape) if emb is not None else "missing"
        raise ModelSpecError(
            f"{where}: {emb_key} shape {got} != [{spec.vocab_size}, {spec.hidden_size}] from config.json"
        )
    for node in lm_modules(spec):
        for lin in node.linears:
            invperm = have.get(f"{lin.key}.q_invperm")
            if invperm is not None and invperm.shape != (lin.in_features,):
                raise ModelSpecError(
                    f"{where}: {lin.key}.q_invperm shape {list(invperm.shape)} != [{lin.in_features}] "
                    "(in_features from config.json)"
                )
