"""The tensors of a checkpoint, as exllamav2's EXL2 converter (or a Hugging Face FP16 export) lays them out.

One function, `checkpoint_tensors`, serves both the catalog (a model planned before it is downloaded)
and the test fixtures that write sparse model directories, so the two always agree byte for byte.

EXL2 linear layer `x` with `rows` = in_features and `columns` = out_features, as
`conversion/adaptivegptq.py` `AdaptiveGPTQ.pack` writes it (columns padded up to a multiple of 32):
    x.q_invperm    I32 [rows]
    x.q_scale_max  F16 [groups]
    x.q_groups     I16 [2 * groups]
    x.q_scale      I32 [groups, (columns + pad) * 4 / 32]           (4-bit scales, packed)
    x.q_weight     I32 [sum over groups of ceil(group_rows * bits / 32), columns + pad]
    x.bias         F16 [columns]                                     (only when the layer has one)
Groups come from a QParams (group size per bit width, proportion of rows per bit width), split the way
`AdaptiveGPTQ.configure` / `QParams.total_bits` split them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from exlx_autocfg.model.architectures import ArchRules

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
    """(bits, rows) per group, as AdaptiveGPTQ.configure splits `rows` and pack() walks them."""
    remaining = rows
    counts = []
    for gsz, prop in zip(qp.group_size, qp.bits_prop, strict=True):
        groups = math.ceil(min(rows * prop, remaining) / gsz)
        remaining -= groups * gsz
        counts.append(groups)
    if remaining > 0:  # rounding in the proportions: the last width takes the rest, as its ceil would
        counts[-1] += math.ceil(remaining / qp.group_size[-1])
    left = rows
    for bits, gsz, groups in zip(qp.bits, qp.group_size, counts, strict=True):
        for _ in range(groups):
            if left <= 0:
                return
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


class ModelDims(Protocol):
    architecture: str
    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    num_experts: int | None
    tie_word_embeddings: bool


def _linears(dims: ModelDims, rules: ArchRules, layer: int) -> Iterator[tuple[str, int, int, bool]]:
    """(key, in_features, out_features, bias) of every linear of one decoder layer, in file order."""
    h, d = dims.hidden_size, dims.head_dim
    q_out, kv_out = dims.num_attention_heads * d, dims.num_key_value_heads * d
    p = f"model.layers.{layer}"
    b = rules.attention_bias_qkv
    yield f"{p}.self_attn.q_proj", h, q_out, b
    yield f"{p}.self_attn.k_proj", h, kv_out, b
    yield f"{p}.self_attn.v_proj", h, kv_out, b
    yield f"{p}.self_attn.o_proj", q_out, h, False
    inter = dims.intermediate_size
    if rules.moe:
        for e in range(dims.num_experts or 0):
            ep = f"{p}.block_sparse_moe.experts.{e}"
            yield f"{ep}.w1", h, inter, False
            yield f"{ep}.w3", h, inter, False
            yield f"{ep}.w2", inter, h, False
        return
    if rules.mlp_gate:
        yield f"{p}.mlp.gate_proj", h, inter, False
    yield f"{p}.mlp.up_proj", h, inter, False
    yield f"{p}.mlp.down_proj", inter, h, False


def _norms(dims: ModelDims, rules: ArchRules, layer: int) -> list[str]:
    p = f"model.layers.{layer}."
    return [p + n for n in (*rules.attn_norms, *rules.mlp_norms)]


def checkpoint_tensors(
    dims: ModelDims,
    rules: ArchRules,
    *,
    quant: str = "exl2",
    bpw: float = 4.0,
    head_bits: int = DEFAULT_HEAD_BITS,
    torch_dtype: str = "float16",
) -> list[tuple[str, str, tuple[int, ...]]]:
    """Every tensor of the checkpoint in file order: (name, safetensors dtype, shape).

    quant="exl2": what exllamav2's converter writes (`conversion/compile.py`): the embedding and norms in
    FP16, every linear quantized (decoder at `bpw`, the head at `head_bits`, also for tied-embedding models,
    compile.py always writes `lm_head` through `get_q_module`), the MoE router gate in FP16.
    quant="fp16": a Hugging Face export in `torch_dtype` (fused qkv/gate_up for Phi-3, no lm_head when tied).
    """
    if quant not in ("exl2", "fp16"):
        raise ValueError(f"unknown quant {quant!r}")
    if quant == "exl2" and head_bits not in HEAD_QPARAMS:
        raise ValueError(f"head_bits must be one of {sorted(HEAD_QPARAMS)}")
    h, vocab = dims.hidden_size, dims.vocab_size
    fdt = "F16" if quant == "exl2" else TORCH_DTYPE_TO_ST.get(torch_dtype, "F16")
    qp = decoder_qparams(bpw)
    out: list[tuple[str, str, tuple[int, ...]]] = [("model.embed_tokens.weight", fdt, (vocab, h))]

    for layer in range(dims.num_hidden_layers):
        out += [(f"{n}.weight", fdt, (h,)) for n in _norms(dims, rules, layer)]
        if rules.moe:
            gate = f"model.layers.{layer}.block_sparse_moe.gate.weight"
            out.append((gate, fdt, (dims.num_experts or 0, h)))
        linears = list(_linears(dims, rules, layer))
        if quant == "exl2":
            for key, rows, cols, bias in linears:
                out += exl2_linear_tensors(key, rows, cols, qp, bias=bias)
        else:
            out += _fp16_linears(dims, rules, layer, linears, fdt)
        if getattr(dims, "use_qk_norm", False):  # per-head RMSNorm weights (Qwen3), stored as [head_dim]
            p = f"model.layers.{layer}.self_attn"
            out += [
                (f"{p}.q_norm.weight", fdt, (dims.head_dim,)),
                (f"{p}.k_norm.weight", fdt, (dims.head_dim,)),
            ]

    out.append(("model.norm.weight", fdt, (h,)))
    if quant == "exl2":
        out += exl2_linear_tensors("lm_head", h, vocab, HEAD_QPARAMS[head_bits])
    elif not (dims.tie_word_embeddings or rules.lm_head != "lm_head"):
        out.append(("lm_head.weight", fdt, (vocab, h)))
    return out


def _fp16_linears(
    dims: ModelDims, rules: ArchRules, layer: int, linears: list[tuple[str, int, int, bool]], fdt: str
) -> list[tuple[str, str, tuple[int, ...]]]:
    out: list[tuple[str, str, tuple[int, ...]]] = []
    p = f"model.layers.{layer}"
    fused = {}
    if rules.fused_qkv:
        qkv_out = (dims.num_attention_heads + 2 * dims.num_key_value_heads) * dims.head_dim
        fused[f"{p}.self_attn.q_proj"] = (f"{p}.{rules.fused_qkv}", qkv_out)
        fused[f"{p}.self_attn.k_proj"] = fused[f"{p}.self_attn.v_proj"] = None
    if rules.fused_mlp:
        fused[f"{p}.mlp.gate_proj"] = (f"{p}.{rules.fused_mlp}", 2 * dims.intermediate_size)
        fused[f"{p}.mlp.up_proj"] = None
    for key, rows, cols, bias in linears:
        if key in fused:
            target = fused[key]
            if target is not None:
                out.append((f"{target[0]}.weight", fdt, (target[1], rows)))
            continue
        out.append((f"{key}.weight", fdt, (cols, rows)))
        if bias:
            out.append((f"{key}.bias", fdt, (cols,)))
    return out


def tensor_nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    return DTYPE_BYTES[dtype] * math.prod(shape)
