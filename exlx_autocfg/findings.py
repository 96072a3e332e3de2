"""Coded findings: every reason, rejection, warning, staleness change and check verdict carries a stable code.

A `Finding` is (code, message, evidence): the code is what programs decide on (`backend.sdpa.causal_defect`),
the message is the one line people read, the evidence the facts it was drawn from (JSON-ready). Callers
branch on codes, never on message text. Codes are registered in `CODES` with what they mean; a code that is
not registered is a bug (`finding()` refuses it), and docs/codes.md is generated from this table
(`python -m tools.docs_codes`; a test fails when it drifts).

Code shape: `<area>.<subject>.<what>`, lower case, dots between parts, underscores inside a part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Finding:
    code: str  # stable: see CODES and docs/codes.md
    message: str  # one line, complete on its own
    evidence: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


def finding(code: str, message: str, **evidence: Any) -> Finding:
    """A Finding for a registered code; `evidence` values must be JSON-ready (None values are dropped)."""
    if code not in CODES:
        raise ValueError(f"unregistered finding code {code!r} (add it to exlx_autocfg.findings.CODES)")
    return Finding(code, " ".join(message.split()), {k: v for k, v in evidence.items() if v is not None})


def codes_of(findings: list[Finding]) -> set[str]:
    return {f.code for f in findings}


def has_code(findings: list[Finding], *codes: str) -> bool:
    return any(f.code in codes for f in findings)


def messages(findings: list[Finding]) -> str:
    """The messages joined for one line of text ('a; b')."""
    return "; ".join(f.message for f in findings)


# The registry. Grouped by area; each value says what the code means (rendered into docs/codes.md).
CODES: dict[str, str] = {
    # ---------------------------------------------------------------- backend rejections (plan, check)
    "backend.flash_attn.rocm": "flash-attn is not used on ROCm/HIP (TabbyAPI runs HIP in compatibility "
    "mode)",
    "backend.flash_attn.compute_capability": "a GPU in use is older than flash-attn 2.x supports (< sm80)",
    "backend.flash_attn.not_installed": "flash-attn is not installed in the target interpreter",
    "backend.flash_attn.import_fails": "`import flash_attn` fails (which also breaks `import exllamav2`)",
    "backend.flash_attn.too_old": "flash-attn is older than the first version exllamav2 uses",
    "backend.flash_attn.no_softcap": "the model needs logit softcapping and this flash-attn has none",
    "backend.flash_attn.no_window": "the model needs sliding-window attention and exllamav2 sees no window "
    "support in this flash-attn",
    "backend.xformers.exllamav2_too_old": "this exllamav2 has no xformers path",
    "backend.xformers.ignores_feature": "the model needs softcapping or a sliding window, which the "
    "xformers path ignores",
    "backend.xformers.not_installed": "xformers is not installed in the target interpreter",
    "backend.xformers.import_fails": "`import xformers` fails",
    "backend.xformers.mask_import_missing": "the mask class exllamav2 imports does not resolve in this "
    "xformers (breaks `import exllamav2`)",
    "backend.xformers.cpp_ops_mismatch": "xformers' C++/CUDA ops do not load (built for another torch)",
    "backend.xformers.cpp_ops_fail": "xformers' C++/CUDA ops do not load (another cause)",
    "backend.xformers.flash_import_error": "`import xformers.ops` fails on the installed flash-attn",
    "backend.xformers.flash_window": "xformers refuses the installed flash-attn version (ImportError)",
    "backend.xformers.rocm_arch": "xformers' ROCm kernels are not built for this gfx target",
    "backend.xformers.compute_capability": "this xformers release dropped the GPU's compute capability",
    "backend.sdpa.exllamav2_too_old": "this exllamav2 has no SDPA path",
    "backend.sdpa.causal_defect": "exllamav2's SDPA branch gives WRONG output (drops the causal mask)",
    "backend.sdpa.torch_missing": "torch is not installed",
    "backend.sdpa.no_lower_right": "torch lacks causal_lower_right (SDPA is not enabled by exllamav2)",
    "backend.sdpa.ignores_feature": "the model needs logit softcapping, which exllamav2's SDPA path skips",
    # ----------------------------------------------------------------------------- backend warnings
    "backend.xformers.cutlass_max_cc": "this xformers refuses its cutlass kernel on GPUs this new",
    "backend.matmul.fp16_softmax": "matmul attention runs softmax in fp16 (some models overflow)",
    "backend.sdpa.rocm": "SDPA on ROCm is unreliable",
    "backend.flash_attn.import_breaks_exllamav2": "flash-attn is installed but does not import, which breaks "
    "`import exllamav2` unless EXLLAMA_NO_FLASH_ATTN is set",
    "backend.forced.gpus_dropped": "a forced backend is invalid on some GPUs: planned without them",
    # ---------------------------------------------------------------------------- plan decisions
    "gpus.unused": "the model and its cache fit without some GPUs",
    "backend.eager_only": "the architecture runs with eager attention only: exllamav2's "
    "arch_compat_overrides turns off flash-attn, xformers and SDPA for it",
    "backend.forced": "the backend was forced by --backend and is valid here",
    "backend.highest_valid": "the highest-ranked valid backend in exllamav2's precedence",
    "switches.realise_backend": "the EXLLAMA_NO_* switches that make exllamav2 land on the chosen backend",
    "paged.enabled": "flash-attn with paged attention: the dynamic generator runs paged",
    "paged.no_flash_attn": "unpaged: paged attention needs flash-attn",
    "paged.flash_attn_too_old": "unpaged: this flash-attn has no paged attention",
    "cache.forced": "the cache mode was forced by --cache",
    "cache.target_reached": "the most precise cache mode that reaches the target context",
    "cache.longest_context": "no cache mode reaches the target: the one with the longest context",
    "cache.not_allowed": "a cache mode excluded by --cache or --min-cache-precision",
    "cache.does_not_fit": "a cache mode that fits at no context",
    "cache.shorter_context": "a more precise cache mode that reaches less context",
    "cache.coarser": "a coarser cache mode, not needed",
    "max_seq_len.capped": "max_seq_len is the target context; it fits",
    "max_seq_len.fit_limit": "max_seq_len is the largest page multiple that fits (+256 does not)",
    "chunk.forced": "the chunk size was forced by --chunk-size",
    "chunk.default": "exllamav2's default max_input_len: a smaller chunk would gain little context",
    "chunk.smaller": "a smaller chunk: the attention transients of the default cost context",
    "budget.vram": "what each GPU's budget is: total or free VRAM minus the margin",
    "gpu_split.placed": "the GB per GPU that make set_device_map place the planned layers",
    # ----------------------------------------------------------------------------- plan warnings
    "plan.exllamav2_assumed": "exllamav2 is not installed: planned for the newest release",
    "plan.what_if": "the plan's facts come from the GPU table and assumed versions",
    "plan.exl3_available": "every GPU runs ExLlamaV3 (EXL3), the maintained path",
    "plan.detect_problem": "a problem detect found on this machine",
    "model.context_defaulted": "config.json names no context length: exllamav2's max_seq_len is its 2048 "
    "default (Gemma 3's published files), pass --context",
    "vision.not_planned": "the model has a vision tower the plan leaves out (plan --vision includes it)",
    "context.target_not_reached": "the requested context does not fit with the chosen cache",
    "gpu.busy": "a GPU has less free VRAM now than the plan needs",
    "gpu.mig": "a GPU is in MIG mode: the table's VRAM may exceed the instance",
    # --------------------------------------------------------------------------------- staleness
    "stale.model.gone": "the model directory no longer exists",
    "stale.model.other": "the profile was computed for another model directory",
    "stale.model.changed": "config.json or the safetensors headers changed",
    "stale.gpu.gone": "a GPU the profile was computed with is gone",
    "stale.gpu.replaced": "another GPU model sits where the profile's GPU was",
    "stale.gpu.vram": "a GPU's total VRAM changed",
    "stale.gpu.cuda_order": "a GPU moved in CUDA's device order",
    "stale.gpu.new": "a GPU is present that the profile was computed without",
    "stale.library.removed": "a tracked library was removed",
    "stale.library.installed": "a tracked library was installed",
    "stale.library.version": "a tracked library was upgraded or downgraded",
    "stale.library.build": "a tracked library's build tag changed",
    "stale.library.import_fails": "a tracked library no longer imports",
    "stale.library.imports": "a tracked library now imports",
    "stale.library.ops_fail": "a library's compiled ops no longer load",
    "stale.library.ops_load": "a library's compiled ops now load",
    "stale.library.extension": "exllamav2's extension changed (prebuilt, JIT)",
    "stale.library.import_paths": "xformers import paths moved",
    "legacy.text": "a reason or warning read from a schema-1 profile, which had no codes",
}
