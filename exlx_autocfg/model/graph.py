"""The modules exllamav2 0.3.2 builds for a model, as data: `model.py ExLlamaV2.__init__` (L78-172) for the
language model and `vlm/vision_tower.py ExLlamaV2VisionTower.__init__` (L35-225) for the vision tower, with
the linears, norms and fused keys each module constructor (attn.py, mlp.py, moe_mlp.py, parallel_decoder.py,
pos_embedding.py, conv.py) gives itself.

Pure: a ModelSpec in, tuples of ModuleNode out. The memory model sizes these nodes (planner/memory.py,
planner/vision.py); the catalog lays out their tensors (model/layout.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from exlx_autocfg.model.architectures import ArchParams
from exlx_autocfg.model.spec import ModelSpec


@dataclass(frozen=True)
class LinearNode:
    """One ExLlamaV2Linear (linear.py L57-118)."""

    key: str
    in_features: int
    out_features: int  # as constructed, before the pad32 padding
    bias: bool
    pad32: bool = True
    fused_key: str | None = None  # f_key: an unquantized checkpoint stores this linear inside fused_key
    fused_range: tuple[int, int] | None = None  # rows [f_beg, f_end) of the fused tensor
    is_sub_module: bool = True  # False only for lm_head: no temp_fwd in its scratch

    @property
    def padded_out(self) -> int:
        return self.out_features + (-self.out_features % 32 if self.pad32 else 0)


@dataclass(frozen=True)
class ModuleNode:
    """One entry of exllamav2's `model.modules` (or a part of a parallel decoder)."""

    key: str  # exllamav2's module.key
    kind: str  # embedding | pos_embedding | attn | mlp | moe | parallel_decoder | norm | lm_head | conv
    layer: int | None = None
    linears: tuple[LinearNode, ...] = ()
    norms: tuple[str, ...] = ()  # RMSNorm / LayerNorm keys owned by the module
    head_norms: tuple[str, ...] = ()  # q_norm / k_norm (ExLlamaV2HeadNorm) keys
    parts: tuple[ModuleNode, ...] = ()  # parallel decoder: its attention and MLP
    uncounted: tuple[LinearNode, ...] = ()  # loaded but left out of weight_footprint (Mistral 3 patch merger)
    # attention geometry (attn.py L160-173); MLP features (mlp.py L55-63)
    heads: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    hidden: int = 0
    in_features: int = 0
    out_features: int = 0
    interm_features: int = 0
    sliding_window: int = 0
    rope_index: int = 0
    alt_key: str | None = None  # lm_head: where the head falls back to (model.py L152-153)
    channels: int = 0  # conv: in_channels, kernel
    kernel: tuple[int, ...] = ()
    conv_bias: bool = False

    @property
    def has_cache(self) -> bool:
        return self.kind in ("attn", "parallel_decoder")


def _norm_keys(key: str, km: Mapping[str, str], name: str) -> list[str]:
    """The block's input norm (`name`) and, where the architecture has one, its post-norm (`name`_post)."""
    if not (km.get(name) or km.get(f"{name}_post")):
        return []
    return [key + km[name], *([key + km[f"{name}_post"]] if km.get(f"{name}_post") else [])]


def _attn(
    key: str,
    layer: int,
    ap: ArchParams,
    *,
    hidden: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    qkv_bias: bool,
    o_bias: bool,
    has_norm: bool = True,
    qk_norm: bool = False,
    sliding_window: int = 0,
    rope_index: int = 0,
) -> ModuleNode:
    km = ap.keys
    norms = _norm_keys(key, km, "norm_1") if has_norm else []
    b, c = heads * head_dim, heads * head_dim + kv_heads * head_dim
    f_key = key + km["fused_qkv"] if km.get("fused_qkv") else None

    def fused(lo: int, hi: int) -> tuple[str | None, tuple[int, int] | None]:
        return (f_key, (lo, hi)) if f_key else (None, None)

    q = LinearNode(key + km["attn_q"], hidden, b, qkv_bias, True, *fused(0, b))
    k = LinearNode(key + km["attn_k"], hidden, kv_heads * head_dim, qkv_bias, True, *fused(b, c))
    v = LinearNode(
        key + km["attn_v"], hidden, kv_heads * head_dim, qkv_bias, True, *fused(c, c + kv_heads * head_dim)
    )
    o = LinearNode(key + km["attn_o"], b, hidden, o_bias)
    head_norms = (
        (key + ".self_attn.q_norm", key + ".self_attn.k_norm") if qk_norm and not ap.is_vision else ()
    )
    return ModuleNode(
        key,
        "attn",
        layer,
        (q, k, v, o),
        tuple(norms),
        head_norms,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        hidden=hidden,
        sliding_window=sliding_window,
        rope_index=rope_index,
    )


