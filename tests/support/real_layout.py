"""Checkpoint tensors for test fixtures, from the real exllamav2 0.3.2 wheel, not from the code under test.

* Which tensors exist, with which in/out features, biases and fused keys: the real `ExLlamaV2(config)` (and
  `ExLlamaV2VisionTower(config)`) module graph, walked the way `conversion/compile.py compile_model` walks it.
* The shapes of an EXL2 linear: the real `QParams` option tables of `conversion/qparams.py` and the real
  `AdaptiveGPTQ.configure` (group counts), filled group by group the way `AdaptiveGPTQ.quantize` / `pack`
  fill them (pack itself needs CUDA, so its loop is followed here from reading adaptivegptq.py L608-680).
* Names in an unquantized checkpoint of an architecture with a keymap (GPT-2, BigCode, DBRX, InternLM2): the
  original Hugging Face names, which exllamav2's keymap must turn back into its own (checked here).
* The vision tower and projector of an unquantized checkpoint: the Hugging Face layouts (transformers'
  SigLIP, Pixtral, Mistral 3 and Qwen2-VL modeling code), keyed by the real tower modules.
"""

from __future__ import annotations

import math
from typing import Any

from tests.support.standin import import_exllamav2

Tensor = tuple[str, str, tuple[int, ...]]
_ST = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}


def _exl2():
    exl2 = import_exllamav2()
    from exllamav2.conversion import adaptivegptq, qparams

    return exl2, adaptivegptq, qparams


# ---------------------------------------------------------------------------------------------- EXL2 shapes


