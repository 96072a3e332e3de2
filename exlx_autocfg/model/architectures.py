"""How exllamav2 0.3.2 builds each architecture it recognises: its `ExLlamaV2ArchParams`, as data.

The rules live in `profiles/models.toml` (`[architectures.*]`, `[arch_keys]`, `[arch_params]`,
`[arch_key_groups]`, `[arch_keymaps]`, each with its line in exllamav2's `architecture.py`); this module
types them. An architecture missing from the table is one exllamav2 0.3.2 does not recognise: it would load
it as Llama (architecture.py L924-927), which is refused here.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from exlx_autocfg.data import load_data

if TYPE_CHECKING:
    from exlx_autocfg.model.vision import VisionSpec

RopeStyle = str  # "neox" | "gptj" | "none" (architecture.py RopeStyle)


def _none(value: Any) -> Any:
    """TOML has no null: "" and 0 stand for exllamav2's None."""
    return None if value in ("", 0, 0.0) and not isinstance(value, bool) else value


@dataclass(frozen=True)
class ArchParams:
    """One `Params` object of exllamav2 (the language model `lm`, the vision tower `vt` or the projector
    `mmp`): the module key suffixes and the flags memory, layout and backend choice depend on."""

    keys: Mapping[str, str | None]
    norm: str = "rmsnorm"
    headnorm: str = "layernorm"
    rope_style: RopeStyle = "neox"
    swa: bool = False
    alternating_swa: bool = False
    sliding_rope_theta: float | None = None
    sliding_rope_scale: float | None = None
    pos_id_index: int = 0
    eager_attn_only: bool = False
    attention_bias_qkv: bool = False
    attention_bias_o: bool = False
    mlp_bias: bool = False
    default_inner_dim_mult: int | None = None
    mlp_gate: bool = True
    is_moe: bool = False
    parallel_decoder_blocks: bool = False
    mqa: bool = False
    residual_stream_fp32: bool = False
    fused_qkv_altpack: bool = False
    supports_tp: bool = False
    mrope: bool = False
    rope_freq_half: bool = False
    mlp_act_func: str = "silu"
    # vision tower / projector only (architecture.py L239-249)
    is_vision: bool = False
    patch_conv_bias: bool = False
    vision_input_norm: bool = True
    vision_conv3d: bool = False
    learned_emb: bool = False
    output_norm: bool = False
    mlp_merger: bool = False
    mlp_patch_merger: bool = False
    layer_keys: tuple[tuple[str, ...], ...] = ()
    expect_keys: tuple[tuple[str, ...], ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def key(self, name: str) -> str | None:
        return self.keys.get(name)


@dataclass(frozen=True)
class VisionArch:
    """The vision tower (`vt`) and multimodal projector (`mmp`) exllamav2 builds for a multimodal model."""

    vt_prefix: str
    mmp_prefix: str
    vt: ArchParams
    mmp: ArchParams
    # Pixtral / Mistral 3: mmp.mlp_bias = bool(config.get("multimodal_projector_bias", True))
    mmp_bias_from_config: str | None = None

    def projector_bias(self, vision: VisionSpec) -> bool:
        """Whether the projector's linears have a bias: from the config where this architecture reads it."""
        return bool(vision.multimodal_projector_bias) if self.mmp_bias_from_config else self.mmp.mlp_bias


@dataclass(frozen=True)
class ArchRules:
    name: str
    lm: ArchParams
    lm_prefix: str = ""
    keymap: tuple[tuple[str, str], ...] = ()
    orig_weights_transposed: bool = False
    # recognised only when config.json's vision_config.model_type is this (Pixtral / Mistral 3)
    requires_vision_model_type: str | None = None
    # exllamav2 writes this into config vision_config.model_type (Qwen2-VL); needs a vision_config
    sets_vision_model_type: str | None = None
    # GLM-4: lm.attention_bias_qkv = config.get("attention_bias", False)
    attention_bias_qkv_from_config: bool = False
    vision: VisionArch | None = None
    source: str = ""

    @property
    def uses_swa(self) -> bool:
        """Whether exllamav2 gives layers a sliding window and its arch_compat_overrides treat the model as
        SWA (config.py L650, L666), whatever config.json's sliding_window says."""
        return self.lm.swa or self.lm.alternating_swa

    @property
    def moe(self) -> bool:
        return self.lm.is_moe

    @property
    def parallel_decoder(self) -> bool:
        return self.lm.parallel_decoder_blocks


def _params(data: dict[str, Any], entry: dict[str, Any], keys_key: str, base_keys: Mapping) -> ArchParams:
    groups = data["arch_key_groups"]
    keys = dict(base_keys)
    keys.update({k: _none(v) for k, v in entry.get(keys_key, {}).items()})
    flags = {k: v for k, v in entry.items() if k in ArchParams.__dataclass_fields__}
    for name in ("sliding_rope_theta", "sliding_rope_scale", "default_inner_dim_mult"):
        if name in flags:
            flags[name] = _none(flags[name])
    layer_keys = tuple(tuple(alts) for g in entry.get("layer_keys", []) for alts in groups[g])
    expect_keys = tuple(tuple(alts) for g in entry.get("expect_keys", []) for alts in groups[g])
    return ArchParams(
        keys=MappingProxyType(keys),
        layer_keys=layer_keys,
        expect_keys=expect_keys,
        defaults=MappingProxyType(dict(entry.get("defaults", {}))),
        **{k: v for k, v in flags.items() if k not in ("keys", "layer_keys", "expect_keys", "defaults")},
    )


def supported_architectures() -> tuple[str, ...]:
    return tuple(sorted(load_data("models.toml")["architectures"]))


@functools.cache
def arch_rules(name: str) -> ArchRules | None:
    """The rules for `name` (config.json `architectures[0]`), or None when exllamav2 0.3.2 does not
    recognise it (and would load it as Llama)."""
    data = load_data("models.toml")
    entry = data["architectures"].get(name)
    if entry is None:
        return None
    base_keys = {k: _none(v) for k, v in data["arch_keys"].items() if k != "source"}
    base_flags = {k: v for k, v in data["arch_params"].items() if k != "source"}
    merged = {**base_flags, **entry}
    lm = _params(data, merged, "keys", base_keys)
    vision = None
    if "vision" in entry:
        v = entry["vision"]
        # exllamav2 __init__ L259-269: mmp keys lose the norms and fused MLP, mmp has no RoPE; vt is_vision
        mmp_base = {
            **base_keys,
            "norm_1": None,
            "norm_1_post": None,
            "norm_2": None,
            "norm_2_post": None,
            "fused_mlp_12": None,
            "fused_mlp_3": None,
        }
        mmp_entry = {k: val for k, val in v.get("mmp", {}).items() if not k.startswith("mlp_bias_")}
        vt = _params(data, {**base_flags, **v.get("vt", {}), "keys": v.get("vt_keys", {})}, "keys", base_keys)
        mmp = _params(
            data,
            {**base_flags, "rope_style": "none", **mmp_entry, "keys": v.get("mmp_keys", {})},
            "keys",
            mmp_base,
        )
        vision = VisionArch(
            vt_prefix=v["vt_prefix"],
            mmp_prefix=v["mmp_prefix"],
            vt=replace(vt, is_vision=True),
            mmp=mmp,
            mmp_bias_from_config=v.get("mmp", {}).get("mlp_bias_from_config"),
        )
    keymap = tuple(tuple(pair) for pair in data["arch_keymaps"][entry["keymap"]]) if "keymap" in entry else ()
    return ArchRules(
        name=name,
        lm=lm,
        lm_prefix=entry.get("lm_prefix", ""),
        keymap=keymap,  # type: ignore[arg-type]
        orig_weights_transposed=bool(merged.get("orig_weights_transposed", False)),
        requires_vision_model_type=entry.get("requires_vision_model_type"),
        sets_vision_model_type=entry.get("sets_vision_model_type"),
        attention_bias_qkv_from_config=bool(entry.get("attention_bias_qkv_from_config", False)),
        vision=vision,
        source=entry.get("source", ""),
    )


def remap_key(key: str, keymap: tuple[tuple[str, str], ...]) -> str:
    """A tensor name as exllamav2 sees it after its keymap (stloader.py remap_dict L98-110): each pair in
    order; a pattern starting with "$" only matches at the start of the name."""
    for old, new in keymap:
        if old.startswith("$") and key.startswith(old[1:]):
            key = ("$" + key).replace(old, new)
        else:
            key = key.replace(old, new)
    return key
