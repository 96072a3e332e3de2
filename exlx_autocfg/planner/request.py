"""What the user asked the planner for, validated once (`Request.from_kwargs`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from exlx_autocfg import exl2
from exlx_autocfg.errors import OptionError, UsageError
from exlx_autocfg.options import check_kinds

DEFAULT_MARGIN_MIB = 256
# The types a Python caller must pass (the CLI parser gives them already).
REQUEST_KINDS: dict[str, type] = {"context": int, "cache": str, "backend": str, "min_cache_precision": str,
                                  "budget": str, "margin_mib": int, "batch_size": int, "chunk_size": int}


@dataclass(frozen=True)
class Request:
    """What the user asked for. Every field is optional; `plan()` takes them as keyword arguments."""

    context: int | None = None  # target max_seq_len (default: the model's max_position_embeddings)
    cache: str | None = None  # force a cache mode
    backend: str | None = None  # force a backend ("auto" = None)
    min_cache_precision: str | None = None  # never pick a cache coarser than this
    budget: str = "total"  # "total" VRAM or "free" VRAM (as detected) per GPU
    margin_mib: int = DEFAULT_MARGIN_MIB  # safety margin per GPU, on top of the overheads
    batch_size: int = 1  # cache batch size / max_batch_size
    chunk_size: int | None = None  # force max_input_len
    overheads: Any = None  # memory.Overheads; None = memory.DEFAULT_OVERHEADS

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> Request:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise UsageError(
                f"unknown plan option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        req = cls(**{k: v for k, v in kwargs.items() if v is not None})
        return req.normalised()

    def normalised(self) -> Request:
        """Checked and canonical (upper-case cache modes, `auto` backend as None). Raises OptionError
        naming the keyword argument (the CLI shows it as the flag)."""
        check_kinds(asdict(self), REQUEST_KINDS)
        modes = exl2.CACHE_MODES
        changes: dict[str, Any] = {}
        for name in ("cache", "min_cache_precision"):
            value = getattr(self, name)
            if value is not None:
                upper = str(value).upper()
                if upper not in modes:
                    raise OptionError(name, value, f"choose one of {', '.join(modes)}")
                changes[name] = upper
        if self.backend is not None:
            from exlx_autocfg.planner.backends import check_name

            changes["backend"] = None if str(self.backend).lower() == "auto" else check_name(self.backend)
        if self.budget not in ("total", "free"):
            raise OptionError("budget", self.budget, "choose total or free")
        if self.context is not None and self.context < 1:
            raise OptionError("context", self.context, "must be a positive number of tokens")
        if self.margin_mib < 0:
            raise OptionError("margin_mib", self.margin_mib, "must be >= 0")
        if self.batch_size < 1:
            raise OptionError("batch_size", self.batch_size, "must be >= 1")
        page = exl2.PAGE_SIZE
        if self.chunk_size is not None and (self.chunk_size < page or self.chunk_size % page):
            raise OptionError("chunk_size", self.chunk_size, f"must be a multiple of {page}")
        cache, floor = changes.get("cache"), changes.get("min_cache_precision")
        if cache and floor and modes.index(cache) > modes.index(floor):
            raise OptionError("cache", cache,
                              f"is coarser than the minimum cache precision {floor} also given")
        return Request(**{**asdict(self), "overheads": self.overheads, **changes})

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and k != "overheads"}

    def allowed_modes(self) -> list[str]:
        """The cache modes this request lets the planner choose from, most precise first."""
        if self.cache:
            return [self.cache]
        floor = self.min_cache_precision
        modes = exl2.CACHE_MODES
        return [m for m in modes if floor is None or modes.index(m) <= modes.index(floor)]
