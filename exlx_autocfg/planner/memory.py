"""exllamav2 0.3.2's memory arithmetic, in bytes, as pure functions of a ModelSpec.

Exact (tested against the real wheel's own accounting in tests/test_memory_exllamav2.py):
  kv_cache_bytes / kv_staging_bytes  the tensors cache.py allocates (ExLlamaV2Cache, _Q8, _Q6, _Q4)
  module_costs                       each module's weight_footprint(), scratch_space_fixed(), scratch_space()
  fixed_scratch_bytes                the per-device scratch tensor device.py allocates
  rope_bytes                         the sin/cos tables device.py `prepare_sincos` builds
  manual_split_attn_reserve_bytes    attn.py `temp_attn_size()` (the manual-split planner's reserve)
Measured against the real attn.py `_attn_torch` on CPU (tests/test_memory_transients.py):
  attention_transient_bytes for the matmul and SDPA paths
Estimated from reading the code (no GPU here to measure):
  attention_transient_bytes for flash-attn/xformers, forward_activation_bytes, ModuleCost.load_extra_bytes
  and the Overheads constants.
Units: bytes everywhere. Nothing here touches files, torch or exllamav2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from exlx_autocfg import exl2
from exlx_autocfg.model.graph import LinearNode, ModuleNode, lm_modules
from exlx_autocfg.model.spec import ModelSpec

MiB = 1024**2

MAX_DQ_SIZE = 512 * 1024**2  # config.py max_dq_size: elements a linear may dequantize at once


@dataclass(frozen=True)
class Overheads:
    """Memory exllamav2's arithmetic does not cover; override with `DEFAULT_OVERHEADS.with_overrides(...)`."""

    # CUDA context + torch/cuBLAS handles per GPU. No exllamav2-specific measurement exists
    # (shared/docs/memory-model.md A6); Ollama budgets 457 MiB per GPU (discover/gpu.go
    # cudaMinimumMemory), and exllamav2 sets CUDA_MODULE_LOADING=LAZY (model.py), which keeps it
    # near that. Estimate: measure it on the target (bench/).
    cuda_context_bytes: int = 457 * MiB
    # PyTorch caching allocator: 2 MiB rounding of large blocks, 20 MiB segments for small ones, freed
    # transients kept reserved. memory-model.md Part B: +250 MiB residual on a flash path
    # (ooba PR#5645). Estimate.
    allocator_slack_bytes: int = 256 * MiB
    # model.py load_autosplit_gen: reserve_vram default [192 MiB] + [64 MiB] * (n - 1) ...
    autosplit_reserve_first_bytes: int = 192 * MiB
    autosplit_reserve_other_bytes: int = 64 * MiB
    # ... plus `minimum_reserve_vram = 256 * 1024**2`, held on the device being filled during the trial
    # forwards.
    autosplit_minimum_reserve_bytes: int = 256 * MiB
    # TabbyAPI (backends/exllamav2/model.py, d2d87bb): autosplit_reserve default [96] MB on GPU 0 only.
    tabby_autosplit_reserve_bytes: int = 96 * MiB

    def with_overrides(self, **changes: int) -> Overheads:
        return replace(self, **changes)


DEFAULT_OVERHEADS = Overheads()


def autosplit_reserve_bytes(num_devices: int, overheads: Overheads = DEFAULT_OVERHEADS) -> list[int]:
    """exllamav2's default `reserve_vram` list for load_autosplit (model.py)."""
    return [overheads.autosplit_reserve_first_bytes] + [overheads.autosplit_reserve_other_bytes] * (
        num_devices - 1
    )


# --------------------------------------------------------------------------------------------------
# KV cache (cache.py)
# --------------------------------------------------------------------------------------------------


def _layer_count(spec: ModelSpec, layers: int | Iterable[int] | None) -> int:
    if layers is None:
        return spec.num_hidden_layers
    if isinstance(layers, int):
        return layers
    return len(set(layers))


