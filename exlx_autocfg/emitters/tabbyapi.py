"""TabbyAPI (the EXL2-capable `exl2-checkpoint` line): the `model:` block of `config.yml`, or a per-model
`tabby_config.yml` (the same block, read when the model is loaded inline).

What TabbyAPI does with each key (theroyallab/tabbyAPI @ 79126f9, exl2-checkpoint):
- `cache_size` must be a multiple of 256 (pydantic `multiple_of=256`, common/config_models.py) and caps
  `max_seq_len` (backends/exllamav2/model.py `adjust_cache_size`); in compatibility mode it is ignored and
  the cache is exactly `max_seq_len` tokens.
- Compatibility mode: when any GPU in use has compute capability < 8, on ROCm, or when exllamav2 has
  `no_flash_attn` set (EXLLAMA_NO_FLASH_ATTN), TabbyAPI forces `no_flash_attn`, `paged = False` and
  `max_batch_size = 1` (model.py; common/hardware.py `hardware_supports_flash_attn`). There is no config
  key for the backend switches: they travel as EXLLAMA_NO_* environment variables.
- `gpu_split` is GB per GPU (CUDA order), `autosplit_reserve` MB (MiB: `value * 1024**2`) per GPU;
  a non-empty `gpu_split` turns autosplit off; with one visible GPU split settings are ignored.
- `chunk_size` is rounded up to a multiple of 256 and becomes `max_input_len`, with
  `max_attention_size = chunk_size ** 2`.
- `tensor_parallel: true` loads with `load_tp_gen(gpu_split or None, expect_cache_base=<cache class>,
  expect_cache_tokens=cache_size)` and ignores gpu_split_auto; the plan always writes the gpu_split, so the
  split is the planned one and not nvidia-smi's free memory at load time. `tensor_parallel_backend` is read
  by the exllamav3 backend only, so it is not written.
- `draft_model:` is loaded FIRST (model.py L572-625): `draft_model_dir / draft_model_name`, at the model's
  max_seq_len, cache_size and chunk size, in `draft_cache_mode` (default FP16: always written), by
  `draft_gpu_split` (set_device_map) or, when empty, autosplit with `autosplit_reserve`. `draft_rope_alpha`
  left empty means "auto" from the MODEL's max_position_embeddings; the plan writes the draft's own.
- `vision: true` loads `ExLlamaV2VisionTower(config)` after the draft and before the model (model.py
  L619-625); it is written false unless the plan includes the tower (`plan --vision`).
- `lora:` (config.yml only; main.py L65-69 loads it after the model): `lora_dir` and `loras: [{name,
  scaling}]`, each `ExLlamaV2Lora.from_directory(model, lora_dir / name, scaling)`. A per-model
  tabby_config.yml carries `model:` and `draft_model:` only (common/model.py apply_load_defaults).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exlx_autocfg import exl2
from exlx_autocfg.emitters.common import (
    PAGE_SIZE,
    env_summary,
    header,
    mib_ceil,
    number,
    round_up,
    runtime_env,
)
from exlx_autocfg.emitters.source import EmitInput
from exlx_autocfg.versions import cc_of

SECTION = "model"
DRAFT_SECTION = "draft_model"
LORA_SECTION = "lora"


def _flash_min_cc() -> str:
    return exl2.backend_rules()["flash_attn"]["min_cc"]


def _paged_min() -> str:
    return exl2.backend_rules()["flash_attn"]["paged_min_version"]


def compatibility_mode(src: EmitInput) -> bool:
    """Whether TabbyAPI must run this plan unpaged (its 'compatibility mode': batch 1, no CFG)."""
    return not src.settings.paged


def _all_ampere_nvidia(src: EmitInput) -> bool:
    gpus = src.gpus
    return bool(gpus) and all(
        g.vendor == "nvidia" and (cc_of(g.compute_capability) or (0, 0)) >= cc_of(_flash_min_cc())
        for g in gpus
    )


def required_env(src: EmitInput) -> dict[str, str | None]:
    """The environment TabbyAPI must start with for this plan.

    TabbyAPI detects compatibility mode by itself on pre-Ampere and ROCm; on Ampere+ an unpaged plan
    (no flash-attn, or one too old for paged attention) only gets it when exllamav2 reports
    `no_flash_attn`, which EXLLAMA_NO_FLASH_ATTN sets. Otherwise TabbyAPI would start paged and fail.
    """
    env = runtime_env(src)
    if compatibility_mode(src) and _all_ampere_nvidia(src):
        env[exl2.OFF_ENV["flash_attn"]] = "1"
    return env


def cache_size(src: EmitInput) -> int:
    """TabbyAPI's cache_size: a whole number of 256-token pages, never below max_seq_len.

    Paged, the dynamic generator's cache is one pool of `cache_size` tokens shared by up to
    `max_batch_size` jobs; the plan budgets max_batch_size x max_seq_len tokens of cache (the same bytes),
    so the pool gets all of them. Unpaged (compatibility mode) the cache is max_seq_len tokens.
    """
    return round_up(_cache_tokens(src), PAGE_SIZE)


def _cache_tokens(src: EmitInput) -> int:
    s = src.settings
    return s.max_seq_len if compatibility_mode(src) else s.max_seq_len * max(1, s.max_batch_size)


def model_settings(src: EmitInput, *, per_model: bool = False) -> dict[str, Any]:
    """The `model:` mapping, in TabbyAPI's own key order. `per_model` drops model_dir/model_name
    (a tabby_config.yml lives inside the model folder and may only carry load parameters)."""
    s: dict[str, Any] = {"backend": "exllamav2"}
    if not per_model and src.model_path:
        path = Path(src.model_path)
        s["model_dir"] = str(path.parent)
        s["model_name"] = path.name
    s["max_seq_len"] = src.settings.max_seq_len
    s["cache_size"] = cache_size(src)
    s["cache_mode"] = src.settings.cache_mode
    s["chunk_size"] = src.settings.max_input_len
    s["max_batch_size"] = 1 if compatibility_mode(src) else src.settings.max_batch_size
    s["tensor_parallel"] = bool(src.settings.tensor_parallel)  # planned as load_tp does it, or a layer split
    if src.settings.gpu_split:
        s["gpu_split_auto"] = False
        s["autosplit_reserve"] = [mib_ceil(b) for b in src.settings.reserve_bytes] or [96]
        s["gpu_split"] = [number(gb) for gb in src.settings.gpu_split]
    elif src.settings.autosplit:
        s["gpu_split_auto"] = True
        # TabbyAPI's default when the plan names no reserve (config_sample.yml: [96]).
        s["autosplit_reserve"] = [mib_ceil(b) for b in src.settings.reserve_bytes] or [96]
        s["gpu_split"] = []
    else:  # one GPU: TabbyAPI ignores split settings when one GPU is visible (device pinning sees to that)
        s["gpu_split_auto"] = False
        s["autosplit_reserve"] = [mib_ceil(b) for b in src.settings.reserve_bytes] or [96]
        s["gpu_split"] = []
    # The tower is loaded (and planned) only when asked for (common/config_models.py `vision`, default False).
    s["vision"] = bool(src.settings.vision)
    return s


def draft_settings(src: EmitInput) -> dict[str, Any] | None:
    """The `draft_model:` mapping, in TabbyAPI's key order (None: no draft planned)."""
    d = src.settings.draft
    if d is None:
        return None
    out: dict[str, Any] = {}
    if d.path:
        path = Path(d.path)
        out["draft_model_dir"] = str(path.parent)
    out["draft_model_name"] = d.name
    out["draft_rope_scale"] = number(d.rope_scale)
    out["draft_rope_alpha"] = number(d.rope_alpha)
    out["draft_cache_mode"] = d.cache_mode
    out["draft_gpu_split"] = [number(gb) for gb in d.gpu_split] if d.gpu_split else []
    return out


