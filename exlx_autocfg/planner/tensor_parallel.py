"""Tensor parallelism as exllamav2 0.3.2 does it (`load_tp`, `ExLlamaV2Cache_TP`, tensor_p.py `TPContext`):
the split of heads and columns over the GPUs, the bytes each GPU then holds, what TP's own attention path
needs, and whether TP is worth it. Pure functions of a ModelSpec; rules and sources in
profiles/tensor_parallel.toml.

Exact (tests/test_tensor_parallel_realwheel.py, against the real TPContext, modules and ExLlamaV2Cache_TP):
  integer_split, define_tp_split, tp_scratch_bytes, tp_cache_bytes.
Exact by hand from exllamav2's tp_split code and the safetensors shapes (the split itself needs CUDA):
  tp_device_weights.
Estimated: the inference transients (final norm broadcast and logits slices) and the load-time peak.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from exlx_autocfg.data import load_data
from exlx_autocfg.errors import DoesNotFitError
from exlx_autocfg.findings import Finding, finding
from exlx_autocfg.model.architectures import ArchRules
from exlx_autocfg.model.graph import lm_modules
from exlx_autocfg.model.spec import ModelSpec
from exlx_autocfg.planner import memory
from exlx_autocfg.versions import at_least, in_specifier

MiB = 1024**2
TPRange = tuple[int, int, int]  # (device, first, end) as TPContext stores its splits
KINDS = ("kv", "q", "intermediate", "hidden", "vocab")


@functools.cache
def rules() -> dict[str, Any]:
    return load_data("tensor_parallel.toml")


# ------------------------------------------------------------------------------------------- the split


def integer_split(total: int, weights: Sequence[float], minimum: int = 0) -> list[int]:
    """`total` units in proportion to `weights`, summing to `total` (largest remainders first); portions
    below `minimum` are dropped and their units handed one by one to the smallest remaining portion.
    Same float arithmetic as exllamav2's util.integer_split, so the same result bit for bit."""
    weight_sum = sum(weights)
    if not weight_sum:
        raise ValueError("integer_split: every weight is zero")
    share = [total * w / weight_sum for w in weights]
    portions = [int(s) for s in share]
    left = [s - p for s, p in zip(share, portions, strict=True)]
    for _ in range(total - sum(portions)):
        i = left.index(max(left))
        portions[i] += 1
        left[i] -= 1
    dropped = sum(p for p in portions if p < minimum)
    portions = [p if p >= minimum else 0 for p in portions]
    for _ in range(dropped):
        live = [i for i, p in enumerate(portions) if p]
        # exllamav2 adds to index -1 when nothing is left (min(..., default=-1))
        portions[min(live, key=portions.__getitem__) if live else -1] += 1
    return portions


def _ranges(sizes: Sequence[int]) -> tuple[TPRange, ...]:
    out, begin = [], 0
    for device, size in enumerate(sizes):
        if size:
            out.append((device, begin, begin + size))
        begin += size
    return tuple(out)


@dataclass(frozen=True)
class TPSplit:
    """TPContext's five splits: KV heads, Q heads, intermediate (MLP) columns, hidden (residual) columns and
    padded vocabulary columns, each a tuple of (device, first, end)."""

    kv: tuple[TPRange, ...]
    q: tuple[TPRange, ...]
    intermediate: tuple[TPRange, ...]
    hidden: tuple[TPRange, ...]
    vocab: tuple[TPRange, ...]

    @property
    def devices(self) -> tuple[int, ...]:
        """TPContext.all_devices(): devices holding KV heads, MLP columns or vocabulary."""
        return tuple(sorted({r[0] for part in (self.kv, self.intermediate, self.vocab) for r in part}))

    @property
    def num_devices(self) -> int:
        return max(self.devices) + 1

    @property
    def memory_devices(self) -> tuple[int, ...]:
        """Every device holding any part (the hidden split may use a GPU all_devices leaves out)."""
        return tuple(sorted({r[0] for kind in KINDS for r in self.ranges(kind)}))

    def ranges(self, kind: str) -> tuple[TPRange, ...]:
        return getattr(self, kind)

    def share(self, kind: str, device: int) -> int:
        return sum(b - a for d, a, b in self.ranges(kind) if d == device)

    def share_range(self, kind: str, device: int, dim: int = 1) -> tuple[int, int]:
        """The device's [first, end) of `kind`, times `dim` (head_dim for heads); (0, 0) if it has none."""
        for d, a, b in self.ranges(kind):
            if d == device:
                return a * dim, b * dim
        return 0, 0

    def width(self, kind: str) -> int:
        """The split's full width (the last range's end), what the broadcast buffers are sized by."""
        return self.ranges(kind)[-1][2]

    def to_dict(self) -> dict[str, list[list[int]]]:
        return {kind: [list(r) for r in self.ranges(kind)] for kind in KINDS}