def kv_cache_bytes(
    spec: ModelSpec, mode: str, seq_len: int, batch_size: int = 1, layers: int | Iterable[int] | None = None
) -> int:
    """K/V states (+ the FP16 scales of quantized modes) for `layers` (a count or layer indices; default all).

    Shapes from cache.py ExLlamaV2CacheBase: (batch, seq_len, Hkv, head_dim // weights_per_element) and,
    for Q modes, two (batch, seq_len, Hkv, head_dim // 32) fp16 scale tensors. The Q classes round their
    max_seq_len attribute up to q_block only after allocating, so the unrounded seq_len sizes the tensors.
    """
    layout = exl2.cache_layout(mode)
    elem, wk, wv, scales = layout.element_bytes, layout.k_per_element, layout.v_per_element, layout.scales
    d = spec.head_dim
    per_token_head = (d // wk + d // wv) * elem + (2 * (d // 32) * 2 if scales else 0)
    return _layer_count(spec, layers) * batch_size * seq_len * spec.num_key_value_heads * per_token_head


def kv_staging_bytes(spec: ModelSpec, mode: str, seq_len: int, batch_size: int = 1) -> int:
    """The FP16 K/V pair a quantized cache keeps on each device holding attention layers (touch_device)."""
    exl2.cache_layout(mode)  # validates the mode
    if mode == "FP16":
        return 0
    return 2 * batch_size * seq_len * spec.num_key_value_heads * spec.head_dim * 2


def kv_cache_bytes_per_token(spec: ModelSpec, mode: str) -> int:
    """Bytes per token of max_seq_len on one GPU at batch 1, scales and staging included (exact)."""
    return kv_cache_bytes(spec, mode, 1) + kv_staging_bytes(spec, mode, 1)


def q_block(spec: ModelSpec) -> int:
    """Tokens per quantization block of a Q cache (cache.py): 1 unless Hkv*head_dim % 512 != 0."""
    kv_dim = spec.num_key_value_heads * spec.head_dim
    return exl2.Q_BLOCK_SIZE // math.gcd(kv_dim, exl2.Q_BLOCK_SIZE)


# --------------------------------------------------------------------------------------------------
# Modules: weights and scratch (model.py, attn.py, mlp.py, moe_mlp.py, parallel_decoder.py, linear.py,
# module.py), over the module graph of model/graph.py
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModuleCost:
    """One entry of exllamav2's `model.modules`, with its own accounting."""

    key: str
    kind: str  # embedding | pos_embedding | attn | mlp | moe | parallel_decoder | norm | lm_head
    layer: int | None
    weight_bytes: int  # weight_footprint()
    scratch_fixed_bytes: int  # scratch_space_fixed(): sizes the per-device scratch tensor
    scratch_bytes: int = 0  # scratch_space(): what the manual-split planner reserves (incl. GQA temp_kv)
    on_cpu: bool = False  # the embedding stays in system RAM in every loader
    # Not in exllamav2's accounting: ext.py make_q_matrix keeps q_perm, q_invperm (both int16) and a
    # q_group_map (2 x int16 per row) per EXL2 linear, 8 bytes per input row instead of the file's 4.
    load_extra_bytes: int = 0

    @property
    def has_cache(self) -> bool:
        """Holds a layer of the KV cache (attention or Cohere's parallel decoder)."""
        return self.kind in ("attn", "parallel_decoder")


def _pad32(n: int) -> int:
    return n + (-n % 32)


_EXL2_PARTS = ("q_weight", "q_invperm", "q_scale", "q_scale_max", "q_groups", "q_perm", "bias")
_GPTQ_PARTS = ("qweight", "qzeros", "scales", "g_idx", "bias")


def linear_footprint(have: dict[str, int], lin: LinearNode, alt_key: str | None = None) -> int:
    """module.py weight_footprint() of one linear: the stored bytes of its key (then alt_key) as EXL2, GPTQ
    or a plain weight (+ bias); without any, linear.py's assumed in * padded_out * 2 + 128 (which is what a
    fused q/k/v or gate/up checkpoint gets: its parts have no tensor of their own)."""
    for key in (lin.key, alt_key) if alt_key else (lin.key,):
        if f"{key}.q_weight" in have:
            parts = _EXL2_PARTS
        elif f"{key}.qweight" in have:
            parts = _GPTQ_PARTS
        elif f"{key}.weight" in have:
            parts = ("weight", "bias")
        else:
            continue
        return sum(have.get(f"{key}.{p}", 0) for p in parts)
    return lin.in_features * lin.padded_out * 2 + 128


def temp_dq_bytes(lin: LinearNode) -> int:
    """linear.py temp_dq_size: 2 * min(in * padded out, max_dq_size)."""
    return 2 * min(lin.in_features * lin.padded_out, MAX_DQ_SIZE)


def attn_scratch(node: ModuleNode, rows: int, max_seq_len: int, batch: int) -> tuple[int, int]:
    """attn.py scratch_space_fixed / scratch_space (L370-424) -> (fixed, scratch)."""
    q_out, kv_out = node.heads * node.head_dim, node.kv_heads * node.head_dim
    state = rows * max(q_out, node.hidden) * 2 + 128
    dq = max(temp_dq_bytes(lin) for lin in node.linears)
    temp_q = rows * q_out * 2 + 128
    temp_kv_proj = 2 * (rows * kv_out * 2 + 128)
    temp_kv = 0 if node.kv_heads == node.heads else 2 * max_seq_len * batch * q_out * 2 + 128
    return state + dq, state + temp_q + temp_kv_proj + dq + temp_kv


def mlp_scratch(node: ModuleNode, rows: int) -> int:
    """mlp.py scratch_space (L258-300): state + temp_a + temp_b + the largest dequant buffer."""
    widest = max(node.in_features, node.interm_features, node.out_features)
    state = rows * node.out_features * 2 + 128
    return state + 2 * (rows * widest * 2 + 128) + max(temp_dq_bytes(lin) for lin in node.linears)


def moe_scratch(node: ModuleNode, rows: int, experts: int) -> int:
    """moe_mlp.py scratch_space (L158-208); its dequant buffer is sized from expert 0's w1/w2/w3."""
    h, inter = node.hidden, node.interm_features
    w1, w2, w3 = node.linears[1], node.linears[1 + experts], node.linears[1 + 2 * experts]
    dq = max(temp_dq_bytes(w1), temp_dq_bytes(w2), temp_dq_bytes(w3))
    return 2 * (rows * h * 2 + 128) + 2 * (rows * inter * 2 + 128) + (rows * experts * 2 + 128) + dq


def node_weight(spec: ModelSpec, node: ModuleNode, have: dict[str, int], norm_bytes: int) -> int:
    """weight_footprint() of a module: its linears, plus hidden_size * 2 per norm and per head norm
    (rmsnorm.py / layernorm.py / headnorm.py count config.hidden_size * 2, whatever their tensors hold)."""
    norms = (len(node.norms) + len(node.head_norms)) * norm_bytes
    if node.kind == "mlp" and spec.checkpoint_fused_mlp:  # mlp.py L241-243
        fused = 2 * node.in_features * node.interm_features * 2
        return fused + node.interm_features * node.out_features * 2 + norms
    return sum(linear_footprint(have, lin, node.alt_key) for lin in node.linears) + norms


def _load_extra(have: dict[str, int], node: ModuleNode) -> int:
    """The bytes make_q_matrix adds on the GPU over the file: 4 per input row of each EXL2 linear, i.e. the
    size of its stored int32 q_invperm."""
    return sum(have.get(f"{lin.key}.q_invperm", 0) for lin in node.linears)


_STATIC: dict[int, tuple[ModelSpec, list[tuple[ModuleNode, int, int]]]] = {}


def _static_costs(spec: ModelSpec) -> list[tuple[ModuleNode, int, int]]:
    """(node, weight_footprint, load extra) per module: what does not depend on the chunk, the batch or the
    context. Memoised per spec object (a 128-expert model has tens of thousands of linears, and the
    planner asks for module costs at several chunk sizes)."""
    hit = _STATIC.get(id(spec))
    if hit is not None and hit[0] is spec:
        return hit[1]
    have, norm = spec.tensor_bytes, spec.hidden_size * 2
    out = []
    for node in lm_modules(spec):
        if node.kind == "parallel_decoder":
            attn, mlp = node.parts
            weight = norm + node_weight(spec, attn, have, norm) + node_weight(spec, mlp, have, norm)
        elif node.kind in ("attn", "mlp", "moe", "lm_head"):
            weight = node_weight(spec, node, have, norm)
        else:
            weight = 0  # embedding, positions, norm: sized from the config below
        out.append((node, weight, _load_extra(have, node)))
    if len(_STATIC) > 64:
        _STATIC.clear()
    _STATIC[id(spec)] = (spec, out)
    return out


def module_costs(
    spec: ModelSpec, max_input_len: int = 2048, max_batch_size: int = 1, max_seq_len: int | None = None
) -> list[ModuleCost]:
    """exllamav2's modules in its order (model.py L78-156): embedding (CPU), learned positions (GPT-2,
    BigCode), per layer attention + MLP / MoE (or one parallel decoder), final norm, lm_head.
    `max_seq_len` (config.max_seq_len, default the model's) enters the GQA scratch and the learned position
    embedding, whose footprint exllamav2 takes from config.max_seq_len at construction (pos_embedding.py)."""
    if max_input_len <= 0 or max_batch_size <= 0:
        raise ValueError("max_input_len and max_batch_size must be positive")
    seq = spec.max_position_embeddings if max_seq_len is None else max_seq_len
    rows = max_input_len * max_batch_size
    h = spec.hidden_size
    costs: list[ModuleCost] = []
    for node, weight, load_extra in _static_costs(spec):
        if node.kind == "embedding":
            costs.append(ModuleCost(node.key, "embedding", None, spec.vocab_size * h * 2, 0, 0, on_cpu=True))
        elif node.kind == "pos_embedding":
            costs.append(ModuleCost(node.key, "pos_embedding", None, seq * h * 2, 0, 0))
        elif node.kind == "attn":
            fixed, scratch = attn_scratch(node, rows, seq, max_batch_size)
            costs.append(
                ModuleCost(
                    f"{node.key}.self_attn",
                    "attn",
                    node.layer,
                    weight,
                    fixed,
                    scratch,
                    load_extra_bytes=load_extra,
                )
            )
        elif node.kind in ("mlp", "moe"):
            scratch = (
                moe_scratch(node, rows, spec.num_experts or 0)
                if node.kind == "moe"
                else mlp_scratch(node, rows)
            )
            costs.append(
                ModuleCost(
                    f"{node.key}.mlp",
                    node.kind,
                    node.layer,
                    weight,
                    scratch,
                    scratch,
                    load_extra_bytes=load_extra,
                )
            )
        elif node.kind == "parallel_decoder":
            attn, mlp = node.parts
            a_fixed, a_scratch = attn_scratch(attn, rows, seq, max_batch_size)
            m_scratch = mlp_scratch(mlp, rows)
            costs.append(
                ModuleCost(
                    node.key,
                    "parallel_decoder",
                    node.layer,
                    weight,
                    max(a_fixed, m_scratch),
                    max(a_scratch, m_scratch),
                    load_extra_bytes=load_extra,
                )
            )
        elif node.kind == "norm":
            costs.append(ModuleCost(node.key, "norm", None, h * 2, 0, 0))
        else:  # lm_head: not a sub-module, so no temp_fwd: only its dequant buffer
            dq = temp_dq_bytes(node.linears[0])
            costs.append(ModuleCost(node.key, "lm_head", None, weight, dq, dq, load_extra_bytes=load_extra))
    return costs


def fixed_scratch_bytes(costs: Iterable[ModuleCost]) -> int:
    """The scratch tensor one device gets: max scratch_space_fixed() over `costs` (autosplit: all modules,
    model.py; manual split: the modules on that device), allocated as `bytes // 2` halves (device.py)."""
    largest = max((c.scratch_fixed_bytes for c in costs), default=0)
    return largest // 2 * 2


def gpu_weight_bytes(costs: Iterable[ModuleCost], *, resident: bool = False) -> int:
    """Weights on the GPUs as exllamav2 counts them; resident=True adds the EXL2 load extras."""
    return sum(c.weight_bytes + (c.load_extra_bytes if resident else 0) for c in costs if not c.on_cpu)


def rope_tables(spec: ModelSpec) -> int:
    """How many sin/cos table pairs device.py prepare_sincos builds: one per RoPE base (Gemma 3 has a second
    base for its sliding layers, config rotary_embedding_base_alt)."""
    return 2 if spec.rope_theta_alt else 1


def rope_bytes(spec: ModelSpec, max_seq_len: int) -> int:
    """device.py prepare_sincos (L132-170): per device and per RoPE base, fp16 sin and cos of
    (max_seq_len, 2 * len(inv_freq)) with inv_freq = arange(0, int(head_dim * partial_rotary_factor), 2).
    Without RoPE (GPT-2, BigCode) one 1-element fp16 tensor serves as both sin and cos."""
    if spec.rope_style == "none":
        return 2
    rotary = int(spec.head_dim * spec.partial_rotary_factor)
    width = 2 * ((rotary + 1) // 2)
    return rope_tables(spec) * 2 * max_seq_len * width * 2


def manual_split_attn_reserve_bytes(
    spec: ModelSpec, max_attention_size: int, max_seq_len: int, *, flash_or_xformers: bool
) -> int:
    """attn.py temp_attn_size(): what `set_device_map` (manual gpu_split) reserves for attention, including
    its `eff = sqrt(max_attention_size) / 190` fudge when flash-attn or xformers is importable."""
    att_max = min(max_attention_size, max_seq_len**2)
    if flash_or_xformers:
        eff = max_attention_size**0.5 / 190
        att_max //= eff  # float floor division, exactly as attn.py does it
    return int(2 * att_max * spec.num_attention_heads * 2 + 128)


# --------------------------------------------------------------------------------------------------
# Transients (estimated from attn.py; the peak of one attention layer, reused layer by layer)
# --------------------------------------------------------------------------------------------------


def attention_transient_bytes(
    spec: ModelSpec,
    backend: str,
    max_input_len: int,
    max_attention_size: int,
    max_seq_len: int,
    batch_size: int = 1,
    *,
    path: str = "dynamic",
) -> int:
    """Peak bytes one attention call allocates outside the cache and the scratch tensor, at the worst chunk.

    path="dynamic": the dynamic generator's prefill (`forward_chunk`, chunks of max_input_len up to the end
    of the cache; max_attention_size does not apply). path="forward": `model.forward`, which for backends
    other than flash/xformers cuts chunks so that chunk * (past + chunk) <= max_attention_size.
    Per attn.py `forward`: q_states (q*H*d fp16) always; K/V projections go straight into an FP16 cache at
    batch 1, else two (q*Hkv*d) tensors. Then:
      flash_attn  native GQA: output q*H*d + fp32 log-sum-exp H*q
      xformers    repeat_kv expands K and V to H heads over all keys: 2*k*H*d; output; fp32 LSE
      sdpa        repeat_kv as xformers; output + fp32 LSE (memory-efficient kernel assumed, not verified)
      matmul      repeat_kv K; weights H*q*k fp16, two copies alive at the mask add / softmax; the fp16
                  causal mask (q*k); then repeat_kv V, the output and its reshape copy; plus the copies
                  torch.matmul makes of non-contiguous operands when batch > 1
    Checked byte for byte against the real `_attn_torch` on CPU (tests/test_memory_transients.py).
    """
    if backend not in exl2.BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(exl2.BACKENDS)}, got {backend!r}")
    if path not in ("dynamic", "forward"):
        raise ValueError("path must be 'dynamic' or 'forward'")
    heads, kvh, d = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
    b = batch_size
    q = min(max_input_len, max_seq_len)
    k = max_seq_len
    if path == "forward" and backend in ("sdpa", "matmul") and q * k > max_attention_size:
        past = max_seq_len - q  # the chunk that ends the context: model.py shrinks it to fit
        q = max(1, math.floor((math.sqrt(past**2 + 4 * max_attention_size) - past) / 2))
        k = past + q
    q_states = b * q * heads * d * 2
    kv_proj = 0 if b == 1 else 2 * b * q * kvh * d * 2
    out = b * q * heads * d * 2
    lse = b * heads * q * 4
    expand = b * k * heads * d * 2 if kvh != heads else 0  # one of K or V at H heads (repeat_kv)
    if backend == "flash_attn":
        return q_states + kv_proj + out + lse
    if backend in ("xformers", "sdpa"):
        return q_states + kv_proj + 2 * expand + out + lse
    weights = b * heads * q * k * 2
    # built once per forward (attn_params.build_attn_mask), alive through every layer; none for q == 1
    mask = b * q * k * 2 if q > 1 else 0
    # torch.matmul copies a non-contiguous operand it cannot fold into bmm's batch dimension: the
    # transposed q, and (MHA, where repeat_kv returns the cache view itself) K and V, once batch > 1.
    q_copy = b * q * heads * d * 2 if b > 1 else 0
    kv_copy = b * k * heads * d * 2 if b > 1 and kvh == heads else 0
    out_copy = out if q > 1 and heads > 1 else 0  # (b, H, q, d) -> (b, q, H*d) is a view only then
    stages = (
        expand + q_copy + kv_copy + weights + mask,  # q @ K^T
        expand + mask + 2 * weights,  # + mask, softmax: each makes a new tensor
        expand + mask + weights + expand + kv_copy + out,  # weights @ V
        expand + mask + weights + expand + out + out_copy,  # transpose + reshape copies the output
    )
    return q_states + kv_proj + max(stages)


def forward_activation_bytes(spec: ModelSpec, max_input_len: int, batch_size: int = 1) -> int:
    """Hidden state of a chunk kept across modules (estimate): the state plus its residual copy, in fp32 for
    architectures with an fp32 residual stream (Gemma-2, architecture.py residual_stream_fp32)."""
    per = 4 if spec.rules.lm.residual_stream_fp32 else 2
    return 2 * batch_size * max_input_len * spec.hidden_size * per


def logits_bytes(spec: ModelSpec, rows: int) -> int:
    """fp16 logits for `rows` output positions over the padded vocabulary (linear.py pad32)."""
    return rows * _pad32(spec.vocab_size) * 2
