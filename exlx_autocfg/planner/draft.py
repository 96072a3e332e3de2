"""A draft model beside the model (speculative decoding): its bytes, where TabbyAPI/exllamav2 put them, and
whether the pair can work. Pure functions of two ModelSpecs; rules and sources in profiles/draft.toml.

How TabbyAPI loads it (backends/exllamav2/model.py, exl2-checkpoint): the draft FIRST, never tensor-
parallel, at the model's max_seq_len, cache_size and chunk, in its own cache mode (TabbyAPI default FP16);
with `draft_gpu_split` through set_device_map, else through load_autosplit_gen, which fills GPU 0 first.
The model then loads into what is left. So the draft's persistent bytes (weights, cache, FP16 staging of a
quantized cache, its own scratch tensor and RoPE tables) come off the GPUs it lands on before the model is
placed, and its transients (one draft forward) overlap the model's only in time, not in memory: the
caching allocator reuses the same blocks, so a GPU pays max(model transients, draft transients).

Exact against the real wheel (tests/test_draft_realwheel.py): weights, scratch, cache and staging per
device, the manual placement (set_device_map) and the dynamic generator's asserts on the pair.
Estimated: the autosplit placement (exllamav2 fills a GPU until a real allocation fails) and transients.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from exlx_autocfg import exl2
from exlx_autocfg.data import load_data
from exlx_autocfg.errors import DoesNotFitError
from exlx_autocfg.findings import Finding, finding
from exlx_autocfg.model.spec import ModelSpec
from exlx_autocfg.model.tokenizer import TokenizerInfo
from exlx_autocfg.planner import memory
from exlx_autocfg.planner.rope import rope_alpha
from exlx_autocfg.planner.split import set_device_map_placement

GIB = 1024**3
MIB = 1024**2


@functools.cache
def rules() -> dict[str, Any]:
    return load_data("draft.toml")


# ------------------------------------------------------------------------------------------------ costs

_COSTS: dict[tuple[int, int, int, int | None], tuple[ModelSpec, list[memory.ModuleCost]]] = {}


def _module_costs(
    spec: ModelSpec, chunk: int = 2048, batch: int = 1, seq: int | None = None
) -> list[memory.ModuleCost]:
    """memory.module_costs, memoised per spec object: the planner places the draft at every candidate
    context, and each placement reads the same modules several times."""
    key = (id(spec), chunk, batch, seq)
    hit = _COSTS.get(key)
    if hit is not None and hit[0] is spec:
        return hit[1]
    if len(_COSTS) > 512:
        _COSTS.clear()
    costs = memory.module_costs(spec, chunk, batch, seq)
    _COSTS[key] = (spec, costs)
    return costs



def draft_weights_bytes(draft: ModelSpec) -> int:
    """GPU weights as exllamav2 counts them (sum of weight_footprint(), embedding on the CPU): the same
    meaning as a plan's memory weights."""
    return memory.gpu_weight_bytes(_module_costs(draft))


def draft_kv_cache_bytes_per_token(draft: ModelSpec) -> dict[str, int]:
    """Per cache mode, bytes per token of max_seq_len on one GPU at batch 1, scales and staging included
    (memory.kv_cache_bytes_per_token: the same meaning as the model's)."""
    return {mode: memory.kv_cache_bytes_per_token(draft, mode) for mode in exl2.CACHE_MODES}


@dataclass(frozen=True)
class DraftDevice:
    """The draft's share of one GPU (`position` indexes the GPU list given, in CUDA order)."""

    position: int
    layers: tuple[int, ...]
    weights_bytes: int
    cache_bytes: int  # K/V (+ scales) of the draft's layers here
    staging_bytes: int  # the quantized draft cache's FP16 pair (once per GPU with draft layers)
    scratch_bytes: int  # the draft's own device-context scratch tensor
    rope_bytes: int  # the draft's own sin/cos tables
    transient_bytes: int  # one draft forward at the chunk: hidden state + attention (not held)

    @property
    def persistent_bytes(self) -> int:
        """What stays allocated while the model runs: subtract it from this GPU's budget."""
        return (
            self.weights_bytes + self.cache_bytes + self.staging_bytes + self.scratch_bytes + self.rope_bytes
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "layers": list(self.layers),
            "weights_bytes": self.weights_bytes,
            "cache_bytes": self.cache_bytes,
            "staging_bytes": self.staging_bytes,
            "scratch_bytes": self.scratch_bytes,
            "rope_bytes": self.rope_bytes,
            "transient_bytes": self.transient_bytes,
            "persistent_bytes": self.persistent_bytes,
        }


