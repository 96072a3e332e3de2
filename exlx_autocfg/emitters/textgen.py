"""text-generation-webui (its ExLlamav2 / ExLlamav2_HF loaders, removed upstream on 2026-03-05): an entry
for `user_data/models/config-user.yaml` (`models/config-user.yaml` before 2025-04-26), and the same
settings as command-line flags.

What the web UI does with them (oobabooga/text-generation-webui @ 134ac8f, the parent of the removal):
- config-user.yaml maps a regex to settings; the UI saves entries under `<folder name>$` and applies an
  entry when `re.match(pattern.lower(), folder.lower())` (modules/models_settings.py). Only keys that
  the UI knows are applied, so a key an older or newer version does not have is ignored, not an error.
- The context key is `ctx_size` since 2025-04-25 (d4b1e31c) and was `max_seq_len` before; the entry
  carries both so it works on either side of that change.
- ExLlamav2 loader keys (modules/loaders.py): ctx_size, cache_type (fp16|fp8|q8|q6|q4), gpu_split
  (comma-separated GB per GPU, CUDA order), autosplit, enable_tp, no_flash_attn, no_xformers, no_sdpa.
  modules/exllamav2.py copies them onto ExLlamaV2Config; it never sets max_input_len, so the chunk size
  stays exllamav2's default of 2048 (config.py).
- Flags (modules/shared.py) accepted by both versions: --max_seq_len (an alias of --ctx-size in newer
  ones), --cache_type, --gpu-split, --autosplit, --no_flash_attn, --no_xformers, --no_sdpa, --loader.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from exlx_autocfg.emitters.common import header, number, one_line, ordered_gpus, runtime_env
from exlx_autocfg.emitters.yaml_merge import dump_yaml
from exlx_autocfg.planner.types import Plan

LOADER = "ExLlamav2_HF"  # what the UI infers for EXL2 folders (models_settings.py infer_loader)
CACHE_TYPE = {"FP16": "fp16", "Q8": "q8", "Q6": "q6", "Q4": "q4"}
EXLLAMAV2_DEFAULT_CHUNK = 2048  # exllamav2 config.py max_input_len default; the UI keeps it
OWNED_KEYS: tuple[str, ...] = (
    "loader", "ctx_size", "max_seq_len", "cache_type", "gpu_split", "autosplit", "enable_tp",
    "no_flash_attn", "no_xformers", "no_sdpa",
)


def folder_name(plan: Plan) -> str:
    return Path(plan.model.path).name if plan.model.path else plan.model.name


def entry_key(name: str) -> str:
    """The UI's own key, `<name>$`, when that regex matches the folder name as the UI applies it;
    otherwise (a name with regex syntax such as `+` or `[`) an escaped pattern that does."""
    key = name + "$"
    try:
        if re.match(key.lower(), name.lower()):
            return key
    except re.error:
        pass
    return re.escape(name) + "$"


def entry(plan: Plan) -> dict[str, Any]:
    """The settings mapping for the model's entry, in the UI's key order."""
    split = ",".join(str(number(gb)) for gb in plan.gpu_split) if plan.gpu_split else ""
    return {
        "loader": LOADER,
        "ctx_size": plan.max_seq_len,
        "max_seq_len": plan.max_seq_len,
        "cache_type": CACHE_TYPE[plan.cache_mode],
        "gpu_split": split,
        "autosplit": bool(plan.autosplit),
        "enable_tp": False,
        "no_flash_attn": plan.no_flash_attn,
        "no_xformers": plan.no_xformers,
        "no_sdpa": plan.no_sdpa,
    }


def notes(plan: Plan, machine_gpu_count: int | None = None) -> list[str]:
    """Comment lines for config-user.yaml."""
    return [
        f"Entry for the model folder {one_line(folder_name(plan))!r} in the UI's --model-dir.",
        *launch_notes(plan, machine_gpu_count),
        "`emit --out` re-merges only the keys exlx-autocfg owns in this entry; the rest of the file stays.",
    ]


def launch_notes(plan: Plan, machine_gpu_count: int | None = None) -> list[str]:
    """What the UI's settings cannot express (comments in the YAML; stderr for the flags)."""
    lines = []
    if plan.max_batch_size > 1:
        lines.append(f"The UI's ExLlamav2 loaders cache one sequence; the plan's batch of "
                     f"{plan.max_batch_size} is not used (less memory than planned).")
    if plan.chunk_size != EXLLAMAV2_DEFAULT_CHUNK:
        more = "more scratch memory than planned" if plan.chunk_size < EXLLAMAV2_DEFAULT_CHUNK else "less"
        lines.append(
            f"The UI has no chunk-size setting; exllamav2 uses {EXLLAMAV2_DEFAULT_CHUNK} "
            f"(plan: {plan.chunk_size}), {more}."
        )
    pinning = {k: v for k, v in runtime_env(plan, machine_gpu_count).items() if k.startswith("CUDA_")}
    if pinning:
        lines.append("Start the UI with " + " ".join(f"{k}={v}" for k, v in pinning.items())
                     + " so gpu_split meets the GPUs in the planned order.")
    if len(ordered_gpus(plan)) > 1 and plan.gpu_split:
        lines.append("gpu_split is GB per GPU in CUDA device order.")
    return lines


def render_config(plan: Plan, *, machine_gpu_count: int | None = None) -> str:
    """A config-user.yaml with the one entry, with the header comment."""
    text = header(plan, "text-generation-webui config-user.yaml", notes(plan, machine_gpu_count))
    return text + "\n" + dump_yaml({entry_key(folder_name(plan)): entry(plan)})


def flags(plan: Plan) -> list[str]:
    """Command-line flags for server.py (or user_data/CMD_FLAGS.txt) that load the model this way."""
    args = ["--model", folder_name(plan), "--loader", LOADER,
            "--max_seq_len", str(plan.max_seq_len), "--cache_type", CACHE_TYPE[plan.cache_mode]]
    if plan.gpu_split:
        args += ["--gpu-split", ",".join(str(number(gb)) for gb in plan.gpu_split)]
    elif plan.autosplit:
        args.append("--autosplit")
    for switch in ("no_flash_attn", "no_xformers", "no_sdpa"):
        if getattr(plan, switch):
            args.append(f"--{switch}")
    return args


def render_flags(plan: Plan) -> str:
    return shlex.join(flags(plan)) + "\n"