def allocation_from_gpu_split(gpu_split_gb: Sequence[float]) -> list[float]:
    """The allocation TPContext works in when given gpu_split: GB * 1024 (it calls them MB)."""
    return [gb * rules()["split"]["gb_to_mb"] for gb in gpu_split_gb]


def allocation_from_free_bytes(free_bytes: Sequence[int]) -> list[int]:
    """The allocation TPContext reads without gpu_split: nvidia-smi's memory.free in whole MiB per GPU."""
    return [max(0, b) // MiB for b in free_bytes]


def attention_weight_footprints(spec: ModelSpec) -> list[int]:
    """weight_footprint() of every attention module, as TPContext takes them off the allocation."""
    return [c.weight_bytes for c in _module_costs(spec) if c.kind == "attn"]


def define_tp_split(
    spec: ModelSpec,
    allocation_mb: Sequence[float],
    *,
    cache_tokens: int,
    cache_mode: str = "FP16",
) -> TPSplit:
    """TPContext.define_split: `allocation_mb` per device (see allocation_from_*), `cache_tokens` what
    load_tp gets as expect_cache_tokens (TabbyAPI: its cache_size; exllamav2's default max_seq_len *
    max_batch_size), `cache_mode` its expect_cache_base. Raises DoesNotFitError when the expected cache and
    attention weights leave nothing to split the MLP and vocabulary by."""
    r = rules()["split"]
    if not allocation_mb or not any(allocation_mb):
        raise DoesNotFitError("tensor parallel: no GPU memory to split the model over")
    kvh = spec.num_key_value_heads
    kv = integer_split(kvh, list(allocation_mb))
    ratio = [s / kvh for s in kv]
    bpe = r["cache_bytes_per_element"][cache_mode]
    # same order of operations as tensor_p.py L139, so the float rounds the same way
    cache = 2 * bpe * kvh * spec.head_dim * spec.num_hidden_layers * cache_tokens
    left = [max(0, a - int(cache * x / MiB)) for a, x in zip(allocation_mb, ratio, strict=True)]
    for footprint in attention_weight_footprints(spec):
        left = [max(0, a - int(footprint * x / MiB)) for a, x in zip(left, ratio, strict=True)]
    if not any(left):
        raise DoesNotFitError(
            f"tensor parallel: the expected {cache_mode} cache for {cache_tokens} tokens and the attention "
            f"weights take all of {', '.join(f'{a:g}' for a in allocation_mb)} MB"
        )
    inter = [
        s * r["intermediate_unit"]
        for s in integer_split(
            spec.intermediate_size // r["intermediate_unit"], left, r["intermediate_minimum"]
        )
    ]
    hidden = [
        s * r["hidden_unit"]
        for s in integer_split(spec.hidden_size // r["hidden_unit"], left, r["hidden_minimum"])
    ]
    vunit = r["vocab_unit"]
    vocab = [
        s * vunit for s in integer_split((spec.vocab_size + vunit - 1) // vunit, left, r["vocab_minimum"])
    ]
    split = TPSplit(
        kv=_ranges(kv),
        q=_ranges([s * spec.num_key_value_groups for s in kv]),
        intermediate=_ranges(inter),
        hidden=_ranges(hidden),
        vocab=_ranges(vocab),
    )
    stray = sorted(d for d, _, _ in split.hidden if d >= split.num_devices)
    if stray:
        # TPContext sizes its per-device lists by the KV/MLP/vocab devices only: the modules' scratch_space_tp
        # then index past them (IndexError in linear.py L296) and load_tp fails
        raise DoesNotFitError(
            f"tensor parallel: exllamav2's split puts hidden columns on GPU {stray[0]}, which holds no heads,"
            " MLP columns or vocabulary; load_tp fails there (use fewer GPUs or another gpu_split)"
        )
    return split


# ---------------------------------------------------------------------------------------------- weights


def _linear_split_bytes(tensors: dict[str, Any], key: str, columns: tuple[int, int]) -> int:
    """Bytes one device holds of EXL2 linear `key` after linear.py tp_split gives it output columns
    [a, b): q_weight and q_scale sliced by column (q_scale packs 8 columns per int32), the bias sliced,
    and q_scale_max, q_groups, q_group_map (2 int16 per input row, ext.make_group_map), q_perm and
    q_invperm (int16 each after ext.make_q_matrix) whole on every device."""
    qw = tensors.get(f"{key}.q_weight")
    if qw is None:
        raise ValueError(f"{key}: not an EXL2 linear (tensor parallel splits only EXL2 tensors)")
    a, b = columns
    groups = tensors[f"{key}.q_scale_max"].shape[0]
    rows = tensors[f"{key}.q_invperm"].shape[0]
    out = qw.shape[0] * (b - a) * 4
    out += groups * (b // 8 - a // 8) * 4
    out += groups * 2 + 2 * groups * 2  # q_scale_max fp16, q_groups int16 pairs
    out += 2 * rows * 2 + rows * 2 + rows * 2  # q_group_map, q_perm, q_invperm
    if f"{key}.bias" in tensors:
        out += (b - a) * 2
    return out


def _norm_bytes(tensors: dict[str, Any], key: str, hidden: int) -> int:
    t = tensors.get(f"{key}.weight")
    return (math.prod(t.shape) if t is not None else hidden) * 2  # loaded as fp16


_MEMO: dict[tuple[str, int, Any], tuple[ModelSpec, Any]] = {}


def _memo(kind: str, spec: ModelSpec, key: Any, compute: Any) -> Any:
    """Per spec object and key: a context search re-derives the same split (and asks for the same module
    costs) at most candidate lengths."""
    k = (kind, id(spec), key)
    hit = _MEMO.get(k)
    if hit is not None and hit[0] is spec:
        return hit[1]
    if len(_MEMO) > 2048:
        _MEMO.clear()
    value = compute()
    _MEMO[k] = (spec, value)
    return value


def _module_costs(spec: ModelSpec) -> list[memory.ModuleCost]:
    return _memo("costs", spec, None, lambda: memory.module_costs(spec))


def tp_device_weights(spec: ModelSpec, split: TPSplit) -> list[int]:
    """Weight bytes per device (index = CUDA device) once load_tp has split every module; the embedding
    stays in system RAM. Qwen3's q/k head norms are not split and stay on the first device."""
    return list(_memo("weights", spec, split, lambda: _tp_device_weights(spec, split)))


def _tp_device_weights(spec: ModelSpec, split: TPSplit) -> list[int]:
    """Weight bytes per device (index = CUDA device) once load_tp has split every module; the embedding
    stays in system RAM. Qwen3's q/k head norms are not split and stay on the first device."""
    tensors = {t.name: t for t in spec.tensors}
    n, hd, h = split.num_devices, spec.head_dim, spec.hidden_size
    out = [0] * n
    first = split.devices[0]

    def linear(key: str, kind: str, dim: int = 1) -> None:
        for d, a, b in split.ranges(kind):
            out[d] += _linear_split_bytes(tensors, key, (a * dim, b * dim))

    def norm(key: str, kind: str) -> None:
        nbytes = _norm_bytes(tensors, key, h)
        for d, _, _ in split.ranges(kind):
            out[d] += nbytes

    r = spec.rules
    for layer in range(spec.num_hidden_layers):
        p = f"model.layers.{layer}"
        for name in _norm_keys(r, "norm_1", "norm_1_post"):
            norm(f"{p}{name}", "kv")
        linear(f"{p}.self_attn.q_proj", "q", hd)
        linear(f"{p}.self_attn.k_proj", "kv", hd)
        linear(f"{p}.self_attn.v_proj", "kv", hd)
        linear(f"{p}.self_attn.o_proj", "q", hd)
        for name in ("q_norm", "k_norm"):
            t = tensors.get(f"{p}.self_attn.{name}.weight")
            if t is not None:
                out[first] += math.prod(t.shape) * 2
        for name in _norm_keys(r, "norm_2", "norm_2_post"):
            norm(f"{p}{name}", "hidden")
        if r.lm.mlp_gate:
            linear(f"{p}.mlp.gate_proj", "intermediate")
        linear(f"{p}.mlp.up_proj", "intermediate")
        linear(f"{p}.mlp.down_proj", "hidden")
    norm("model.norm", "vocab")
    linear("lm_head", "vocab")
    return out


def _norm_keys(rules: ArchRules, *names: str) -> list[str]:
    """The per-layer norm key suffixes (".input_layernorm") the architecture gives a module (Params.keys)."""
    return [key for name in names if (key := rules.lm.key(name))]


def tp_load_peak_extra_bytes(spec: ModelSpec, split: TPSplit) -> int:
    """Load time, first device: each module is loaded whole there before tp_split moves its slices, so the
    first device briefly holds one whole module on top of its own slices (the largest such excess)."""
    return int(_memo("peak", spec, split, lambda: _tp_load_peak_extra_bytes(spec, split)))


def _tp_load_peak_extra_bytes(spec: ModelSpec, split: TPSplit) -> int:
    """Load time, first device: each module is loaded whole there before tp_split moves its slices, so the
    first device briefly holds one whole module on top of its own slices (the largest such excess)."""
    first = split.devices[0]
    mods = [c for c in _module_costs(spec) if not c.on_cpu and c.kind in ("attn", "mlp", "lm_head")]
    tensors = {t.name: t for t in spec.tensors}
    hd = spec.head_dim
    worst = 0
    for c in mods:
        whole = c.weight_bytes + c.load_extra_bytes
        if c.kind == "attn":
            mine = sum(
                _linear_split_bytes(tensors, f"{c.key}.{name}", split.share_range(kind, first, hd))
                for name, kind in (("q_proj", "q"), ("k_proj", "kv"), ("v_proj", "kv"), ("o_proj", "q"))
                if split.share(kind, first)
            )
        elif c.kind == "mlp":
            names = (("gate_proj", "intermediate"),) if spec.rules.lm.mlp_gate else ()
            names += (("up_proj", "intermediate"), ("down_proj", "hidden"))
            mine = sum(
                _linear_split_bytes(tensors, f"{c.key}.{name}", split.share_range(kind, first, 1))
                for name, kind in names
                if split.share(kind, first)
            )
        else:
            mine = (
                _linear_split_bytes(tensors, "lm_head", split.share_range("vocab", first, 1))
                if split.share("vocab", first)
                else 0
            )
        worst = max(worst, whole - mine)
    return worst


# ---------------------------------------------------------------------------------------------- scratch


def tp_scratch_bytes(
    spec: ModelSpec, split: TPSplit, max_input_len: int, max_batch_size: int = 1
) -> list[int]:
    """Per device: max over modules of scratch_space_tp() (model.py load_tp_gen), as exllamav2 computes it
    (not yet rounded to the bytes // 2 halves the device context allocates: see tp_memory)."""
    n, hd, h = split.num_devices, spec.head_dim, spec.hidden_size
    rows = max_batch_size * max_input_len

    def dq(in_features: int, kind: str, dim: int) -> list[int]:
        out = [0] * n
        for d, a, b in split.ranges(kind):
            out[d] = 2 * min(in_features * (b - a) * dim, memory.MAX_DQ_SIZE)
        return out

    def broadcast(kind: str, dim: int) -> list[int]:  # tensor_p.get_temp_tensors_bc_s
        out = [0] * n
        for d, _, _ in split.ranges(kind):
            out[d] = rows * split.width(kind) * dim * 2
        return out

    def sliced(kind: str, dim: int) -> list[int]:  # tensor_p.get_temp_tensors_s
        out = [0] * n
        for d, a, b in split.ranges(kind):
            out[d] = rows * (b - a) * dim * 2
        return out

    def amax(*parts: list[int]) -> list[int]:
        return [max(col) for col in zip(*parts, strict=True)]

    def total(*parts: list[int]) -> list[int]:
        return [sum(col) for col in zip(*parts, strict=True)]

    q_in = spec.num_attention_heads * hd
    attn = total(
        amax(dq(h, "q", hd), dq(h, "kv", hd), dq(h, "kv", hd), dq(q_in, "q", hd)),
        *(broadcast("q", hd) for _ in range(3)),
        sliced("q", hd),
        sliced("kv", hd),
        sliced("kv", hd),
        sliced("q", hd),
    )
    inter = spec.intermediate_size
    mlp_dq = [dq(h, "intermediate", 1)] if spec.rules.lm.mlp_gate else []
    mlp = total(
        amax(*mlp_dq, dq(h, "intermediate", 1), dq(inter, "hidden", 1)),
        broadcast("hidden", 1),
        broadcast("hidden", 1),
        broadcast("intermediate", 1),
        sliced("intermediate", 1),
        sliced("intermediate", 1),
        sliced("hidden", 1),
    )
    head = dq(h, "vocab", 1)
    return amax(attn, mlp, head)


# ------------------------------------------------------------------------------------------------ cache


def tp_cache_bytes(
    spec: ModelSpec, split: TPSplit, mode: str, seq_len: int, batch_size: int = 1
) -> list[tuple[int, int]]:
    """(K/V + scales, FP16 staging) per device: ExLlamaV2Cache_TP builds one base cache per KV-split device
    with that device's share of the KV heads."""
    out = [(0, 0)] * split.num_devices
    for d, a, b in split.kv:
        sub = dataclasses.replace(spec, num_key_value_heads=b - a)
        out[d] = (
            memory.kv_cache_bytes(sub, mode, seq_len, batch_size),
            memory.kv_staging_bytes(sub, mode, seq_len, batch_size),
        )
    return out


def tp_host_pinned_bytes(spec: ModelSpec, max_input_len: int, max_output_len: int | None = None) -> int:
    """The two pinned host buffers TPContext.finalize allocates (system RAM, not VRAM)."""
    size = (max_output_len if max_output_len is not None else max_input_len) * spec.vocab_size
    size = max(size, max_input_len * spec.intermediate_size)
    return 2 * size * 2


# ---------------------------------------------------------------------------------------- per device


@dataclass(frozen=True)
class TPDevice:
    """One GPU's bytes under tensor parallelism (device = CUDA index inside the plan's GPUs)."""

    device: int
    kv_heads: int
    q_heads: int
    intermediate_columns: int
    hidden_columns: int
    vocab_columns: int
    weights_bytes: int
    cache_bytes: int  # K/V (+ scales) of this device's heads, every layer
    staging_bytes: int  # the quantized cache's FP16 pair for this device's heads
    scratch_bytes: int  # the device context's scratch tensor (TP temp buffers, broadcast buffers, dequant)
    rope_bytes: int  # sin/cos tables and TPContext's concatenated copies
    transient_bytes: int  # estimate: final-norm broadcast and logits slices at the head
    load_peak_extra_bytes: int = 0  # estimate: first device only, one whole module during load
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        """Steady state (after load), without the CUDA context and allocator reserve."""
        return (
            self.weights_bytes
            + self.cache_bytes
            + self.staging_bytes
            + self.scratch_bytes
            + self.rope_bytes
            + self.transient_bytes
        )

    @property
    def load_bytes(self) -> int:
        """During load: weights, scratch and RoPE tables (the TP cache is created after load_tp)."""
        return self.weights_bytes + self.scratch_bytes + self.rope_bytes + self.load_peak_extra_bytes


def tp_memory(
    spec: ModelSpec,
    split: TPSplit,
    *,
    cache_mode: str,
    max_seq_len: int,
    max_input_len: int,
    max_batch_size: int = 1,
    head_rows: int = 8,
) -> list[TPDevice]:
    """Every device's bytes at `max_seq_len`: weights, the TP cache, scratch, RoPE and (estimated)
    transients. `head_rows`: rows that reach the head per forward (the dynamic generator's max_q_size, 8,
    per sequence); the final norm broadcasts and outputs that many rows of hidden state on every VC device
    and lm_head writes a rows x vocab-slice fp16 output there."""
    weights = tp_device_weights(spec, split)
    scratch = tp_scratch_bytes(spec, split, max_input_len, max_batch_size)
    cache = tp_cache_bytes(spec, split, cache_mode, max_seq_len, max_batch_size)
    rope = memory.rope_bytes(spec, max_seq_len)
    peak = tp_load_peak_extra_bytes(spec, split)
    rows = head_rows * max_batch_size
    out = []
    for d in split.memory_devices:
        has_ctx = scratch[d] > 0
        vocab = split.share("vocab", d)
        transient = (2 * rows * spec.hidden_size * 2 + rows * vocab * 2) if vocab else 0
        out.append(
            TPDevice(
                device=d,
                kv_heads=split.share("kv", d),
                q_heads=split.share("q", d),
                intermediate_columns=split.share("intermediate", d),
                hidden_columns=split.share("hidden", d),
                vocab_columns=vocab,
                weights_bytes=weights[d],
                cache_bytes=cache[d][0],
                staging_bytes=cache[d][1],
                scratch_bytes=scratch[d] // 2 * 2,
                rope_bytes=(rope if has_ctx else 0) + (rope if d in split.devices else 0),
                transient_bytes=transient,
                load_peak_extra_bytes=peak if d == split.devices[0] else 0,
            )
        )
    return out


@dataclass(frozen=True)
class TPFit:
    split: TPSplit
    devices: list[TPDevice]
    allocation_mb: list[float]
    fits: bool


def tp_fit(
    spec: ModelSpec,
    budgets: Sequence[int],
    reserves: Sequence[int],
    *,
    cache_mode: str,
    max_seq_len: int,
    max_input_len: int,
    max_batch_size: int = 1,
    allocation_mb: Sequence[float] | None = None,
) -> TPFit:
    """The split load_tp makes from `allocation_mb` (default: each budget in MB, what a gpu_split of the
    budgets gives) with the cache expected at max_seq_len, and whether every device's steady and load-time
    bytes plus its reserve stay within its budget."""
    alloc = list(allocation_mb) if allocation_mb is not None else [b / MiB for b in budgets]
    split = define_tp_split(spec, alloc, cache_tokens=max_seq_len * max_batch_size, cache_mode=cache_mode)
    if split.num_devices > len(budgets):
        raise ValueError("the split uses more devices than budgets were given")
    devices = tp_memory(
        spec,
        split,
        cache_mode=cache_mode,
        max_seq_len=max_seq_len,
        max_input_len=max_input_len,
        max_batch_size=max_batch_size,
    )
    fits = all(max(d.total_bytes, d.load_bytes) + reserves[d.device] <= budgets[d.device] for d in devices)
    return TPFit(split, devices, alloc, fits)


# ------------------------------------------------------------------------------------------- the rules


def tp_refusals(
    spec: ModelSpec,
    *,
    gpu_count: int,
    backend: str,
    flash_attn_version: str | None,
    sdpa_enabled: bool,
    exllamav2_version: str = "0.3.2",
    lora_count: int = 0,
) -> list[Finding]:
    """Why a tensor-parallel load of `spec` cannot work (empty: it can). `backend` is the attention
    backend exllamav2 would use on these GPUs (what the planner selected); `sdpa_enabled` whether its SDPA
    branch is on (torch has causal_lower_right and no_sdpa is not set)."""
    req = rules()["requires"]
    out: list[Finding] = []
    arch = spec.architecture
    if gpu_count < 2:
        out.append(
            finding(
                "tp.single_gpu",
                f"--tensor-parallel needs two or more GPUs; {gpu_count} given "
                "(TabbyAPI ignores tensor_parallel on one GPU)",
                gpu_count=gpu_count,
                source=req["single_gpu_source"],
            )
        )
    if not spec.rules.lm.supports_tp:
        out.append(
            finding(
                "tp.architecture",
                f"exllamav2 0.3.2 has no tensor-parallel implementation for {arch} (supports_tp is not set)",
                architecture=arch,
                source=req["architecture_source"],
            )
        )
    if spec.intermediate_size % req["intermediate_multiple"]:
        out.append(
            finding(
                "tp.intermediate_size",
                f"intermediate_size {spec.intermediate_size} is not a multiple of "
                f"{req['intermediate_multiple']}: TPContext asserts it",
                intermediate_size=spec.intermediate_size,
                source=req["intermediate_source"],
            )
        )
    unsplittable = _non_exl2_linears(spec)
    if unsplittable:
        out.append(
            finding(
                "tp.not_exl2",
                f"tensor parallelism splits only EXL2-quantized linears; {unsplittable[0]} "
                f"(and {len(unsplittable) - 1} more) is not",
                first=unsplittable[0],
                count=len(unsplittable),
                source=req["exl2_source"],
            )
        )
    if spec.uses_swa:
        out.append(
            finding(
                "tp.sliding_window",
                f"{arch} uses sliding-window attention, which exllamav2's TP attention asserts against",
                source=req["no_sliding_window_source"],
            )
        )
    if spec.hidden_size != spec.num_attention_heads * spec.head_dim:
        out.append(
            finding(
                "tp.head_width",
                f"hidden_size {spec.hidden_size} != heads x head_dim "
                f"{spec.num_attention_heads * spec.head_dim}: TP broadcasts and norms the hidden state at the"
                " heads' width (wrong output or a crash)",
                hidden_size=spec.hidden_size,
                heads_width=spec.num_attention_heads * spec.head_dim,
                source=req["hidden_equals_heads_source"],
            )
        )
    if spec.is_moe:
        out.append(
            finding(
                "tp.moe",
                f"{arch} has mixture-of-experts MLPs: exllamav2's load_tp splits attention and dense MLPs "
                "only and leaves the experts whole on one GPU, which is not modelled",
                architecture=arch,
                source=req["moe_source"],
            )
        )
    post = _norm_keys(spec.rules, "norm_1_post", "norm_2_post")
    if post:
        out.append(
            finding(
                "tp.post_norms",
                f"{arch} normalises after attention / MLP ({', '.join(k.lstrip('.') for k in post)}), which "
                "exllamav2's TP kernels skip (wrong output)",
                architecture=arch,
                norms=[k.lstrip(".") for k in post],
                source=req["post_norms_source"],
            )
        )
    if spec.use_qk_norm:
        out.append(
            finding(
                "tp.qk_norm",
                f"{arch} normalises q and k per head, which exllamav2's TP attention kernels skip "
                "(wrong output)",
                source=req["qk_norm_source"],
            )
        )
    if spec.partial_rotary_factor < 1.0:
        out.append(
            finding(
                "tp.partial_rotary",
                f"partial_rotary_factor {spec.partial_rotary_factor}: the TP kernels "
                "rotate the full head (wrong output)",
                source=req["partial_rotary_source"],
            )
        )
    if lora_count:
        out.append(
            finding(
                "tp.lora_ignored",
                f"{lora_count} LoRA adapter(s) given: exllamav2's TP forward never applies LoRAs",
                lora_count=lora_count,
                source=req["lora_source"],
            )
        )
    out.extend(_attention_refusals(spec, backend, flash_attn_version, sdpa_enabled, exllamav2_version))
    return out


def _non_exl2_linears(spec: ModelSpec) -> list[str]:
    """The attention, MLP and head linears (model/graph.py) with no EXL2 q_weight: tp_split refuses them."""
    have = spec.tensor_bytes
    keys = [
        lin.key
        for node in lm_modules(spec)
        if node.kind in ("attn", "mlp", "lm_head")
        for lin in node.linears
    ]
    return [k for k in keys if f"{k}.q_weight" not in have]


def _attention_refusals(
    spec: ModelSpec, backend: str, flash_version: str | None, sdpa_enabled: bool, exl2: str
) -> list[Finding]:
    att = rules()["attention"]
    floor = att["flash_attn_min_version"]
    if backend == att["backend"]:
        if flash_version is not None and not at_least(flash_version, floor):
            return [
                finding(
                    "tp.attention.flash_attn_too_old",
                    f"flash-attn {flash_version} < {floor}: exllamav2's TP "
                    "kernels call flash_attn_2_cuda.fwd_kvcache with the cache_leftpad/softcap signature of "
                    f"{floor}+ (TypeError at the first forward)",
                    flash_attn=flash_version,
                    needs=floor,
                    source=att["flash_attn_source"],
                )
            ]
        return []
    sdpa = load_data("backends.toml")["sdpa"]
    asserts_ok = sdpa_enabled and not spec.attn_logit_softcapping
    if asserts_ok and in_specifier(exl2, sdpa["broken_exllamav2"]):
        return [
            finding(
                "tp.attention.sdpa_defect",
                f"without flash-attn ({backend} here), exllamav2 {exl2}'s TP "
                "attention runs its SDPA branch, which drops the causal mask on prompt and multi-token passes"
                " (wrong output); TP needs flash-attn",
                backend=backend,
                source=att["sdpa_defect_source"],
            )
        ]
    if not asserts_ok:
        why = "no_sdpa is set or torch lacks causal_lower_right" if not sdpa_enabled else "the model softcaps"
        return [
            finding(
                "tp.attention.assertion",
                f"without flash-attn ({backend} here), exllamav2's TP attention "
                f"asserts torch SDPA, which is off ({why}): the first forward fails; TP needs flash-attn",
                backend=backend,
                source=att["sdpa_assert_source"],
            )
        ]
    return []


def tp_worth_it(
    gpus: Sequence[tuple[str, int, str | None]],
    *,
    fits_one_gpu: bool,
    tp_fits: bool,
) -> Finding:
    """Whether to suggest TP: `gpus` as (name, total VRAM bytes, compute capability) in CUDA order."""
    w = rules()["worth_it"]
    if len(gpus) < 2:
        return finding("tp.not_worth.single_gpu", "tensor parallelism needs two or more GPUs")
    if not tp_fits:
        return finding(
            "tp.not_worth.does_not_fit", "the model and its cache do not fit under tensor parallelism"
        )
    if fits_one_gpu:
        return finding(
            "tp.not_worth.fits_one_gpu",
            "the model fits on one GPU: a single GPU has no per-layer broadcasts to pay",
            source=w["source"],
        )
    ccs = {cc for _, _, cc in gpus}
    vram = [v for _, v, _ in gpus]
    if w["same_compute_capability"] and len(ccs) > 1:
        return finding(
            "tp.not_worth.mixed_gpus",
            f"the GPUs differ in compute capability ({', '.join(sorted(map(str, ccs)))}): "
            "every TP layer waits for the slowest",
            source=w["source"],
        )
    if max(vram) > min(vram) * w["max_vram_ratio"]:
        return finding(
            "tp.not_worth.mixed_gpus",
            "the GPUs differ in VRAM by more than "
            f"{w['max_vram_ratio']:g}x: TP gives the smaller one fewer heads but every layer still waits for "
            "it",
            source=w["source"],
        )
    return finding(
        "tp.worth_it",
        f"{len(gpus)} alike GPUs and a model that needs more than one: tensor parallelism "
        "runs every layer on all of them at once",
        source=w["source"],
    )
