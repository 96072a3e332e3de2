"""exllamav2's `set_device_map` (model.py @ 0.3.2), emulated: the `gpu_split` that reproduces a placement.

`model.load(gpu_split)` does not place modules by VRAM: `set_device_map` subtracts the RoPE tables, the
hidden state and the mask from each GB allocation, then places modules while footprint + the largest
`scratch_space()` + `temp_attn_size()` fits. It does not count the cache, so the allocation, not the VRAM,
decides the split: this module finds allocations that land every module where the fit solver put it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from exlx_autocfg.errors import DoesNotFitError
from exlx_autocfg.model.spec import ModelSpec
from exlx_autocfg.planner import memory
from exlx_autocfg.planner.fit import Placed

GIB = 1024**3


def set_device_map_allocation(
    spec: Any, backend: str, devices: list[Placed], seq_len: int, chunk: int, batch: int
) -> list[float]:
    """GB per GPU for `model.load(gpu_split)` that makes `set_device_map` place exactly the planned modules:
    halfway between "all planned modules fit" and "the next one would fit too"."""
    constant = 4 * spec.head_dim * seq_len  # sin + cos tables, fp16 (set_device_map: sincos_size * 2)
    state = spec.hidden_size * chunk * batch * 2
    mask = chunk * chunk * batch * 2
    temp_attn = memory.manual_split_attn_reserve_bytes(
        spec, chunk * chunk, seq_len, flash_or_xformers=backend in ("flash_attn", "xformers")
    )
    order = [
        c
        for c in memory.module_costs(spec, max_input_len=chunk, max_batch_size=batch, max_seq_len=seq_len)
        if not c.on_cpu
    ]

    def needed(mods: list[Any]) -> int:
        foot = sum(x.weight_bytes for x in mods)
        scratch = max((x.scratch_bytes for x in mods), default=0)
        attn = temp_attn if any(x.kind == "attn" for x in mods) else 0
        return constant + state + mask + foot + scratch + attn

    split: list[float] = []
    position = 0
    for i, dev in enumerate(devices):
        mods = order[position : position + len(dev.modules)]
        position += len(dev.modules)
        fits = needed(mods)
        if i == len(devices) - 1 or position >= len(order):
            alloc = max(fits, dev.budget)
        else:
            alloc = (fits + needed([*mods, order[position]])) // 2
        split.append(round(alloc / GIB, 4))
    return split


def set_device_map_placement(
    spec: ModelSpec,
    allocation_gb: Sequence[float],
    *,
    max_seq_len: int,
    max_input_len: int,
    max_batch_size: int = 1,
    max_attention_size: int | None = None,
    flash_or_xformers: bool = False,
) -> list[int]:
    """The device exllamav2's set_device_map(allocation) gives each GPU module (the embedding stays on the
    CPU), in module order: per device, the allocation less RoPE tables, hidden state and mask, then modules
    while footprint + max scratch_space() + max temp_attn_size() fits (model.py set_device_map).
    Raises DoesNotFitError where exllamav2 asserts "Insufficient space in device allocation"."""
    attn_size = max_attention_size if max_attention_size is not None else max_input_len**2
    constant = spec.head_dim * max_seq_len * 2 * 2  # sincos_size * 2 (every modelled arch has RoPE)
    state = spec.hidden_size * max_input_len * max_batch_size * 2
    mask = max_input_len**2 * max_batch_size * 2
    left = [a * GIB - (constant + state + mask) for a in allocation_gb]
    reserve = [0] * len(left)
    reserve_attn = [0] * len(left)
    temp_attn = memory.manual_split_attn_reserve_bytes(
        spec, attn_size, max_seq_len, flash_or_xformers=flash_or_xformers
    )
    out: list[int] = []
    cur = 0
    for c in memory.module_costs(spec, max_input_len, max_batch_size, max_seq_len):
        if c.on_cpu:
            continue
        attn = temp_attn if c.kind == "attn" else 0
        while True:
            if cur >= len(left):
                raise DoesNotFitError(
                    f"{spec.name}: gpu_split {list(allocation_gb)} GB is too small for its modules "
                    "(exllamav2: Insufficient space in device allocation)"
                )
            s = max(c.scratch_bytes, reserve[cur])
            sa = max(attn, reserve_attn[cur])
            if c.weight_bytes + s + sa <= left[cur]:
                break
            cur += 1
        reserve[cur], reserve_attn[cur] = s, sa
        left[cur] -= c.weight_bytes
        out.append(cur)
    return out
