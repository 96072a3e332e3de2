"""Flags for exllamav2's own scripts: everything built on `exllamav2.model_init.add_args` (test_inference.py,
examples/*.py, eval/*.py), plus the cache-mode flags of the scripts that take one.

`model_init.add_args` (exllamav2 0.3.2 model_init.py) accepts -m, -gs ("auto" or GB per GPU), -l, -nfa,
-nxf, -nsdpa and -chunk (which sets max_input_len = chunk and max_attention_size = chunk ** 2 in `init`).
The cache class is chosen by each script: examples/chat.py takes -cq4/-cq6/-cq8 (and -c8 for FP8),
eval/humaneval.py and eval/mmlu.py take -cq4/-cq6/-cq8; test_inference.py and the other examples take
no cache flag (they build an FP16 cache, or their own). The output is only the flags, so
`python examples/chat.py $(exlx-autocfg emit --format exllamav2-args ...) -mode llama3` splices.

Beside the model: `model_init.add_args` has -tp (tensor parallel: `load_tp(split)` with -gs, model_init.py
L14-15, L175-177), so every script takes it; only examples/chat.py takes a draft (-dm DIR, L34-36; it loads
the draft with `draft_model.load()` before the model, at the model's max_seq_len, in the model's cache
mode, with the NTK alpha of the draft's own length unless -nds, L118-154); no script takes a LoRA.
"""

from __future__ import annotations

import shlex

from exlx_autocfg import exl2
from exlx_autocfg.emitters.common import device_pinning, number
from exlx_autocfg.emitters.source import EmitInput

# script -> its cache flag per mode (None: the script has no cache flag). Source: turboderp-org/exllamav2
# @ da07fac, examples/chat.py L68-71, eval/humaneval.py L18-20, eval/mmlu.py L16-18.
_Q_FLAGS = {"FP16": "", "Q8": "-cq8", "Q6": "-cq6", "Q4": "-cq4"}
SCRIPTS: dict[str, dict[str, str] | None] = {
    "chat": _Q_FLAGS,
    "humaneval": _Q_FLAGS,
    "mmlu": _Q_FLAGS,
    "model_init": None,  # test_inference.py and any script that only calls model_init.add_args
}
DEFAULT_SCRIPT = "chat"
DRAFT_SCRIPTS = frozenset({"chat"})  # scripts with -dm/--draft_model_dir


def args(src: EmitInput, script: str = DEFAULT_SCRIPT) -> list[str]:
    out: list[str] = []
    if src.model_path:
        out += ["-m", src.model_path]
    out += ["-l", str(src.settings.max_seq_len)]
    if src.settings.tensor_parallel:
        out.append("-tp")
    if src.settings.gpu_split:
        out += ["-gs", ",".join(str(number(gb)) for gb in src.settings.gpu_split)]
    elif src.settings.autosplit:
        out += ["-gs", "auto"]
    out += [exl2.SCRIPT_FLAG[switch] for switch, on in src.settings.switches.items() if on]
    out += ["-chunk", str(src.settings.max_input_len)]
    cache_flags = SCRIPTS[script]
    if cache_flags and cache_flags[src.settings.cache_mode]:
        out.append(cache_flags[src.settings.cache_mode])
    draft = src.settings.draft
    if draft is not None and draft.path and script in DRAFT_SCRIPTS:
        out += ["-dm", draft.path]
    return out


def notes(src: EmitInput, script: str = DEFAULT_SCRIPT) -> list[str]:
    """What the flags cannot say; the CLI prints these on stderr so stdout stays splice-able."""
    lines = []
    pinning = device_pinning(src)
    if pinning:
        lines.append("run with " + " ".join(f"{k}={v}" for k, v in pinning.items())
                     + " (emit --format env) so the split meets the GPUs in the planned order")
    if not src.model_path:
        lines.append("no -m: the plan names a catalog model; add -m MODEL_DIR")
    if SCRIPTS[script] is None and src.settings.cache_mode != "FP16":
        lines.append(f"script {script!r} takes no cache flag: it builds its own cache (the plan wants "
                     f"{src.settings.cache_mode}); use --script chat for examples/chat.py")
    if src.settings.max_attention_size != src.settings.max_input_len**2:
        lines.append(f"-chunk also sets max_attention_size = {src.settings.max_input_len**2} "
                     f"(the plan has {src.settings.max_attention_size})")
    return lines + _beside_notes(src, script)


def _beside_notes(src: EmitInput, script: str) -> list[str]:
    s, lines = src.settings, []
    d = s.draft
    if d is not None:
        if script not in DRAFT_SCRIPTS:
            lines.append(f"script {script!r} takes no draft model (examples/chat.py has -dm): the "
                         "plan's draft "
                         f"{d.name} is not loaded, which leaves its memory free")
        else:
            if not d.path:
                lines.append(f"no -dm: the plan names a catalog or Hub draft ({d.name}); add -dm DRAFT_DIR")
            if d.cache_mode != s.cache_mode:
                lines.append(f"examples/chat.py gives the draft the model's cache mode ({s.cache_mode}), "
                             f"not the planned {d.cache_mode}: re-plan with --draft-cache {s.cache_mode} "
                             "for this script")
            if d.gpu_split and len(d.gpu_split) > 1:
                lines.append("examples/chat.py loads the draft with draft_model.load() (all on the "
                             "first GPU), "
                             f"not the planned draft_gpu_split {d.gpu_split}")
    if s.loras:
        names = ", ".join(x.name for x in s.loras)
        lines.append(f"exllamav2's scripts take no LoRA flag: the adapters ({names}) are not loaded; use "
                     "exlx_autocfg.load() or ExLlamaV2Lora.from_directory")
    return lines


def render(src: EmitInput, script: str = DEFAULT_SCRIPT) -> str:
    return shlex.join(args(src, script)) + "\n"
