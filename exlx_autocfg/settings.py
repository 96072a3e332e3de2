"""The settings record: the exllamav2 configuration a plan decides, one typed record everywhere.

The Plan carries it, the profile stores it as its `[settings]` table, the loader applies it to
`ExLlamaV2Config` and the cache class, and every emitter renders it. Names are exllamav2's own
(`max_input_len` is the chunk size). `validate_settings` holds the shape rules ExLlamaV2 and its dynamic
generator impose (whole pages, switches that realise the backend, a sane split); the memory rules live in
the planner (`planner.evaluate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NoReturn

from exlx_autocfg import exl2
from exlx_autocfg.errors import InputError


class SettingsError(InputError):
    """A settings value exllamav2 cannot run; `key` names it (`max_seq_len`, `gpu_split[1]`)."""

    code = "error.settings"

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.problem = message


# Fields of the settings record that exist only when something loads beside the model: they are left out of
# its data (plan --json, the profile) while at their defaults, so a plain plan's record is what it was.
BESIDE = {"omit_default": True}


@dataclass
class DraftSettings:
    """The draft model for speculative decoding, as TabbyAPI's `draft_model:` and the loader apply it. Its
    max_seq_len, max_input_len and max_attention_size are always the model's (TabbyAPI sets them so, and
    exllamav2's dynamic generator asserts the draft's is not shorter)."""

    name: str  # the draft's folder name (TabbyAPI draft_model_name), or its catalog / Hub reference
    cache_mode: str  # one of exl2.CACHE_MODES; its own cache class
    path: str | None = None  # the draft's directory (None for a catalog or Hub draft: not loadable as is)
    gpu_split: list[float] | None = None  # GB per GPU for its set_device_map (TabbyAPI draft_gpu_split)
    autosplit: bool = False  # load_autosplit on the GPUs in order, first (TabbyAPI: draft_gpu_split empty)
    rope_scale: float = 1.0  # ExLlamaV2Config.scale_pos_emb (TabbyAPI draft_rope_scale)
    rope_alpha: float = 1.0  # ExLlamaV2Config.scale_alpha_value (TabbyAPI draft_rope_alpha)

    @property
    def cache_class(self) -> str:
        return exl2.CACHE_CLASS[self.cache_mode]


@dataclass
class LoraSettings:
    """One LoRA adapter, as `ExLlamaV2Lora.from_directory(model, path, scale)` and TabbyAPI's `lora:`
    load it."""

    path: str  # the adapter directory (adapter_config.json + adapter_model.safetensors)
    scale: float = 1.0  # TabbyAPI `scaling`
    name: str = ""  # the folder name (TabbyAPI `loras[].name`); default: the last part of path

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.path.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]


@dataclass
class Settings:
    """What the loader applies: ExLlamaV2Config fields, the cache class, the split and the generator mode."""

    backend: str  # one of exl2.BACKENDS; realised by the no_* switches below
    cache_mode: str  # one of exl2.CACHE_MODES
    max_seq_len: int
    max_input_len: int  # the chunk size
    max_attention_size: int
    max_batch_size: int = 1
    paged: bool = False  # dynamic generator paged mode (flash-attn >= 2.5.7 only)
    no_flash_attn: bool = False
    no_xformers: bool = False
    no_sdpa: bool = False
    gpu_split: list[float] | None = None  # GB per GPU in CUDA order (exllamav2's manual split)
    autosplit: bool = False
    reserve_bytes: list[int] = field(default_factory=list)  # autosplit reserve_vram per CUDA device
    # What loads beside the model (issue 12); absent from the data while unset.
    tensor_parallel: bool = field(default=False, metadata=BESIDE)  # load_tp(gpu_split) + ExLlamaV2Cache_TP
    draft: DraftSettings | None = field(default=None, metadata=BESIDE)  # loaded first
    loras: list[LoraSettings] = field(default_factory=list, metadata=BESIDE)  # applied after the model
    # ExLlamaV2VisionTower(config).load() after the draft, before the model (TabbyAPI `vision: true`)
    vision: bool = field(default=False, metadata=BESIDE)

    @property
    def switches(self) -> dict[str, bool]:
        """ExLlamaV2Config switch -> value ({'no_flash_attn': True, ...}), in exllamav2's precedence."""
        return {s: bool(getattr(self, s)) for s in exl2.SWITCHES}

    @property
    def env(self) -> dict[str, str | None]:
        """EXLLAMA_NO_* -> '1' (set) or None (must be unset) for these switches."""
        return exl2.env_for(self.switches)

    @property
    def cache_class(self) -> str:
        return exl2.CACHE_CLASS[self.cache_mode]

    def with_backend(self, backend: str) -> Settings:
        """The same settings on another backend: its switches, and unpaged unless it is flash-attn."""
        from dataclasses import replace

        return replace(
            self, backend=backend, paged=self.paged and backend == "flash_attn", **exl2.switches_for(backend)
        )


