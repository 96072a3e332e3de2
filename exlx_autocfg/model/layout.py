"""The tensors of a checkpoint, as exllamav2's EXL2 converter (or a Hugging Face FP16 export) lays them out,
for the catalog: models planned before they are downloaded. Walks the module graph (model/graph.py) the
way `conversion/compile.py compile_model` walks `model.modules`, and appends the vision tower and projector
the converter copies unchanged from the source (compile.py `extra_tensors`).

EXL2 linear layer `x` with `rows` = in_features and `columns` = out_features, as
`conversion/adaptivegptq.py` `AdaptiveGPTQ.pack` writes it (columns padded up to a multiple of 32):
    x.q_invperm    I32 [rows]
    x.q_scale_max  F16 [groups]
    x.q_groups     I16 [2 * groups]
    x.q_scale      I32 [groups, (columns + pad) * 4 / 32]           (4-bit scales, packed)
    x.q_weight     I32 [sum over groups of ceil(group_rows * bits / 32), columns + pad]
    x.bias         F16 [columns]                                     (only when the layer has one)
Groups come from a QParams (group size per bit width, proportion of rows per bit width), split the way
`AdaptiveGPTQ.configure` counts them and `AdaptiveGPTQ.quantize` / `pack` fill them (a group can be empty).
The test fixtures do not use this module: they are built from exllamav2's own module graph and converter.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from exlx_autocfg.model.graph import LinearNode, ModuleNode, lm_modules
from exlx_autocfg.model.spec import ModelSpec

DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}  # the safetensors format's dtypes (safetensors `Dtype`)

TORCH_DTYPE_TO_ST = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}

EXL2_SUFFIXES = ("q_weight", "q_invperm", "q_scale", "q_scale_max", "q_groups", "bias")


@dataclass(frozen=True)
class QParams:
    """Bit widths with their group size and share of rows; mirrors exllamav2 `conversion/qparams.py`."""

    bits: tuple[int, ...]
    group_size: tuple[int, ...]
    bits_prop: tuple[float, ...]


# exllamav2 conversion/qparams.py `qparams_headoptions` (the head layer, `--head_bits`, default 6).
HEAD_QPARAMS: dict[int, QParams] = {
    2: QParams((4, 2), (32, 32), (0.3, 0.7)),
    3: QParams((4, 3), (32, 32), (0.15, 0.85)),
    4: QParams((6, 4), (32, 32), (0.15, 0.85)),
    5: QParams((6, 5), (128, 128), (0.15, 0.85)),
    6: QParams((8, 6), (128, 128), (0.15, 0.85)),
    8: QParams((8,), (128,), (1.0,)),
}
DEFAULT_HEAD_BITS = 6  # convert_exl2.py `--head_bits` default

_BIT_WIDTHS = (2, 3, 4, 5, 6, 8)  # widths the EXL2 kernels implement
_DECODER_GROUP = 128


def decoder_qparams(bpw: float) -> QParams:
    """A uniform stand-in for the converter's per-layer choice: two adjacent widths at group size 128,
    mixed so that each decoder linear lands on `bpw` including the 4-bit scales (4/128 bits per weight).

    The real optimizer mixes options per layer to hit the same overall target; total bytes agree to
    within the invperm/group bookkeeping, which is what planning needs before a download.
    """
    target = bpw - 4 / _DECODER_GROUP
    if target <= _BIT_WIDTHS[0]:
        return QParams((_BIT_WIDTHS[0],), (_DECODER_GROUP,), (1.0,))
    if target >= _BIT_WIDTHS[-1]:
        return QParams((_BIT_WIDTHS[-1],), (_DECODER_GROUP,), (1.0,))
    lo = max(b for b in _BIT_WIDTHS if b <= target)
    hi = min(b for b in _BIT_WIDTHS if b > lo)
    p_hi = round((target - lo) / (hi - lo), 4)
    if p_hi <= 0.0:
        return QParams((lo,), (_DECODER_GROUP,), (1.0,))
    if p_hi >= 1.0:
        return QParams((hi,), (_DECODER_GROUP,), (1.0,))
    return QParams((hi, lo), (_DECODER_GROUP, _DECODER_GROUP), (p_hi, round(1.0 - p_hi, 4)))


def _group_rows(rows: int, qp: QParams) -> Iterator[tuple[int, int]]:
    """(bits, rows) per group: AdaptiveGPTQ.configure's group count per width, each group then taking
    min(group size, rows left) rows as quantize() and pack() do (trailing groups may take none)."""
    remaining = rows
    counts = []
    for gsz, prop in zip(qp.group_size, qp.bits_prop, strict=True):
        groups = math.ceil(min(rows * prop, remaining) / gsz)
        remaining -= groups * gsz
        counts.append(groups)
    if remaining > 0:  # proportions that do not sum to 1: configure() would assert; give the rest to the last
        counts[-1] += math.ceil(remaining / qp.group_size[-1])
    left = rows
    for bits, gsz, groups in zip(qp.bits, qp.group_size, counts, strict=True):
        for _ in range(groups):
            take = min(gsz, left)
            yield bits, take
            left -= take


def exl2_linear_tensors(
    key: str, rows: int, columns: int, qp: QParams, *, bias: bool = False
) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, dtype, shape) of one EXL2 linear layer (see the module docstring)."""
    padded = columns + (-columns % 32)
    groups = list(_group_rows(rows, qp))
    qrows = sum(math.ceil(r * b / 32) for b, r in groups)
    out = [
        (f"{key}.q_invperm", "I32", (rows,)),
        (f"{key}.q_scale_max", "F16", (len(groups),)),
        (f"{key}.q_groups", "I16", (2 * len(groups),)),
        (f"{key}.q_scale", "I32", (len(groups), padded * 4 // 32)),
        (f"{key}.q_weight", "I32", (qrows, padded)),
    ]
    if bias:
        out.append((f"{key}.bias", "F16", (columns,)))
    return out


def _fdt(quant: str, torch_dtype: str) -> str:
    return "F16" if quant == "exl2" else TORCH_DTYPE_TO_ST.get(torch_dtype, "F16")


def checkpoint_tensors(
    spec: ModelSpec,
    *,
    quant: str = "exl2",
    bpw: float = 4.0,
    head_bits: int = DEFAULT_HEAD_BITS,
    torch_dtype: str = "float16",
) -> list[tuple[str, str, tuple[int, ...]]]:
    """Every tensor of the checkpoint in file order: (name as exllamav2 sees it, safetensors dtype, shape).

    quant="exl2": what compile.py writes: embeddings and norms in FP16 (head norms as the (heads, head_dim)
    tensors headnorm.py expands them to), every linear quantized (decoder at `bpw`, the head at `head_bits`,
    also for tied-embedding models: compile.py always writes lm_head), the MoE router gate in FP16, then the
    vision tower and projector copied in the source dtype.
    quant="fp16": a Hugging Face export in `torch_dtype` (fused q/k/v and gate/up where the architecture
    stores them fused, no lm_head when the embeddings are tied).
    """
    if quant not in ("exl2", "fp16"):
        raise ValueError(f"unknown quant {quant!r}")
    if quant == "exl2" and head_bits not in HEAD_QPARAMS:
        raise ValueError(f"head_bits must be one of {sorted(HEAD_QPARAMS)}")
    fdt = _fdt(quant, torch_dtype)
    qp = decoder_qparams(bpw)
    h = spec.hidden_size
    out: list[tuple[str, str, tuple[int, ...]]] = []
    written_fused: set[str] = set()
    nodes = lm_modules(spec)
    fused_rows = _fused_rows(nodes)

    def linear(lin: LinearNode, qparams: QParams) -> None:
        if quant == "exl2":
            out.extend(
                exl2_linear_tensors(lin.key, lin.in_features, lin.out_features, qparams, bias=lin.bias)
            )
            return
        if lin.fused_key is not None:
            if lin.fused_key not in written_fused:
                written_fused.add(lin.fused_key)
                rows = fused_rows[lin.fused_key]
                out.append((f"{lin.fused_key}.weight", fdt, (rows, lin.in_features)))
                if lin.bias:
                    out.append((f"{lin.fused_key}.bias", fdt, (rows,)))
            return
        out.append((f"{lin.key}.weight", fdt, (lin.out_features, lin.in_features)))
        if lin.bias:
            out.append((f"{lin.key}.bias", fdt, (lin.out_features,)))

    def norms(node: ModuleNode) -> None:
        out.extend((f"{n}.weight", fdt, (h,)) for n in node.norms)

    def head_norms(node: ModuleNode) -> None:
        for n, heads in zip(
            node.head_norms, (spec.num_attention_heads, spec.num_key_value_heads), strict=False
        ):
            out.append((f"{n}.weight", fdt, (heads, spec.head_dim) if quant == "exl2" else (spec.head_dim,)))

    for node in nodes:
        if node.kind == "embedding":
            out.append((f"{node.key}.weight", fdt, (spec.vocab_size, h)))
        elif node.kind == "pos_embedding":
            out.append((f"{node.key}.weight", fdt, (spec.max_position_embeddings, h)))
        elif node.kind in ("attn", "mlp"):
            norms(node)
            for lin in _compile_order(node):
                linear(lin, qp)
            head_norms(node)
        elif node.kind == "moe":
            norms(node)
            gate, experts = node.linears[0], node.linears[1:]
            out.append((f"{gate.key}.weight", fdt, (gate.out_features, gate.in_features)))
            n = spec.num_experts or 0
            for e in range(n):  # compile.py: w1, w3, w2 per expert
                for lin in (experts[e], experts[2 * n + e], experts[n + e]):
                    linear(lin, qp)
        elif node.kind == "parallel_decoder":
            norms(node)
            attn, mlp = node.parts
            for lin in attn.linears:
                linear(lin, qp)
            head_norms(node)
            for lin in _compile_order(mlp):
                linear(lin, qp)
        elif node.kind == "norm":
            norms(node)
        else:  # lm_head
            head = node.linears[0]
            if quant == "exl2":
                linear(head, HEAD_QPARAMS[head_bits])
            elif ["lm_head"] in [list(g) for g in spec.rules.lm.expect_keys] and not spec.tie_word_embeddings:
                out.append((f"{head.key}.weight", fdt, (spec.vocab_size, h)))
    out += vision_checkpoint_tensors(spec, TORCH_DTYPE_TO_ST.get(torch_dtype, "BF16"))
    return out


def _compile_order(node: ModuleNode) -> list[LinearNode]:
    """compile.py: q, k, v, o for attention; gate, up, down for an MLP (the graph lists up, down, gate)."""
    if node.kind == "attn":
        return list(node.linears)
    up, down, *gate = node.linears
    return [*gate, up, down]


def _fused_rows(nodes: tuple[ModuleNode, ...]) -> dict[str, int]:
    """The row count of each fused tensor: the end of the last projection sliced from it."""
    rows: dict[str, int] = {}
    for node in nodes:
        for part in (node, *node.parts):
            for lin in part.linears:
                if lin.fused_key is not None and lin.fused_range:
                    rows[lin.fused_key] = max(rows.get(lin.fused_key, 0), lin.fused_range[1])
    return rows


def vision_checkpoint_tensors(spec: ModelSpec, dtype: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """The vision tower and projector as the published Hugging Face checkpoints store them (names as
    exllamav2 sees them, after its keymap), which the EXL2 converter copies unchanged. Shapes from the
    transformers modeling code of each tower: SigLIP (Gemma 3), Pixtral (+ the Mistral 3 patch merger),
    Qwen2-VL / Qwen2.5-VL."""
    v, arch = spec.vision, spec.rules.vision
    if v is None or arch is None:
        return []
    vt, p, mp = arch.vt, arch.vt_prefix, arch.mmp_prefix
    d, inter, n = v.hidden_size, v.intermediate_size, v.num_layers
    out: list[tuple[str, str, tuple[int, ...]]] = []

    def lin(key: str, o: int, i: int, bias: bool) -> None:
        out.append((f"{key}.weight", dtype, (o, i)))
        if bias:
            out.append((f"{key}.bias", dtype, (o,)))

    def norm(key: str, width: int, bias: bool) -> None:
        out.append((f"{key}.weight", dtype, (width,)))
        if bias:
            out.append((f"{key}.bias", dtype, (width,)))

    kernel = (
        (v.temporal_patch_size or 1, v.patch_size, v.patch_size) if vt.vision_conv3d else (v.patch_size,) * 2
    )
    conv = p + vt.keys["patch_conv"]
    out.append((f"{conv}.weight", dtype, (d, v.num_channels, *kernel)))
    if vt.patch_conv_bias:
        out.append((f"{conv}.bias", dtype, (d,)))
    if vt.vision_input_norm:
        norm(p + vt.keys["ln_pre"], d, False)
    if vt.learned_emb:
        out.append((f"{p}{vt.keys['position_embedding']}.weight", dtype, (v.max_image_patches, d)))
    kv = v.num_key_value_heads * v.head_dim
    q = v.num_attention_heads * v.head_dim
    layernorm_bias = vt.norm == "layernorm"
    for layer in range(n):
        key = f"{p}{vt.keys['layers']}.{layer}"
        norm(key + vt.keys["norm_1"], d, layernorm_bias)
        if vt.keys.get("fused_qkv"):
            lin(key + vt.keys["fused_qkv"], q + 2 * kv, d, vt.attention_bias_qkv)
        else:
            for name, width in (("attn_q", q), ("attn_k", kv), ("attn_v", kv)):
                lin(key + vt.keys[name], width, d, vt.attention_bias_qkv)
        lin(key + vt.keys["attn_o"], d, q, vt.attention_bias_o)
        norm(key + vt.keys["norm_2"], d, layernorm_bias)
        if vt.mlp_gate:
            lin(key + vt.keys["mlp_gate"], inter, d, vt.mlp_bias)
        lin(key + vt.keys["mlp_up"], inter, d, vt.mlp_bias)
        lin(key + vt.keys["mlp_down"], d, inter, vt.mlp_bias)
    if vt.output_norm:
        norm(p + vt.keys["output_norm"], d, True)
    mmp = arch.mmp
    if not vt.mlp_merger:  # Gemma 3: RMSNorm + a (vision hidden, text hidden) projection parameter
        norm(mp + mmp.keys["input_projection_norm"], d, False)
        out.append((f"{mp}{mmp.keys['input_projection']}.weight", dtype, (d, spec.hidden_size)))
        return out
    bias = arch.projector_bias(v)
    merge = v.spatial_merge_size**2
    if v.model_type in ("qwen2", "qwen2.5"):  # Qwen2VL PatchMerger: ln_q, mlp.0 (d*m -> d*m), mlp.2
        norm(mp + mmp.keys["norm_2"], d, mmp.norm == "layernorm" and v.model_type == "qwen2")
        lin(mp + mmp.keys["mlp_up"], d * merge, d * merge, True)
        lin(mp + mmp.keys["mlp_down"], spec.hidden_size, d * merge, True)
        return out
    if mmp.keys.get("norm_2"):  # Mistral 3: RMSNorm + patch merger (d * merge -> d) before the projector
        norm(mp + mmp.keys["norm_2"], d, False)
        out.append((f"{mp}{mmp.keys['patch_merger']}.weight", dtype, (d, d * merge)))
    lin(mp + mmp.keys["mlp_up"], spec.hidden_size, d, bias)
    lin(mp + mmp.keys["mlp_down"], spec.hidden_size, spec.hidden_size, bias)
    return out


def tensor_nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    return DTYPE_BYTES[dtype] * math.prod(shape)