def _mlp(
    key: str,
    layer: int,
    ap: ArchParams,
    *,
    in_features: int,
    out_features: int,
    interm: int,
    bias: bool,
    has_norm: bool = True,
    merge: int | None = None,
    pad32: bool = True,
) -> ModuleNode:
    km = ap.keys
    norms = _norm_keys(key, km, "norm_2") if has_norm else []
    f_key = key + ".mlp." + km["fused_mlp_12"] if km.get("fused_mlp_12") else None
    up_fused = (f_key, (interm, 2 * interm)) if f_key else (None, None)
    linears = [
        LinearNode(key + km["mlp_up"], in_features, interm, bias, pad32, *up_fused),
        LinearNode(key + km["mlp_down"], interm, out_features, bias, pad32),
    ]
    if ap.mlp_gate:
        gate_fused = (f_key, (0, interm)) if f_key else (None, None)
        linears.append(LinearNode(key + km["mlp_gate"], in_features, interm, bias, pad32, *gate_fused))
    uncounted = ()
    if merge and ap.mlp_patch_merger:  # mlp.py L147-151; weight_footprint (L239-255) leaves it out
        uncounted = (LinearNode(key + km["patch_merger"], in_features * merge**2, in_features, bias),)
    return ModuleNode(
        key,
        "mlp",
        layer,
        tuple(linears),
        tuple(norms),
        in_features=in_features,
        out_features=out_features,
        interm_features=interm,
        hidden=out_features,
        uncounted=uncounted,
    )


def _moe(spec: ModelSpec, key: str, layer: int, ap: ArchParams) -> ModuleNode:
    km, h, inter = ap.keys, spec.hidden_size, spec.intermediate_size
    experts = spec.num_experts or 0
    linears: list[LinearNode] = []
    w1, w2, w3 = key + km["mlp_gate"], key + km["mlp_down"], key + km["mlp_up"]
    for pattern, rows, cols in ((w1, h, inter), (w2, inter, h), (w3, h, inter)):
        f_key = pattern.replace(".*.", ".")
        for e in range(experts):
            rng = (e * inter, (e + 1) * inter)
            linears.append(
                LinearNode(pattern.replace("*", str(e)), rows, cols, spec.mlp_bias, True, f_key, rng)
            )
    gate = LinearNode(key + km["mlp_expert_gate"], h, experts, False, pad32=False)
    return ModuleNode(
        key,
        "moe",
        layer,
        (gate, *linears),
        (key + km["norm_2"],),
        hidden=h,
        in_features=h,
        out_features=h,
        interm_features=inter,
    )


def lm_modules(spec: ModelSpec) -> tuple[ModuleNode, ...]:
    """model.py ExLlamaV2.__init__: embedding, learned positions (GPT-2, BigCode), per layer attention + MLP
    (or MoE, or one parallel decoder), final norm, lm_head."""
    rules, ap = spec.rules, spec.rules.lm
    km, prefix = ap.keys, rules.lm_prefix
    h = spec.hidden_size
    out = [ModuleNode(prefix + "model.embed_tokens", "embedding", hidden=h)]
    if km.get("learned_pos_emb"):
        out.append(ModuleNode(km["learned_pos_emb"], "pos_embedding", hidden=h))
    geometry = dict(
        hidden=h,
        heads=spec.num_attention_heads,
        kv_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        qkv_bias=spec.attention_bias_qkv,
        o_bias=spec.attention_bias_o,
        qk_norm=spec.use_qk_norm,
    )
    for layer in range(spec.num_hidden_layers):
        key = f"{prefix}model.layers.{layer}"
        swa = spec.sliding_window_of(layer)
        rope_index = (
            1
            if (ap.alternating_swa and spec.sliding_window_pattern > 1 and swa and spec.rope_theta_alt)
            else 0
        )
        mlp_kw = dict(in_features=h, out_features=h, interm=spec.intermediate_size, bias=spec.mlp_bias)
        if ap.parallel_decoder_blocks:
            attn = _attn(
                key, layer, ap, has_norm=False, sliding_window=swa, rope_index=rope_index, **geometry
            )
            mlp = _mlp(key, layer, ap, has_norm=False, **mlp_kw)
            out.append(
                ModuleNode(
                    key,
                    "parallel_decoder",
                    layer,
                    attn.linears + mlp.linears,
                    (key + km["norm_1"],),
                    attn.head_norms,
                    parts=(attn, mlp),
                    hidden=h,
                    sliding_window=swa,
                )
            )
            continue
        out.append(_attn(key, layer, ap, sliding_window=swa, rope_index=rope_index, **geometry))
        out.append(_moe(spec, key, layer, ap) if ap.is_moe else _mlp(key, layer, ap, **mlp_kw))
    out.append(ModuleNode(prefix + "model.norm", "norm", norms=(prefix + "model.norm",), hidden=h))
    alt = spec.head_alt_key
    head = LinearNode(prefix + "lm_head", h, spec.vocab_size, False, is_sub_module=False)
    out.append(
        ModuleNode(prefix + "lm_head", "lm_head", linears=(head,), alt_key=prefix + alt if alt else None)
    )
    return tuple(out)


