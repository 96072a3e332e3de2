"""exllamav2's `set_device_map` (model.py @ 0.3.2), emulated: the `gpu_split` that reproduces a placement.

`model.load(gpu_split)` does not place modules by VRAM: `set_device_map` subtracts the RoPE tables, the
hidden state and the mask from each GB allocation, then places modules while footprint + the largest
`scratch_space()` + `temp_attn_size()` fits. It does not count the cache, so the allocation, not the VRAM,
decides the split: this module finds allocations that land every module where the fit solver put it.
"""

from __future__ import annotations

from typing import Any

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
