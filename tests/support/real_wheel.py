"""Reading the real exllamav2 wheel's own allocations (CPU torch, stand-in extension), for the tests and
tools that compare the memory model with it: its cache classes by mode, written out here rather than taken
from exlx_autocfg.exl2.CACHE_CLASS (the mapping under test), and the bytes a cache allocates on torch's
meta device through its real `update_cache_tensors()`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

CACHE_CLASSES = {
    "FP16": "ExLlamaV2Cache",
    "Q8": "ExLlamaV2Cache_Q8",
    "Q6": "ExLlamaV2Cache_Q6",
    "Q4": "ExLlamaV2Cache_Q4",
}


def storage_bytes(tensors: Iterable[Any]) -> int:
    """Bytes of the distinct storages behind `tensors` (None skipped; GPT-2's sin and cos share one)."""
    return sum({t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors
                if t is not None}.values())


def real_cache_bytes(exl2: Any, model: Any, mode: str, *, seq: int, layers: Iterable[int], batch: int = 1,
                     ) -> tuple[int, int]:
    """(K/V and scales, FP16 staging pair) the real cache class of `mode` allocates for `layers` of
    `model` at `seq` tokens and `batch`, as the autosplit path does: lazily, then per layer on the device."""
    cache = getattr(exl2, CACHE_CLASSES[mode])(model, batch_size=batch, max_seq_len=seq, lazy=True)
    model.cache_map = {layer: "meta" for layer in layers}
    cache.update_cache_tensors()
    states = storage_bytes(cache.key_states + cache.value_states + cache.key_scales + cache.value_scales)
    staging = storage_bytes(t for pair in getattr(cache, "temp_tensors", {}).values() for t in pair)
    return states, staging