def vision_modules(spec: ModelSpec) -> tuple[ModuleNode, ...]:
    """vision_tower.py ExLlamaV2VisionTower.__init__ L125-225: patch convolution, input norm (Pixtral),
    learned position embedding (SigLIP), per layer attention + MLP, output norm (SigLIP), then the projector
    (an MLP, or Gemma 3's norm + linear)."""
    v, arch = spec.vision, spec.rules.vision
    if v is None or arch is None:
        return ()
    vt, mmp, vkm = arch.vt, arch.mmp, arch.vt.keys
    kernel = (
        (v.temporal_patch_size or 0, v.patch_size, v.patch_size)
        if vt.vision_conv3d
        else (v.patch_size, v.patch_size)
    )
    out = [
        ModuleNode(
            arch.vt_prefix + vkm["patch_conv"],
            "conv",
            hidden=v.hidden_size,
            channels=v.num_channels,
            kernel=kernel,
            conv_bias=vt.patch_conv_bias,
        )
    ]
    if vt.vision_input_norm:
        out.append(
            ModuleNode(arch.vt_prefix + vkm["ln_pre"], "norm", norms=(arch.vt_prefix + vkm["ln_pre"],))
        )
    if vt.learned_emb:
        out.append(
            ModuleNode(arch.vt_prefix + vkm["position_embedding"], "pos_embedding", hidden=v.hidden_size)
        )
    for layer in range(v.num_layers):
        key = f"{arch.vt_prefix}{vkm['layers']}.{layer}"
        out.append(
            _attn(
                key,
                layer,
                vt,
                hidden=v.hidden_size,
                heads=v.num_attention_heads,
                kv_heads=v.num_key_value_heads,
                head_dim=v.head_dim,
                qkv_bias=vt.attention_bias_qkv,
                o_bias=vt.attention_bias_o,
            )
        )
        out.append(
            _mlp(
                key,
                layer,
                vt,
                in_features=v.hidden_size,
                out_features=v.hidden_size,
                interm=v.intermediate_size,
                bias=vt.mlp_bias,
                pad32=False,
            )
        )
    if vt.output_norm:
        out.append(
            ModuleNode(
                arch.vt_prefix + vkm["output_norm"], "norm", norms=(arch.vt_prefix + vkm["output_norm"],)
            )
        )
    if vt.mlp_merger:
        merge = v.spatial_merge_size**2
        bias = arch.projector_bias(v)
        out.append(
            _mlp(
                arch.mmp_prefix,
                0,
                mmp,
                in_features=v.hidden_size * merge,
                out_features=spec.hidden_size,
                interm=v.merger_intermediate_size or 0,
                bias=bias,
                merge=merge,
                pad32=False,
            )
        )
    else:
        norm = arch.mmp_prefix + mmp.keys["input_projection_norm"]
        proj = LinearNode(
            arch.mmp_prefix + mmp.keys["input_projection"],
            v.hidden_size,
            spec.hidden_size,
            False,
            pad32=False,
        )
        out.append(ModuleNode(norm, "norm", norms=(norm,)))
        out.append(ModuleNode(proj.key, "linear", linears=(proj,)))
    return tuple(out)