def lora_settings(src: EmitInput) -> dict[str, Any] | None:
    """The `lora:` mapping (None: no adapters planned). TabbyAPI has one lora_dir: the first adapter's."""
    loras = src.settings.loras
    if not loras:
        return None
    first = Path(loras[0].path)
    return {"lora_dir": str(first.parent),
            "loras": [{"name": x.name, "scaling": number(x.scale)} for x in loras]}


def _lora_dirs(src: EmitInput) -> list[str]:
    return sorted({str(Path(x.path).parent) for x in src.settings.loras})


def sections(src: EmitInput, *, per_model: bool = False) -> dict[str, dict[str, Any]]:
    """Every section this plan writes, `model:` first."""
    out = {SECTION: model_settings(src, per_model=per_model)}
    draft = draft_settings(src)
    if draft is not None:
        out[DRAFT_SECTION] = draft
    loras = lora_settings(src)
    if loras is not None and not per_model:
        out[LORA_SECTION] = loras
    return out


def clear_unplanned(src: EmitInput, existing_text: str | None, *, per_model: bool = False
                    ) -> dict[str, dict[str, Any]]:
    """For a merge into an existing file: the owned keys that would load what this plan did not plan (a
    draft_model_name or loras left by an earlier emit or by hand), cleared; the plan's memory holds nothing
    for them."""
    if not existing_text:
        return {}
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        doc = YAML(typ="safe").load(existing_text)
    except YAMLError:
        return {}  # the merge reports the parse error with its line
    if not isinstance(doc, dict):
        return {}
    out: dict[str, dict[str, Any]] = {}
    draft = doc.get(DRAFT_SECTION)
    if src.settings.draft is None and isinstance(draft, dict) and draft.get("draft_model_name"):
        out[DRAFT_SECTION] = {"draft_model_name": None}
    lora = doc.get(LORA_SECTION)
    if not per_model and not src.settings.loras and isinstance(lora, dict) and lora.get("loras"):
        out[LORA_SECTION] = {"loras": []}
    return out


