"""What the user asked the planner for, validated once (`Request.from_kwargs`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from exlx_autocfg import exl2
from exlx_autocfg.errors import OptionError, UsageError
from exlx_autocfg.options import check_kinds

DEFAULT_MARGIN_MIB = 256
# The types a Python caller must pass (the CLI parser gives them already).
REQUEST_KINDS: dict[str, type] = {"context": int, "cache": str, "backend": str, "min_cache_precision": str,
                                  "budget": str, "margin_mib": int, "batch_size": int, "chunk_size": int,
                                  "draft_cache": str, "tensor_parallel": bool, "vision": bool}


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
    # What loads beside the model (planner.companions, planner.tp_solve)
    draft: Any = None  # a draft model: reference (directory, catalog, hf:), ModelSpec or DraftInput
    draft_cache: str | None = None  # force the draft's cache mode (default: the model's)
    tensor_parallel: bool = False  # load_tp over the GPUs in use
    loras: tuple[Any, ...] = ()  # adapters: "DIR[:SCALE]", (DIR, SCALE), {"path", "scale"} or LoraInput
    vision: bool = False  # load the vision tower and projector too (TabbyAPI `vision: true`)

    def values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

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
        check_kinds(self.values(), REQUEST_KINDS)
        modes = exl2.CACHE_MODES
        changes: dict[str, Any] = {}
        if isinstance(self.loras, (str, bytes)) or not isinstance(self.loras, (list, tuple)):
            raise OptionError("loras", self.loras, "must be a list of adapters (DIR[:SCALE] each)")
        changes["loras"] = tuple(self.loras)
        if self.draft_cache is not None and self.draft is None:
            raise OptionError("draft_cache", self.draft_cache, "applies only with a draft model (--draft)")
        for name in ("cache", "min_cache_precision", "draft_cache"):
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
        return Request(**{**self.values(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """The options as data (plan --json `request`, a profile's `[request]`): references, not specs,
        so that a profile re-plans with the same draft and adapters; defaults left out."""
        out = {k: v for k, v in self.values().items()
               if v is not None and k not in ("overheads", "draft", "loras", "tensor_parallel", "vision")}
        if self.tensor_parallel:
            out["tensor_parallel"] = True
        if self.vision:
            out["vision"] = True
        if self.draft is not None:
            out["draft"] = _reference(self.draft)
        if self.loras:
            out["loras"] = [_lora_reference(x) for x in self.loras]
        return out

    def allowed_modes(self) -> list[str]:
        """The cache modes this request lets the planner choose from, most precise first."""
        if self.cache:
            return [self.cache]
        floor = self.min_cache_precision
        modes = exl2.CACHE_MODES
        return [m for m in modes if floor is None or modes.index(m) <= modes.index(floor)]


def _reference(draft: Any) -> str:
    """A draft as a reference `load_model_spec` reads again."""
    from exlx_autocfg.model.companions import DraftInput, reference_of

    if isinstance(draft, DraftInput):
        return draft.reference
    if hasattr(draft, "num_hidden_layers"):
        return reference_of(draft)
    return str(draft)


def _lora_reference(item: Any) -> dict[str, Any]:
    from exlx_autocfg.model.companions import LoraInput, parse_lora_option

    if isinstance(item, LoraInput):
        return {"path": item.reference, "scale": item.scale}
    if isinstance(item, dict):
        return {"path": str(item.get("path")), "scale": float(item.get("scale", 1.0))}
    if isinstance(item, (list, tuple)) and len(item) == 2:
        return {"path": str(item[0]), "scale": float(item[1])}
    path, scale = parse_lora_option(str(item))
    return {"path": path, "scale": scale}
