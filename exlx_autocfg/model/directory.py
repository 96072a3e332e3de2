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

from exlx_autocfg.errors import ModelSpecError
from exlx_autocfg.model.architectures import ArchRules, arch_rules, remap_key
from exlx_autocfg.model.config import parse_config, read_json_file, vision_model_type
from exlx_autocfg.model.graph import lm_modules
from exlx_autocfg.model.safetensors import read_header
from exlx_autocfg.model.spec import ModelSpec, TensorInfo

_SUFFIXES = (".q_weight", ".qweight", ".weight", "")  # check_keys, config.py L475
_SWIGLU = (("mlp.swiglu.w12",), ("mlp.swiglu.w3",))  # architecture.py make_fused_mlp L959-966
_LLAMA_MLP = (("mlp.down_proj",), ("mlp.gate_proj",), ("mlp.up_proj",))


def load_directory(directory: Path) -> ModelSpec:
    config_path = directory / "config.json"
    raw_config, config = read_json_file(config_path)
    digest = hashlib.sha256(raw_config)
    rules = arch_rules(config["architectures"][0]) if _one_arch(config) else None
    prep_path = directory / "preprocessor_config.json"
    preprocessor = None
    if isinstance(config, dict) and vision_model_type(config, rules):
        raw_prep, preprocessor = read_json_file(prep_path, missing_ok=True)
        digest.update(b"preprocessor_config.json\0" + raw_prep)
    fields = parse_config(
        config, where=str(config_path), preprocessor=preprocessor, preprocessor_where=str(prep_path)
    )
    rules = arch_rules(fields["architecture"])
    assert rules is not None  # parse_config refused anything else
    files = sorted(directory.glob("*.safetensors"))  # exllamav2 globs *.safetensors, ignoring the index
    if not files:
        raise ModelSpecError(f"{directory}: no .safetensors files")
    tensors: dict[str, TensorInfo] = {}
    raw_names: dict[str, str] = {}
    for file in files:
        header = read_header(file)
        digest.update(file.name.encode() + b"\0" + header.header_bytes)
        for t in header.tensors.values():
            name = remap_key(t.name, rules.keymap)  # stloader.py: exllamav2 sees only remapped names
            if name in tensors:
                raise ModelSpecError(
                    f"{file}: tensor {t.name!r} (as {name!r}) also in {tensors[name].file}"
                    if name != t.name
                    else f"{file}: tensor {t.name!r} also in {tensors[name].file}"
                )
            tensors[name] = TensorInfo(name, t.dtype, t.shape, t.nbytes, file.name)
            raw_names[t.name] = file.name
    _check_index(directory, raw_names)
    fused_mlp = (
        "model.layers.0.mlp.down_proj.weight" not in tensors
        and "model.layers.0.mlp.swiglu.w12.weight" in tensors
    )  # config.py L438-444 (without the language-model prefix, as exllamav2 looks)
    spec = ModelSpec(
        name=directory.name,
        path=str(directory),
        source="directory",
        tensors=tuple(tensors.values()),
        fingerprint=digest.hexdigest(),
        checkpoint_fused_mlp=fused_mlp,
        **fields,
    )
    check_keys(spec, rules, str(directory))
    _check_experts(spec, str(directory))
    _check_shapes(spec, str(directory))
    return spec


def _one_arch(config: object) -> bool:
    if not isinstance(config, dict):
        return False
    archs = config.get("architectures")
    return isinstance(archs, list) and len(archs) == 1 and isinstance(archs[0], str)


def _check_index(directory: Path, raw_names: dict[str, str]) -> None:
    index_path = directory / "model.safetensors.index.json"
    if not index_path.exists():
        return
    _, index = read_json_file(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise ModelSpecError(f"{index_path}: no weight_map object")
    for name, file in weight_map.items():
        if raw_names.get(name) != file:
            raise ModelSpecError(f"{index_path}: maps {name!r} to {file!r}, which does not hold it")


def check_keys(spec: ModelSpec, rules: ArchRules, where: str) -> None:
    """config.py check_keys for the language model (L446-488; the vision tower's and projector's key lists
    are empty in 0.3.2): every expected key present as .q_weight, .qweight, .weight or bare, per layer for
    each group of alternatives, per expert when config.json names more than one expert."""
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
    for layer in range(spec.num_hidden_layers):
        expect += [[f"model.layers.{layer}.{k}" for k in group] for group in layer_keys]
    if rules.lm_prefix:
        expect = [[rules.lm_prefix + k for k in group] for group in expect]
    have = spec.tensor_bytes
    for group in expect:
        if not any(prefix + suffix in have for prefix in group for suffix in _SUFFIXES):
            raise ModelSpecError(
                f"{where}: tensor {group[-1]} missing (exllamav2 0.3.2 expects it for {spec.architecture} "
                f"with {spec.num_hidden_layers} layers{_experts_note(spec)} per config.json)"
            )


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
