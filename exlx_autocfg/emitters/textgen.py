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
- Beside the model: `enable_tp` (--enable-tp) runs `model.load_tp(split)` and `ExLlamaV2Cache_TP`
  (modules/exllamav2.py L57-81, both loaders). Only the ExLlamav2 loader (not _HF) takes a draft
  (loaders.py L92-108: model_draft, draft_max, ctx_size_draft; --model-draft DIR): it loads it AFTER the
  model with `load_autosplit`, in the model's cache_type, at the model's ctx_size (exllamav2.py L89-124).
  LoRAs come from --lora NAMES with --lora-dir (modules/LoRA.py add_lora_exllamav2,
  `ExLlamaV2Lora.from_directory(model, lora_dir / name)`: scale 1 only); config-user.yaml has no LoRA key.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from exlx_autocfg import exl2
from exlx_autocfg.emitters.common import header, number, one_line, runtime_env
from exlx_autocfg.emitters.source import EmitInput
from exlx_autocfg.emitters.yaml_merge import dump_yaml

LOADER = "ExLlamav2_HF"  # what the UI infers for EXL2 folders (models_settings.py infer_loader)
DRAFT_LOADER = "ExLlamav2"  # the only ExLlamaV2 loader with a draft model (loaders.py L92-108)
CACHE_TYPE = {"FP16": "fp16", "Q8": "q8", "Q6": "q6", "Q4": "q4"}
EXLLAMAV2_DEFAULT_CHUNK = exl2.DEFAULT_MAX_INPUT_LEN  # the UI never sets max_input_len
OWNED_KEYS: tuple[str, ...] = (
    "loader", "ctx_size", "max_seq_len", "cache_type", "gpu_split", "autosplit", "enable_tp", *exl2.SWITCHES,
    "model_draft", "ctx_size_draft",
)


def folder_name(src: EmitInput) -> str:
    return Path(src.model_path).name if src.model_path else src.model_name


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


def entry(src: EmitInput) -> dict[str, Any]:
    """The settings mapping for the model's entry, in the UI's key order."""
    split = ",".join(str(number(gb)) for gb in src.settings.gpu_split) if src.settings.gpu_split else ""
    draft = src.settings.draft
    out: dict[str, Any] = {
        "loader": loader(src),
        "ctx_size": src.settings.max_seq_len,
        "max_seq_len": src.settings.max_seq_len,
        "cache_type": CACHE_TYPE[src.settings.cache_mode],
        "gpu_split": split,
        "autosplit": bool(src.settings.autosplit),
        "enable_tp": bool(src.settings.tensor_parallel),
        **src.settings.switches,  # the UI's keys are exllamav2's switch names (modules/exllamav2.py)
    }
    if draft is not None:
        out["model_draft"] = draft.path or draft.name
        out["ctx_size_draft"] = 0  # 0: the model's ctx_size (shared.py --ctx-size-draft)
    return out


def loader(src: EmitInput) -> str:
    return DRAFT_LOADER if src.settings.draft is not None else LOADER


def notes(src: EmitInput) -> list[str]:
    """Comment lines for config-user.yaml."""
    return [
        f"Entry for the model folder {one_line(folder_name(src))!r} in the UI's --model-dir.",
        *launch_notes(src),
        "`emit --out` re-merges only the keys exlx-autocfg owns in this entry; the rest of the file stays.",
    ]


def launch_notes(src: EmitInput) -> list[str]:
    """What the UI's settings cannot express (comments in the YAML; stderr for the flags)."""
    lines = []
    if src.settings.max_batch_size > 1:
        lines.append(f"The UI's ExLlamav2 loaders cache one sequence; the plan's batch of "
                     f"{src.settings.max_batch_size} is not used (less memory than planned).")
    if src.settings.max_input_len != EXLLAMAV2_DEFAULT_CHUNK:
        smaller = src.settings.max_input_len < EXLLAMAV2_DEFAULT_CHUNK
        more = "more scratch memory than planned" if smaller else "less"
        lines.append(
            f"The UI has no chunk-size setting; exllamav2 uses {EXLLAMAV2_DEFAULT_CHUNK} "
            f"(plan: {src.settings.max_input_len}), {more}."
        )
    lines += _beside_notes(src)
    pinning = {k: v for k, v in runtime_env(src).items() if k.startswith("CUDA_")}
    if pinning:
        lines.append("Start the UI with " + " ".join(f"{k}={v}" for k, v in pinning.items())
                     + " so gpu_split meets the GPUs in the planned order.")
    if len(src.gpus) > 1 and src.settings.gpu_split:
        lines.append("gpu_split is GB per GPU in CUDA device order.")
    return lines


def _beside_notes(src: EmitInput) -> list[str]:
    s, lines = src.settings, []
    d = s.draft
    if d is not None:
        lines.append(f"Draft {d.name}: only the {DRAFT_LOADER} loader takes one; it loads the draft "
                     "after the model (autosplit) in the model's cache_type, so the plan's draft "
                     "placement is not pinned.")
        if d.cache_mode != s.cache_mode:
            lines.append(f"The UI gives the draft the model's cache_type ({CACHE_TYPE[s.cache_mode]}), "
                         "not the "
                         f"planned {d.cache_mode}: re-plan with --draft-cache {s.cache_mode}.")
        if not d.path:
            lines.append(f"model_draft names a catalog or Hub draft ({d.name}): set it to the "
                         "downloaded folder.")
    if s.loras:
        lines.append("LoRAs: start the UI with --lora " + " ".join(x.name for x in s.loras) + " --lora-dir "
                     f"{Path(s.loras[0].path).parent} (config-user.yaml has no LoRA key).")
        if any(x.scale != 1.0 for x in s.loras):
            lines.append("The UI loads every LoRA at scale 1.0 (ExLlamaV2Lora.from_directory without a "
                         "scale); "
                         "the plan's scales are not applied.")
    return lines


def render_config(src: EmitInput) -> str:
    """A config-user.yaml with the one entry, with the header comment."""
    text = header(src, "text-generation-webui config-user.yaml", notes(src))
    return text + "\n" + dump_yaml({entry_key(folder_name(src)): entry(src)})


def flags(src: EmitInput) -> list[str]:
    """Command-line flags for server.py (or user_data/CMD_FLAGS.txt) that load the model this way."""
    args = ["--model", folder_name(src), "--loader", loader(src),
            "--max_seq_len", str(src.settings.max_seq_len),
            "--cache_type", CACHE_TYPE[src.settings.cache_mode]]
    if src.settings.gpu_split:
        args += ["--gpu-split", ",".join(str(number(gb)) for gb in src.settings.gpu_split)]
    elif src.settings.autosplit:
        args.append("--autosplit")
    args += [f"--{switch}" for switch, on in src.settings.switches.items() if on]
    if src.settings.tensor_parallel:
        args.append("--enable-tp")
    if src.settings.draft is not None:
        args += ["--model-draft", src.settings.draft.path or src.settings.draft.name]
    if src.settings.loras:
        args += ["--lora", *(x.name for x in src.settings.loras),
                 "--lora-dir", str(Path(src.settings.loras[0].path).parent)]
    return args


def render_flags(src: EmitInput) -> str:
    return shlex.join(flags(src)) + "\n"
