"""One model, one backend, one set of GPU budgets: the memory model (`memory`) fed to the fit solver (`fit`).

`Solver.place(mode, seq_len, chunk)` is the placement at one point, `Solver.max_seq_len(mode, chunk, cap)`
the largest context (a whole number of exllamav2 pages) at which every module still fits.
"""

from __future__ import annotations

from typing import Any

from exlx_autocfg import exl2
from exlx_autocfg.planner import memory
from exlx_autocfg.planner.fit import Costs, Module, Placed, fit, largest_fitting

_MODULE_CACHE: dict[tuple[int, int, int], tuple[Any, list[Module]]] = {}


def gpu_modules(spec: Any, chunk: int, batch: int) -> list[Module]:
    """memory.module_costs without the CPU-resident embedding (embed_cpu=True in every loader). Memoised per
    spec object: the benchmark and the what-if grid plan one model many times."""
    key = (id(spec), chunk, batch)
    hit = _MODULE_CACHE.get(key)
    if hit is not None and hit[0] is spec:
        return hit[1]
    mods = [
        Module(c.key, c.kind, c.layer, c.weight_bytes, c.scratch_fixed_bytes, c.has_cache)
        for c in memory.module_costs(spec, max_input_len=chunk, max_batch_size=batch)
        if not c.on_cpu
    ]
    if len(_MODULE_CACHE) > 256:
        _MODULE_CACHE.clear()
    _MODULE_CACHE[key] = (spec, mods)
    return mods


class Solver:
    """Places modules and evaluates memory for one model, backend and GPU set."""

    def __init__(self, spec: Any, backend: str, budgets: list[int], reserves: list[int], batch: int) -> None:
        self.spec = spec
        self.backend = backend
        self.budgets = budgets
        self.reserves = reserves
        self.batch = batch
        self._modules: dict[int, list[Module]] = {}

    def modules(self, chunk: int) -> list[Module]:
        if chunk not in self._modules:
            self._modules[chunk] = gpu_modules(self.spec, chunk, self.batch)
        return self._modules[chunk]

    def costs(self, mode: str, seq_len: int, chunk: int) -> Costs:
        spec, batch = self.spec, self.batch
        cache = memory.kv_cache_bytes(spec, mode, seq_len, batch_size=batch)
        return Costs(
            cache_per_layer=cache // spec.num_hidden_layers,
            staging=memory.kv_staging_bytes(spec, mode, seq_len, batch_size=batch),
            rope=memory.rope_bytes(spec, seq_len),
            activations=memory.forward_activation_bytes(spec, chunk, batch),
            attention=memory.attention_transient_bytes(
                spec,
                self.backend,
                max_input_len=chunk,
                max_attention_size=chunk * chunk,
                max_seq_len=seq_len,
                batch_size=batch,
            ),
        )

    def place(self, mode: str, seq_len: int, chunk: int) -> list[Placed] | None:
        """The placement at this point; None: the modules do not fit. exllamav2 clamps max_input_len to
        max_seq_len, and so does this."""
        chunk = min(chunk, seq_len)
        return fit(self.budgets, self.reserves, self.modules(chunk), self.costs(mode, seq_len, chunk))

    def max_seq_len(self, mode: str, chunk: int, cap: int) -> int:
        """The largest multiple of the page size <= cap that fits (0: not even one page fits)."""
        return largest_fitting(lambda n: self.place(mode, n, chunk) is not None, cap, exl2.PAGE_SIZE)