def pack_shapes(key: str, rows: int, columns: int, qp: Any, bias: bool) -> list[Tensor]:
    """The tensors AdaptiveGPTQ.pack writes for a (rows = in_features, columns = out_features) layer."""
    _, adaptivegptq, _ = _exl2()
    q = object.__new__(adaptivegptq.AdaptiveGPTQ)  # __init__ wants an nn.Linear; configure needs only rows
    q.rows, q.columns = rows, columns
    q.configure(qp.group_size, qp.bits, qp.bits_prop, qp.scale_bits)
    groups: list[tuple[int, int]] = []  # (bits, rows) as quantize() fills them: b = min(a + gs, rows)
    a = 0
    for bits, count in zip(q.bits, q.bits_groups, strict=True):
        for _ in range(count):
            b = min(a + q.group_size[bits], rows)
            groups.append((bits, b - a))
            a = b
    padding = -columns % 32
    qrows = 0
    rem = rows
    for bits, _ in groups:  # pack(): rows = min(group_size[bits], rem_rows); qrows = ceil(rows / (32 / bits))
        take = min(q.group_size[bits], rem)
        qrows += math.ceil(take / (32 / bits))
        rem -= take
    out = [
        (f"{key}.q_invperm", "I32", (rows,)),
        (f"{key}.q_scale_max", "F16", (len(groups),)),
        (f"{key}.q_groups", "I16", (2 * len(groups),)),
    ]
    if bias:
        out.append((f"{key}.bias", "F16", (columns,)))
    out += [
        (f"{key}.q_scale", "I32", (len(groups), (columns + padding) * qp.scale_bits // 32)),
        (f"{key}.q_weight", "I32", (qrows, columns + padding)),
    ]
    return out


def qparams_for(bpw: float, head_bits: int) -> tuple[list, list, Any]:
    """The real option rows of qparams.py closest to `bpw` (attention q/k/v/o, MLP gate/up/down) and the head
    option for `head_bits`, as the converter's optimizer would pick one row per layer."""
    _, _, qparams = _exl2()

    def mean_bpw(row: list) -> float:
        return sum(qp.bpw((4096, 4096)) for qp in row) / len(row)

    attn = min(qparams.qparams_attn, key=lambda row: abs(mean_bpw(row) - bpw))
    mlp = min(qparams.qparams_mlp, key=lambda row: abs(mean_bpw(row) - bpw))
    return attn, mlp, qparams.qparams_headoptions[head_bits]


# ------------------------------------------------------------------------------------------- the LM modules


def _linear_tensors(
    lin: Any, quant: str, qp: Any, fdt: str, fused: dict[str, int], transposed: bool, use_fused: bool = True
) -> list[Tensor]:
    rows, cols = lin.in_features, lin.out_features - lin.padding
    if quant == "exl2":
        return pack_shapes(lin.key, rows, cols, qp, lin.has_bias)
    if lin.f_key and use_fused:
        if lin.f_key in fused:  # the fused tensor is written once, sized to the last part's end
            fused[lin.f_key] = max(fused[lin.f_key], lin.f_end)
            return []
        fused[lin.f_key] = lin.f_end
        # the dimension not sliced by [f_beg, f_end): in_features, or out_features when the slice runs along
        # the input (DBRX w2, which load_weight_fused transposes after slicing)
        width = lin.in_features if lin.out_features - lin.padding == lin.f_end - lin.f_beg else cols
        bias = [(f"@fusedbias:{lin.f_key}", fdt, ())] if lin.has_bias else []
        return [(f"@fused:{lin.f_key}", fdt, (width,)), *bias]
    shape = (rows, cols) if transposed else (cols, rows)
    out = [(f"{lin.key}.weight", fdt, shape)]
    if lin.has_bias:
        out.append((f"{lin.key}.bias", fdt, (cols,)))
    return out


def _resolve_fused(tensors: list[Tensor], fused: dict[str, int], transposed: bool) -> list[Tensor]:
    out = []
    for name, dt, shape in tensors:
        if name.startswith("@fused:"):
            key = name.removeprefix("@fused:")
            out.append(
                (f"{key}.weight", dt, (shape[0], fused[key]) if transposed else (fused[key], shape[0]))
            )
        elif name.startswith("@fusedbias:"):
            key = name.removeprefix("@fusedbias:")
            out.append((f"{key}.bias", dt, (fused[key],)))
        else:
            out.append((name, dt, shape))
    return out


def lm_tensors(
    model_dir: str, quant: str, bpw: float, head_bits: int, torch_dtype: str, norm_bias: bool
) -> list[Tensor]:
    """Every language-model tensor of the checkpoint, in compile.py order, from the real module graph."""
    exl2, _, _ = _exl2()
    from exllamav2.attn import ExLlamaV2Attention
    from exllamav2.embedding import ExLlamaV2Embedding
    from exllamav2.layernorm import ExLlamaV2LayerNorm
    from exllamav2.linear import ExLlamaV2Linear
    from exllamav2.mlp import ExLlamaV2MLP
    from exllamav2.moe_mlp import ExLlamaV2MoEMLP
    from exllamav2.parallel_decoder import ExLlamaV2ParallelDecoder
    from exllamav2.pos_embedding import ExLlamaV2PosEmbedding
    from exllamav2.rmsnorm import ExLlamaV2RMSNorm

    config = exl2.ExLlamaV2Config()
    config.model_dir = model_dir
    config.prepare(no_tensors=True)
    model = exl2.ExLlamaV2(config)
    fdt = "F16" if quant == "exl2" else _ST.get(torch_dtype, "F16")
    transposed = quant == "fp16" and config.arch.orig_weights_transposed
    attn_qp, mlp_qp, head_qp = qparams_for(bpw, head_bits)
    h = config.hidden_size
    out: list[Tensor] = []
    fused: dict[str, int] = {}

    def norm(m: Any) -> None:
        if m is None:
            return
        out.append((f"{m.key}.weight", fdt, (h,)))
        if norm_bias and isinstance(m, ExLlamaV2LayerNorm):
            out.append((f"{m.key}.bias", fdt, (h,)))

    def head_norm(m: Any) -> None:
        if m is not None:  # compile.py writes headnorm.get_weight(): expanded to (heads, head_dim) on load
            shape = (m.num_heads, m.head_dim) if quant == "exl2" else (m.head_dim,)
            out.append((f"{m.key}.weight", fdt, shape))

    def linears(ms: list, qps: list, use_fused: bool = True) -> None:
        for m, qp in zip(ms, qps, strict=True):
            out.extend(_linear_tensors(m, quant, qp, fdt, fused, transposed, use_fused))

    def attn(a: Any) -> None:
        linears([a.q_proj, a.k_proj, a.v_proj, a.o_proj], attn_qp)

    def mlp(m: Any) -> None:
        parts = [m.gate_proj, m.up_proj, m.down_proj] if m.gate_proj is not None else [m.up_proj, m.down_proj]
        linears(parts, mlp_qp[-len(parts) :])

    for module in model.modules:
        if isinstance(module, ExLlamaV2Embedding | ExLlamaV2PosEmbedding):
            rows = config.vocab_size if isinstance(module, ExLlamaV2Embedding) else module.native_ctx_size
            out.append((f"{module.key}.weight", fdt, (rows, h)))
        elif isinstance(module, ExLlamaV2Attention):
            norm(module.pre_layernorm)
            norm(module.post_layernorm)
            attn(module)
            head_norm(module.q_norm)
            head_norm(module.k_norm)
        elif isinstance(module, ExLlamaV2MLP):
            norm(module.pre_layernorm)
            norm(module.post_layernorm)
            mlp(module)
        elif isinstance(module, ExLlamaV2MoEMLP):
            norm(module.post_attention_layernorm)
            gate = module.gate
            out.append((f"{gate.key}.weight", fdt, (gate.out_features - gate.padding, gate.in_features)))
            # every MoE linear has an f_key (moe_mlp.py L73-80), but only DBRX publishes its experts fused
            fused_experts = config.arch.arch_string == "DbrxForCausalLM"
            for i in range(config.num_experts):
                linears([module.w1[i], module.w3[i], module.w2[i]], mlp_qp, fused_experts)
        elif isinstance(module, ExLlamaV2ParallelDecoder):
            norm(module.input_layernorm)
            attn(module.attn)
            head_norm(module.attn.q_norm)
            head_norm(module.attn.k_norm)
            mlp(module.mlp)
        elif isinstance(module, ExLlamaV2RMSNorm | ExLlamaV2LayerNorm):
            norm(module)
        elif isinstance(module, ExLlamaV2Linear):  # lm_head
            if quant == "exl2":
                out.extend(
                    pack_shapes(
                        module.key, module.in_features, module.out_features - module.padding, head_qp, False
                    )
                )
            elif ["lm_head"] in config.arch.lm.expect_keys:
                out.append((f"{module.key}.weight", fdt, (module.out_features - module.padding, h)))
        else:
            raise AssertionError(f"unexpected module {type(module).__name__}")
    return _resolve_fused(out, fused, transposed)


# ------------------------------------------------------------------------------------------- vision towers


def vision_tensors(model_dir: str, torch_dtype: str) -> list[Tensor]:
    """The vision tower and projector as a Hugging Face checkpoint stores them (the EXL2 converter copies them
    unchanged), named by the real ExLlamaV2VisionTower modules."""
    exl2, _, _ = _exl2()
    from exllamav2.attn import ExLlamaV2Attention
    from exllamav2.conv import ExLlamaV2Conv
    from exllamav2.layernorm import ExLlamaV2LayerNorm
    from exllamav2.linear import ExLlamaV2Linear
    from exllamav2.mlp import ExLlamaV2MLP
    from exllamav2.pos_embedding import ExLlamaV2PosEmbedding
    from exllamav2.rmsnorm import ExLlamaV2RMSNorm
    from exllamav2.vlm.vision_tower import ExLlamaV2VisionTower

    config = exl2.ExLlamaV2Config(model_dir)  # the LM tensors must already be there (check_keys)
    tower = ExLlamaV2VisionTower(config)
    dt = _ST.get(torch_dtype, "BF16")
    d = config.vision_hidden_size
    out: list[Tensor] = []
    fused: dict[str, int] = {}

    def lin(m: Any) -> None:
        out.extend(_linear_tensors(m, "fp16", None, dt, fused, False))

    def norm(m: Any, width: int) -> None:
        if m is None:
            return
        out.append((f"{m.key}.weight", dt, (width,)))
        if isinstance(m, ExLlamaV2LayerNorm) and config.vision_model_type != "qwen2.5":
            out.append((f"{m.key}.bias", dt, (width,)))

    merge = config.vision_spatial_merge_size
    for m in tower.modules:
        if isinstance(m, ExLlamaV2Conv):
            out.append((f"{m.key}.weight", dt, (m.out_channels, m.in_channels, *m.kernel_size)))
            if m.has_bias:
                out.append((f"{m.key}.bias", dt, (m.out_channels,)))
        elif isinstance(m, ExLlamaV2PosEmbedding):
            grid = (config.vision_size["height"] // config.vision_patch_size["height"]) * (
                config.vision_size["width"] // config.vision_patch_size["width"]
            )
            out.append((f"{m.key}.weight", dt, (grid, d)))
        elif isinstance(m, ExLlamaV2Attention):
            norm(m.pre_layernorm, d)
            for p in (m.q_proj, m.k_proj, m.v_proj, m.o_proj):
                lin(p)
        elif isinstance(m, ExLlamaV2MLP) and m.archparams is config.arch.vt:
            norm(m.pre_layernorm, d)
            for p in (m.gate_proj, m.up_proj, m.down_proj):
                if p is not None:
                    lin(p)
        elif isinstance(m, ExLlamaV2MLP):  # the projector: Hugging Face shapes (see module docstring)
            text = config.hidden_size
            if config.vision_model_type in ("qwen2", "qwen2.5"):  # PatchMerger: ln_q, mlp.0, mlp.2
                norm(m.pre_layernorm, d)
                _hf_linear(out, m.up_proj.key, d * merge**2, d * merge**2, True, dt)
                _hf_linear(out, m.down_proj.key, text, d * merge**2, True, dt)
            else:  # LlavaMultiModalProjector / Mistral3MultiModalProjector (norm + patch merger first)
                norm(m.pre_layernorm, d)
                if m.patch_merger_proj is not None:
                    _hf_linear(out, m.patch_merger_proj.key, d, d * merge**2, False, dt)
                _hf_linear(out, m.up_proj.key, text, d, m.up_proj.has_bias, dt)
                _hf_linear(out, m.down_proj.key, text, text, m.down_proj.has_bias, dt)
        elif isinstance(m, ExLlamaV2RMSNorm | ExLlamaV2LayerNorm):
            norm(m, d)
        elif isinstance(m, ExLlamaV2Linear):  # Gemma 3 mm_input_projection: a (vision, text) parameter
            out.append((f"{m.key}.weight", dt, (d, config.hidden_size)))
        else:
            raise AssertionError(f"unexpected vision module {type(m).__name__}")
    return _resolve_fused(out, fused, False)


def _hf_linear(out: list[Tensor], key: str, o: int, i: int, bias: bool, dt: str) -> None:
    out.append((f"{key}.weight", dt, (o, i)))
    if bias:
        out.append((f"{key}.bias", dt, (o,)))


# ------------------------------------------------------------------------- original names (keymapped archs)


def hf_name(arch: str, name: str) -> str:
    """The Hugging Face name of an exllamav2-side tensor name, for architectures exllamav2 remaps on load."""
    if arch == "GPT2LMHeadModel":
        name = name.replace(".self_attn.o_proj.", ".attn.c_proj.").replace(".self_attn.", ".attn.")
        for a, b in (
            ("model.layers.", "h."),
            ("model.embed_tokens.", "wte."),
            ("model.wpe.", "wpe."),
            ("model.norm.", "ln_f."),
        ):
            if name.startswith(a):
                return b + name[len(a) :]
        return name
    if arch == "GPTBigCodeForCausalLM":
        name = name.replace(".self_attn.o_proj.", ".attn.c_proj.").replace(".self_attn.", ".attn.")
        name = name.replace("model.layers.", "model.h.").replace("model.embed_tokens.", "model.wte.")
        name = name.replace("model.norm.", "model.ln_f.")
        return "transformer." + name[len("model.") :] if name.startswith("model.") else name
    if arch == "InternLM2ForCausalLM":
        name = name.replace(".self_attn.o_proj.", ".attention.wo.").replace(".self_attn.", ".attention.")
        if name.startswith("lm_head."):
            return "output." + name[len("lm_head.") :]
        return name.replace("model.embed_tokens.", "model.tok_embeddings.")
    if arch == "DbrxForCausalLM":
        for a, b in (("model.embed_tokens.", "transformer.wte."), ("model.norm.", "transformer.norm_f.")):
            if name.startswith(a):
                return b + name[len(a) :]
        if not name.startswith("model.layers."):
            return name
        name = "transformer.blocks." + name[len("model.layers.") :]
        return (
            name.replace(".input_layernorm.", ".norm_attn_norm.norm_1.")
            .replace(".post_attention_layernorm.", ".norm_attn_norm.norm_2.")
            .replace(".self_attn.o_proj.", ".norm_attn_norm.attn.out_proj.")
            .replace(".self_attn.", ".norm_attn_norm.attn.")
            .replace(".block_sparse_moe.experts.", ".ffn.experts.mlp.")
            .replace(".block_sparse_moe.gate.", ".ffn.router.layer.")
        )
    return name