@dataclass(frozen=True)
class DraftPlan:
    name: str
    weights_bytes: int
    resident_extra_bytes: (
        int  # EXL2 load extras exllamav2 does not count (memory.ModuleCost.load_extra_bytes)
    )
    kv_cache_bytes_per_token: dict[str, int]
    cache_mode: str
    max_seq_len: int
    chunk_size: int
    load: str  # "autosplit" | "gpu_split"
    gpu_split: list[float] | None
    devices: tuple[DraftDevice, ...]
    findings: list[Finding] = field(default_factory=list)
    positions: tuple[int, ...] = ()  # the GPU position of each of its GPU modules, in exllamav2's order

    def persistent_by_position(self, n: int) -> list[int]:
        out = [0] * n
        for d in self.devices:
            out[d.position] += d.persistent_bytes
        return out

    def transient_by_position(self, n: int) -> list[int]:
        out = [0] * n
        for d in self.devices:
            out[d.position] = max(out[d.position], d.transient_bytes)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The `draft` section of plan --json (phase 2)."""
        return {
            "model": self.name,
            "weights_bytes": self.weights_bytes,
            "resident_extra_bytes": self.resident_extra_bytes,
            "kv_cache_bytes_per_token": dict(self.kv_cache_bytes_per_token),
            "cache_mode": self.cache_mode,
            "max_seq_len": self.max_seq_len,
            "chunk_size": self.chunk_size,
            "load": self.load,
            "gpu_split": self.gpu_split,
            "devices": [d.to_dict() for d in self.devices],
        }


@dataclass(frozen=True)
class _Mod:
    """What placing the draft reads of one of its GPU modules."""

    layer: int | None
    weight: int
    scratch_fixed: int
    has_cache: bool


def _modules(draft: ModelSpec, chunk: int, batch: int, seq: int) -> list[_Mod]:
    return [
        _Mod(c.layer, c.weight_bytes, c.scratch_fixed_bytes, c.has_cache)
        for c in _module_costs(draft, chunk, batch, seq)
        if not c.on_cpu
    ]


def _transient(draft: ModelSpec, backend: str, chunk: int, seq: int, batch: int) -> int:
    return memory.forward_activation_bytes(draft, chunk, batch) + memory.attention_transient_bytes(
        draft,
        backend,
        max_input_len=chunk,
        max_attention_size=chunk * chunk,
        max_seq_len=seq,
        batch_size=batch,
    )


def _devices(
    draft: ModelSpec,
    placement: Sequence[int],
    mods: list[_Mod],
    *,
    cache_mode: str,
    seq: int,
    chunk: int,
    backend: str,
    batch: int,
    scratch_per_device: dict[int, int],
) -> tuple[DraftDevice, ...]:
    per_layer = memory.kv_cache_bytes(draft, cache_mode, seq, batch, layers=1)
    staging = memory.kv_staging_bytes(draft, cache_mode, seq, batch)
    rope = memory.rope_bytes(draft, seq)
    transient = _transient(draft, backend, chunk, seq, batch)
    out = []
    for pos in sorted(set(placement)):
        here = [m for m, p in zip(mods, placement, strict=True) if p == pos]
        cache_layers = sum(m.has_cache for m in here)
        out.append(
            DraftDevice(
                position=pos,
                layers=tuple(sorted({m.layer for m in here if m.layer is not None})),
                weights_bytes=sum(m.weight for m in here),
                cache_bytes=cache_layers * per_layer,
                staging_bytes=staging if cache_layers else 0,
                scratch_bytes=scratch_per_device[pos],
                rope_bytes=rope,
                transient_bytes=transient
                if cache_layers
                else memory.forward_activation_bytes(draft, chunk, batch),
            )
        )
    return tuple(out)


def _where(d: DraftDevice) -> str:
    layers = f"layers {d.layers[0]}-{d.layers[-1]}" if d.layers else "head only"
    return f"GPU {d.position}: {layers}, {d.persistent_bytes / MIB:,.0f} MiB held"


def _plan(
    draft: ModelSpec,
    placement: Sequence[int],
    mods: list[_Mod],
    *,
    load: str,
    gpu_split: list[float] | None,
    cache_mode: str,
    seq: int,
    chunk: int,
    backend: str,
    batch: int,
    scratch_per_device: dict[int, int],
) -> DraftPlan:
    """The DraftPlan of modules `mods` placed on `placement` (a CUDA position per module)."""
    devices = _devices(draft, placement, mods, cache_mode=cache_mode, seq=seq, chunk=chunk, backend=backend,
                       batch=batch, scratch_per_device=scratch_per_device)
    costs = _module_costs(draft)
    return DraftPlan(
        name=draft.name,
        weights_bytes=memory.gpu_weight_bytes(costs),
        resident_extra_bytes=sum(c.load_extra_bytes for c in costs if not c.on_cpu),
        kv_cache_bytes_per_token=draft_kv_cache_bytes_per_token(draft),
        cache_mode=cache_mode,
        max_seq_len=seq,
        chunk_size=chunk,
        load=load,
        gpu_split=gpu_split,
        devices=devices,
        positions=tuple(placement),
        findings=[
            finding(
                "draft.placed",
                f"draft {draft.name} ({load}): " + "; ".join(_where(d) for d in devices),
                load=load,
                source=rules()["load"]["order_source"],
            )
        ],
    )


def place_draft_autosplit(
    draft: ModelSpec,
    free_bytes: Sequence[int],
    *,
    cache_mode: str,
    max_seq_len: int,
    chunk_size: int,
    backend: str,
    batch_size: int = 1,
    reserve_bytes: Sequence[int] | None = None,
) -> DraftPlan:
    """The draft as load_autosplit_gen places it on GPUs with `free_bytes` free (in CUDA order, before the
    model loads): modules in order, a GPU is left for the next when the module, its cache layer, the
    device's first-touch tensors (scratch of the largest module, RoPE tables, FP16 staging) and one
    forward at the chunk would exceed what is free minus the load-time reserves (TabbyAPI's
    autosplit_reserve, 96 MiB on GPU 0, and exllamav2's 256 MiB minimum reserve). Raises DoesNotFitError."""
    r = rules()["load"]
    n = len(free_bytes)
    reserve = (
        list(reserve_bytes) if reserve_bytes is not None else [r["tabby_reserve_first_bytes"]] + [0] * (n - 1)
    )
    seq, chunk, batch = max_seq_len, min(chunk_size, max_seq_len), batch_size
    mods = _modules(draft, chunk, batch, seq)
    scratch = memory.fixed_scratch_bytes(_module_costs(draft, chunk, batch, seq))  # all modules
    per_layer = memory.kv_cache_bytes(draft, cache_mode, seq, batch, layers=1)
    staging = memory.kv_staging_bytes(draft, cache_mode, seq, batch)
    rope = memory.rope_bytes(draft, seq)
    transient = _transient(draft, backend, chunk, seq, batch)
    used = [0] * n
    has_attn = [False] * n
    placement: list[int] = []
    d = 0
    for m in mods:
        while True:
            if d >= n:
                raise DoesNotFitError(
                    f"draft {draft.name} does not fit: {len(placement)} of {len(mods)} modules placed on "
                    f"{n} GPU(s) ({cache_mode} cache, {seq} tokens)"
                )
            first_touch = (scratch + rope) if not used[d] else 0
            need = m.weight + first_touch + (per_layer if m.has_cache else 0)
            need += staging if m.has_cache and not has_attn[d] else 0
            if used[d] + need + transient + reserve[d] + r["minimum_reserve_bytes"] <= free_bytes[d]:
                used[d] += need
                has_attn[d] = has_attn[d] or m.has_cache
                placement.append(d)
                break
            d += 1
    return _plan(draft, placement, mods, load="autosplit", gpu_split=None, cache_mode=cache_mode, seq=seq,
                 chunk=chunk, backend=backend, batch=batch,
                 scratch_per_device={p: scratch // 2 * 2 for p in set(placement)})


def place_draft_gpu_split(
    draft: ModelSpec,
    draft_gpu_split: Sequence[float],
    *,
    cache_mode: str,
    max_seq_len: int,
    chunk_size: int,
    backend: str,
    batch_size: int = 1,
) -> DraftPlan:
    """The draft as TabbyAPI loads it with `draft_gpu_split` (GB per GPU): set_device_map's placement, a
    non-lazy cache on the devices of its layers, each device's scratch the max scratch_space_fixed() of its
    own modules."""
    seq, chunk, batch = max_seq_len, min(chunk_size, max_seq_len), batch_size
    placement = set_device_map_placement(
        draft,
        draft_gpu_split,
        max_seq_len=seq,
        max_input_len=chunk,
        max_batch_size=batch,
        flash_or_xformers=backend in ("flash_attn", "xformers"),
    )
    mods = _modules(draft, chunk, batch, seq)
    scratch = {
        p: max(m.scratch_fixed for m, q in zip(mods, placement, strict=True) if q == p) // 2 * 2
        for p in set(placement)
    }
    return _plan(draft, placement, mods, load="gpu_split", gpu_split=list(draft_gpu_split),
                 cache_mode=cache_mode, seq=seq, chunk=chunk, backend=backend, batch=batch,
                 scratch_per_device=scratch)


# ------------------------------------------------------------------------------------------- the pair


def cache_length(spec: ModelSpec, mode: str, tokens: int) -> int:
    """max_seq_len a cache of `tokens` reports (a Q cache rounds up to its q_block)."""
    if mode == "FP16":
        return tokens
    qb = memory.q_block(spec)
    return math.ceil(tokens / qb) * qb


REFUSALS = frozenset(
    {
        "draft.larger_than_model",
        "draft.vocab_larger",
        "draft.tokenizer_mismatch",
        "draft.bos_mismatch",
        "draft.cache_length_mismatch",
    }
)


def is_refusal(f: Finding) -> bool:
    return f.code in REFUSALS


def judge_draft(
    model: ModelSpec,
    draft: ModelSpec,
    *,
    cache_size: int,
    cache_mode: str,
    draft_cache_mode: str,
    model_tokenizer: TokenizerInfo | None = None,
    draft_tokenizer: TokenizerInfo | None = None,
    lora_count: int = 0,
) -> list[Finding]:
    """Whether `draft` can draft for `model`: refusals (codes in REFUSALS) and warnings. `cache_size` is the
    cache length both caches get (TabbyAPI's cache_size: max_seq_len unless paged)."""
    req = rules()["requires"]
    out: list[Finding] = []
    dw, mw = draft_weights_bytes(draft), draft_weights_bytes(model)
    if dw >= mw:
        out.append(
            finding(
                "draft.larger_than_model",
                f"draft {draft.name} ({dw / GIB:.2f} GiB of weights) is not smaller "
                f"than {model.name} ({mw / GIB:.2f} GiB): a drafted token would cost a whole model forward",
                draft_weights_bytes=dw,
                model_weights_bytes=mw,
                source=req["smaller_source"],
            )
        )
    if draft.vocab_size > model.vocab_size:
        out.append(
            finding(
                "draft.vocab_larger",
                f"draft vocabulary {draft.vocab_size} > model vocabulary {model.vocab_size}: "
                "drafted ids can index past the model's embedding",
                draft_vocab=draft.vocab_size,
                model_vocab=model.vocab_size,
                source=req["embedding_source"],
            )
        )
    out.extend(_tokenizer_findings(model, draft, model_tokenizer, draft_tokenizer))
    main_len, draft_len = (
        cache_length(model, cache_mode, cache_size),
        cache_length(draft, draft_cache_mode, cache_size),
    )
    if main_len != draft_len:
        out.append(
            finding(
                "draft.cache_length_mismatch",
                f"at cache_size {cache_size} the {cache_mode} model cache holds "
                f"{main_len} tokens and the {draft_cache_mode} draft cache {draft_len} (Q caches round up to "
                "their quantization block): exllamav2's dynamic generator asserts they are equal",
                model_cache=main_len,
                draft_cache=draft_len,
                source=req["cache_dims_source"],
            )
        )
    if draft.max_position_embeddings < cache_size:
        alpha = rope_alpha(draft.max_position_embeddings, cache_size)
        out.append(
            finding(
                "draft.context_beyond_trained",
                f"max_seq_len {cache_size} exceeds the draft's trained context "
                f"{draft.max_position_embeddings}; set draft_rope_alpha {alpha:.2f} (TabbyAPI's 'auto' scales"
                " from the model's max_position_embeddings, not the draft's)",
                draft_trained=draft.max_position_embeddings,
                max_seq_len=cache_size,
                draft_rope_alpha=round(alpha, 4),
                source=rules()["settings"]["rope_source"],
            )
        )
    if lora_count:
        out.append(
            finding(
                "draft.lora_not_applied",
                f"{lora_count} LoRA(s) apply to the model only: the draft predicts the "
                "base model, so fewer drafted tokens are accepted",
                source=req["lora_source"],
            )
        )
    return out


def _tokenizer_findings(
    model: ModelSpec, draft: ModelSpec, mt: TokenizerInfo | None, dt: TokenizerInfo | None
) -> list[Finding]:
    src = rules()["requires"]["ids_source"]
    out: list[Finding] = []
    compared = (
        mt is not None and dt is not None and mt.comparable and dt.comparable and mt.source == dt.source
    )
    if compared:
        assert mt is not None and dt is not None
        if mt.vocab_digest != dt.vocab_digest:
            out.append(
                finding(
                    "draft.tokenizer_mismatch",
                    f"the draft's {dt.source} vocabulary differs from the model's "
                    f"({dt.vocab_entries} vs {mt.vocab_entries} entries): drafted ids mean other tokens",
                    draft_entries=dt.vocab_entries,
                    model_entries=mt.vocab_entries,
                    source=src,
                )
            )
        else:
            theirs = dict(mt.added_tokens)
            clash = next(((i, c) for i, c in dt.added_tokens if theirs.get(i, c) != c), None)
            if clash is not None:
                out.append(
                    finding(
                        "draft.tokenizer_mismatch",
                        f"added token {clash[0]} is {clash[1]!r} in the draft but "
                        f"{theirs[clash[0]]!r} in the model",
                        token_id=clash[0],
                        source=src,
                    )
                )
    else:
        out.append(
            finding(
                "draft.tokenizer_unverified",
                "the tokenizers could not be compared (no tokenizer.json or "
                "tokenizer.model on both sides); compared the special token ids only",
                source=src,
            )
        )
    mb = mt.bos_token_id if mt else None
    db = dt.bos_token_id if dt else None
    if mb is not None and db is not None and mb != db:
        if compared and not any(f.code == "draft.tokenizer_mismatch" for f in out):
            pass  # same vocabulary and added tokens: a config.json quirk, not another tokenizer
        else:
            out.append(
                finding(
                    "draft.bos_mismatch",
                    f"BOS token id {db} in the draft, {mb} in the model: different tokenizers",
                    draft_bos=db,
                    model_bos=mb,
                    source=src,
                )
            )
    me = set(mt.eos_token_ids) if mt else set()
    de = set(dt.eos_token_ids) if dt else set()
    if me and de and not me & de:
        out.append(
            finding(
                "draft.eos_differs",
                f"EOS ids differ (draft {sorted(de)}, model {sorted(me)}): harmless, only the "
                "model decides when to stop",
                source=src,
            )
        )
    return out