def notes(src: EmitInput, *, per_model: bool = False) -> list[str]:
    """Comment lines that explain how TabbyAPI will treat this plan (in config.yml or a per-model file)."""
    lines = []
    if compatibility_mode(src):
        lines.append(
            "TabbyAPI compatibility mode (unpaged): batch size 1, no CFG; cache_size is ignored, "
            "the cache is max_seq_len tokens."
        )
        if src.settings.backend == "flash_attn":
            lines.append(
                "Warning: compatibility mode turns flash-attn off, so TabbyAPI will not use the planned "
                f"flash_attn backend (install flash-attn >= {_paged_min()} for paged mode, or re-plan)."
            )
    elif src.settings.max_batch_size > 1:
        lines.append(f"cache_size = max_batch_size x max_seq_len: one pool of pages shared by up to "
                     f"{src.settings.max_batch_size} jobs, the cache the plan budgets.")
    if cache_size(src) != _cache_tokens(src):
        lines.append(f"cache_size rounded up to {cache_size(src)} (a multiple of {PAGE_SIZE}).")
    if src.settings.max_input_len % PAGE_SIZE:
        lines.append(
            f"Warning: TabbyAPI rounds chunk_size {src.settings.max_input_len} up to "
            f"{round_up(src.settings.max_input_len, PAGE_SIZE)}, which needs more scratch memory than "
            "planned."
        )
    if src.settings.max_attention_size != src.settings.max_input_len**2:
        lines.append(
            f"Note: TabbyAPI sets max_attention_size = chunk_size^2 = {src.settings.max_input_len**2} "
            f"(the plan has {src.settings.max_attention_size})."
        )
    env = required_env(src)
    needed = {k: v for k, v in env.items() if v is not None}
    if needed:
        lines.append(f"Start TabbyAPI with: {env_summary(env)}")
        lines.append("  (`exlx-autocfg emit --format env` prints the exports for your shell).")
    if len(src.gpus) > 1:
        lines.append("gpu_split / autosplit_reserve are in CUDA device order (see CUDA_VISIBLE_DEVICES).")
    if not src.model_path:
        lines.append("model_dir/model_name not set: the plan names a catalog model, not a local folder.")
    lines += _beside_notes(src)
    owned = ", ".join(f"{name}:" for name in sections(src, per_model=per_model))
    lines.append(f"`emit --out` re-merges only the keys exlx-autocfg owns under {owned}; the rest stays.")
    return lines


def _beside_notes(src: EmitInput) -> list[str]:
    s, lines = src.settings, []
    if s.tensor_parallel:
        lines.append("tensor_parallel: gpu_split is passed to load_tp, which splits heads and columns in "
                     "proportion to it (written so the split does not follow the free memory at load time).")
    d = s.draft
    if d is not None:
        default = " (written: TabbyAPI's default is FP16)" if d.cache_mode != "FP16" else ""
        lines.append(f"draft_model: {d.name} loads before the model, at its max_seq_len and cache_size, in "
                     f"{d.cache_mode} cache{default}.")
        if not d.path:
            lines.append(f"draft_model_dir not set: the plan names a catalog or Hub draft ({d.name}); "
                         "download it and set draft_model_dir / draft_model_name to its folder.")
        if d.gpu_split:
            lines.append("draft_gpu_split pins the draft where the plan put it (set_device_map).")
    if s.loras:
        dirs = _lora_dirs(src)
        if len(dirs) > 1:
            lines.append("Warning: the adapters live in " + ", ".join(dirs) + "; TabbyAPI reads "
                         f"every LoRA from one lora_dir ({Path(s.loras[0].path).parent}): move them there.")
        lines.append("lora: loaded after the model (config.yml only; a per-model tabby_config.yml has "
                     "no lora:).")
    return lines


def page_header(src: EmitInput, *, per_model: bool = False) -> str:
    """The header comment of config.yml or of a per-model tabby_config.yml."""
    target = "TabbyAPI tabby_config.yml (per model)" if per_model else "TabbyAPI config.yml"
    return header(src, target, notes(src, per_model=per_model))


def keep_model_dir(values: dict[str, Any], existing_text: str | None, base: Path) -> dict[str, Any]:
    """Keep an existing `model_dir` (often the relative `models`) when it already names the folder the
    model is in; TabbyAPI resolves it against its working directory, which is where config.yml lives."""
    if not existing_text or "model_dir" not in values:
        return values
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        doc = YAML(typ="safe").load(existing_text)
    except YAMLError:
        return values  # the merge reports the parse error with its line
    current = doc.get(SECTION) if isinstance(doc, dict) else None
    current_dir = current.get("model_dir") if isinstance(current, dict) else None
    if isinstance(current_dir, str) and current_dir:
        resolved = (base / current_dir).resolve()
        if resolved == Path(values["model_dir"]).resolve():
            return {**values, "model_dir": current_dir}
    return values