def _bad(key: str, message: str) -> NoReturn:
    raise SettingsError(key, message)


def validate_settings(s: Settings) -> None:
    """What ExLlamaV2 and its dynamic generator accept, and switches that realise the backend; raises
    `SettingsError` naming the first bad key."""
    page = exl2.PAGE_SIZE
    if s.backend not in exl2.BACKENDS:
        _bad("backend", f"{s.backend!r} is not one of {', '.join(exl2.BACKENDS)}")
    if s.cache_mode not in exl2.CACHE_MODES:
        _bad("cache_mode", f"{s.cache_mode!r} is not one of {', '.join(exl2.CACHE_MODES)}")
    for key in ("max_seq_len", "max_input_len", "max_attention_size", "max_batch_size"):
        value = getattr(s, key)
        if value <= 0:
            _bad(key, f"must be a positive integer, got {value}")
    if s.max_seq_len % page:
        _bad(
            "max_seq_len",
            f"{s.max_seq_len} is not a multiple of {page} (exllamav2's dynamic generator needs whole "
            f"{page}-token pages; try {max(page, s.max_seq_len // page * page)})",
        )
    if s.paged:
        if s.backend != "flash_attn":
            _bad("paged", f"needs backend 'flash_attn', the backend is {s.backend!r}")
        if s.max_input_len % page:
            _bad("max_input_len", f"{s.max_input_len} is not a multiple of {page} (paged mode)")
    # The switches must realise the backend: every backend ahead of it in exllamav2's precedence is off,
    # its own switch is not (attn.py forward: flash, then xformers, then SDPA, then matmul).
    for backend in exl2.BACKENDS:
        switch = exl2.SWITCH.get(backend)
        if backend == s.backend:
            if switch and getattr(s, switch):
                _bad(switch, f"is true, which turns off the backend {s.backend!r}")
            break
        if switch and not getattr(s, switch):
            _bad(switch, f"must be true for backend {s.backend!r} (otherwise exllamav2 prefers {backend})")
    if s.gpu_split is not None:
        if s.autosplit:
            _bad("gpu_split", "cannot be combined with autosplit = true")
        if not s.gpu_split:
            _bad("gpu_split", "must list at least one GPU (or be removed)")
        for i, gb in enumerate(s.gpu_split):
            if not math.isfinite(gb) or gb < 0:
                _bad(f"gpu_split[{i}]", f"must be a finite number >= 0, got {gb}")
    for i, b in enumerate(s.reserve_bytes):
        if b < 0:
            _bad(f"reserve_bytes[{i}]", f"must not be negative, got {b}")
    if s.tensor_parallel:
        if s.autosplit:
            _bad("tensor_parallel", "cannot be combined with autosplit = true (load_tp splits by its "
                                    "own rule)")
        if s.gpu_split is None or sum(1 for gb in s.gpu_split if gb > 0) < 2:
            _bad("tensor_parallel", "needs a gpu_split over two or more GPUs (load_tp splits heads and "
                                    "columns "
                 "in proportion to it)")
        if s.loras:
            _bad("tensor_parallel", "exllamav2's tensor-parallel forward never applies LoRAs; remove loras")
    if s.draft is not None:
        _validate_draft(s.draft)
    for i, lora in enumerate(s.loras):
        if not lora.path:
            _bad(f"loras[{i}].path", "must name the adapter directory")
        if not math.isfinite(lora.scale) or lora.scale < 0:
            _bad(f"loras[{i}].scale", f"must be a finite number >= 0 (TabbyAPI scaling), got {lora.scale}")


def _validate_draft(d: DraftSettings) -> None:
    if not d.name:
        _bad("draft.name", "must name the draft model")
    if d.cache_mode not in exl2.CACHE_MODES:
        _bad("draft.cache_mode", f"{d.cache_mode!r} is not one of {', '.join(exl2.CACHE_MODES)}")
    if d.gpu_split is not None:
        if d.autosplit:
            _bad("draft.gpu_split", "cannot be combined with draft.autosplit = true")
        if not d.gpu_split or not any(gb > 0 for gb in d.gpu_split):
            _bad("draft.gpu_split", "must give at least one GPU some GB (or be removed)")
        for i, gb in enumerate(d.gpu_split):
            if not math.isfinite(gb) or gb < 0:
                _bad(f"draft.gpu_split[{i}]", f"must be a finite number >= 0, got {gb}")
    for key in ("rope_scale", "rope_alpha"):
        value = getattr(d, key)
        if not math.isfinite(value) or value <= 0:
            _bad(f"draft.{key}", f"must be a positive number, got {value}")
