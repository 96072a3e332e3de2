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
    "backend.flash_attn.rocm": "flash-attn is not used on ROCm/HIP (TabbyAPI runs HIP in compatibility mode)",
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
    "`import exllamav2` unless its switch is set",
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
    "cache.sufficient_context": "no cache mode reaches the model's own target: the most precise one that "
    "reaches the sufficient context (profiles/policy.toml)",
    "cache.precision_kept": "a coarser cache mode with more context, not chosen: the chosen one reaches the "
    "sufficient context",
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
    "plan.what_if.gpu_order": "a what-if rig of different GPUs: the --gpu order is assumed to be the PCI bus "
    "order and CUDA's device order",
    "plan.exl3_available": "every GPU runs ExLlamaV3 (EXL3), the maintained path",
    "plan.detect_problem": "a problem detect found on this machine",
    "model.context_defaulted": "config.json names no context length: exllamav2's max_seq_len is its 2048 "
    "default (Gemma 3's published files), pass --context",
    "vision.not_planned": "the model has a vision tower the plan leaves out (plan --vision includes it)",
    "vision.planned": "the vision tower and projector load on the first GPU, planned with the model",
    "vision.windows_ignored": "the tower's windowed attention runs through xformers, which applies no window",
    "context.target_not_reached": "the requested context does not fit with the chosen cache",
    "context.beyond_trained": "the requested context is beyond the model's trained length: RoPE scaling "
    "would be needed",
    "settings.invalid": "a settings value exllamav2 and its dynamic generator do not accept",
    "settings.chunk_over_context": "max_input_len larger than max_seq_len: exllamav2 cuts it (the edit does "
    "nothing)",
    "settings.split_longer_than_gpus": "gpu_split lists more GPUs than the profile was made for",
    "settings.split_too_small": "gpu_split leaves exllamav2's set_device_map no room for the modules",
    "settings.does_not_fit": "a GPU's bytes for these settings exceed its budget",
    "gpu.busy": "a GPU has less free VRAM now than the plan needs",
    "gpu.mig": "a GPU is in MIG mode: the table's VRAM may exceed the instance",
    # ------------------------------------------------------------------------------ check verdicts
    # A verdict drawn from backend findings carries that finding's code (backend.*) instead.
    "check.not_installed": "an optional library is not installed: nothing to check",
    "check.not_applicable": "the check does not apply to this build (CPU or ROCm torch)",
    "check.no_gpu": "no GPU is visible, so the check cannot verify anything",
    "check.required.missing": "a package --require names is not installed",
    "check.required.version": "a package --require names has another version",
    "check.required.import_fails": "a package --require names does not import",
    "check.required.ok": "a package --require names is installed as required",
    "check.torch.not_installed": "torch is not installed",
    "check.torch.import_fails": "`import torch` fails",
    "check.torch.cpu_build": "torch is a CPU-only build",
    "check.torch.rocm_on_nvidia": "a ROCm build of torch on an NVIDIA machine",
    "check.torch.cuda_on_amd": "a CUDA build of torch on an AMD machine",
    "check.torch.driver_too_old": "the NVIDIA driver is older than torch's CUDA major",
    "check.torch.driver_minor_compat": "the driver runs torch's CUDA only through minor-version "
    "compatibility",
    "check.torch.cuda_unavailable": "torch cannot initialise CUDA",
    "check.torch.ok": "torch's build runs on these GPUs and this driver",
    "check.torch_arch.unknown": "torch did not report its architecture list",
    "check.torch_arch.missing": "torch's wheel has no kernels for a GPU here",
    "check.torch_arch.ptx_only": "a GPU runs torch only through PTX JIT compilation",
    "check.torch_arch.ok": "torch carries native kernels for every GPU",
    "check.xformers.python_mismatch": "xformers was built for another Python",
    "check.xformers.ok": "xformers loads its ops on this torch and supports these GPUs",
    "check.flash_attn.no_cuda_module": "flash-attn has no flash_attn_2_cuda: exllamav2 silently skips it",
    "check.flash_attn.load_fails": "flash-attn does not load with this torch (breaks `import exllamav2`)",
    "check.flash_attn.compute_capability": "flash-attn 2.x on a GPU older than sm80: every forward raises",
    "check.flash_attn.rocm": "flash-attn on ROCm is not used",
    "check.flash_attn.no_version": "flash_attn has no __version__ (exllamav2 reads it at import)",
    "check.flash_attn.too_old": "exllamav2 ignores this flash-attn",
    "check.flash_attn.no_paged": "this flash-attn has no paged attention: unpaged, batch 1",
    "check.flash_attn.ok": "flash-attn imports and suits these GPUs",
    "check.exllamav2.not_installed": "exllamav2 is not installed",
    "check.exllamav2_ext.prebuilt_ok": "the prebuilt exllamav2_ext loads",
    "check.exllamav2_ext.prebuilt_other_torch": "the prebuilt exllamav2_ext was built for another torch",
    "check.exllamav2_ext.prebuilt_broken": "the prebuilt exllamav2_ext does not load",
    "check.exllamav2_ext.jit_cached": "exllamav2_ext is JIT-built and cached",
    "check.exllamav2_ext.jit_cache_broken": "the JIT-cached exllamav2_ext does not load",
    "check.exllamav2_ext.jit_missing": "a JIT build of exllamav2_ext lacks a prerequisite",
    "check.exllamav2_ext.jit_ready": "a JIT build of exllamav2_ext can run",
    "check.exllamav2_ext.unknown": "how exllamav2 gets its extension was not determined",
    "check.import.not_run": "the child `import exllamav2` was not run",
    "check.import.not_tried": "the child import was not tried (it would start a JIT build)",
    "check.import.ok": "`import exllamav2` succeeds with the plan's switches",
    "check.import.timeout": "`import exllamav2` did not finish in time",
    "check.import.fails": "`import exllamav2` fails",
    "check.backend.matmul_only": "matmul is the only backend with correct output here",
    "check.backend.ok": "the planned backend gives correct output",
    "check.exl3.rocm": "EXL2 is right: ExLlamaV3 has no ROCm support",
    "check.exl3.old_gpu": "EXL2 is right: a GPU is below ExLlamaV3's minimum compute capability",
    "check.draft.ok": "the draft model reads as a model exllamav2 loads (and can draft for --model)",
    "check.draft.unreadable": "the draft model does not read as a model exllamav2 loads",
    "check.lora.ok": "the LoRA adapter loads with ExLlamaV2Lora (on --model when given)",
    "check.lora.unreadable": "the LoRA adapter directory does not read (no adapter_config.json, no weights)",
    # ------------------------------------------------------- quant choice (plan hf:ORG/REPO)
    "candidates.planned": "an EXL2 branch of a Hub repo, planned",
    "candidates.does_not_fit": "an EXL2 branch that fits at no context on these GPUs",
    "candidates.highest_reaching": "chosen: the highest bitrate that reaches the target context",
    "candidates.longest_context": "chosen: no branch reaches the target, this one gives the longest context",
    "candidates.short_context": "not chosen: reaches less context than the target or the chosen branch",
    "candidates.lower_bitrate": "not chosen: a lower bitrate than the chosen branch, which also reaches "
    "the target",
    "hub.skip.no_config": "a branch without config.json (a README-only main): not a model",
    "hub.skip.gguf": "a branch of GGUF files: not EXL2",
    "hub.skip.no_safetensors": "a branch with config.json but no .safetensors files",
    "hub.skip.other_quant": "a branch quantized another way (GPTQ, AWQ, ...): not EXL2",
    "hub.skip.not_exl2": "a branch holding an unquantized checkpoint (FP16/BF16 original)",
    "hub.skip.unreadable": "a branch whose config.json or safetensors headers are broken",
    # --------------------------------------------------------- tensor parallelism (planner/tensor_parallel)
    "tp.single_gpu": "tensor parallelism was asked for with fewer than two GPUs",
    "tp.architecture": "exllamav2 has no tensor-parallel implementation for the architecture (supports_tp)",
    "tp.intermediate_size": "the MLP width is not a multiple of 128, which TPContext asserts",
    "tp.not_exl2": "a linear is not EXL2-quantized; exllamav2 splits only EXL2 tensors",
    "tp.sliding_window": "the model uses sliding-window attention, which the TP attention asserts against",
    "tp.head_width": "hidden_size differs from heads x head_dim, which the TP kernels assume",
    "tp.qk_norm": "the model has per-head q/k norms, which the TP kernels skip (wrong output)",
    "tp.partial_rotary": "the model rotates part of each head; the TP kernels rotate all (wrong output)",
    "tp.moe": "the model's MLPs are mixtures of experts, which exllamav2's load_tp leaves unsplit on one GPU",
    "tp.post_norms": "the model has post-attention / post-MLP norms, which the TP kernels skip "
    "(wrong output)",
    "tp.lora_ignored": "LoRA adapters are never applied by exllamav2's TP forward",
    "tp.attention.flash_attn_too_old": "the TP kernels need a newer flash-attn fwd_kvcache signature",
    "tp.attention.sdpa_defect": "without flash-attn, TP attention runs the SDPA branch that drops the causal "
    "mask (wrong output)",
    "tp.attention.assertion": "without flash-attn, TP attention asserts SDPA, which is off here",
    "tp.worth_it": "tensor parallelism suits these GPUs and this model",
    "tp.not_worth.single_gpu": "tensor parallelism needs two or more GPUs",
    "tp.not_worth.does_not_fit": "the model and cache do not fit under tensor parallelism",
    "tp.not_worth.fits_one_gpu": "the model fits on one GPU, which needs no per-layer broadcasts",
    "tp.not_worth.mixed_gpus": "the GPUs differ: every TP layer waits for the slowest",
    "tp.split": "how load_tp splits KV heads, MLP columns and the vocabulary over the GPUs",
    "tp.estimated": "the TP transients and load-time peak are estimates (the split, weights, scratch "
    "and cache are exact)",
    # ---------------------------------------------------------------------- draft models (planner/draft)
    "draft.larger_than_model": "the draft model is not smaller than the model it drafts for",
    "draft.vocab_larger": "the draft's vocabulary is larger than the model's: drafted ids can index past "
    "its embedding",
    "draft.tokenizer_mismatch": "the draft's tokenizer maps ids to other tokens than the model's",
    "draft.bos_mismatch": "the draft and the model have different BOS token ids (different tokenizers)",
    "draft.eos_differs": "the draft and the model name different EOS ids (harmless: only the model stops)",
    "draft.tokenizer_unverified": "the tokenizers could not be compared (tokenizer files missing)",
    "draft.cache_length_mismatch": "the draft cache's rounded length differs from the model cache's (the "
    "dynamic generator asserts they are equal)",
    "draft.context_beyond_trained": "max_seq_len exceeds the draft's trained context",
    "draft.lora_not_applied": "LoRAs apply to the model only; the draft predicts the base model",
    "draft.placed": "where the draft's weights, cache and scratch go, GPU by GPU",
    "draft.cache.follows_model": "the draft's cache mode is the one the planner chose for the model's cache",
    "draft.cache.forced": "the draft's cache mode was forced by --draft-cache",
    "draft.rope.native": "the context is within the draft's trained length: no RoPE scaling for the draft",
    "draft.rope.alpha": "the context exceeds the draft's trained length: the draft gets NTK RoPE "
    "alpha scaling",
    # ------------------------------------------------------------------------- LoRA adapters (planner/lora)
    "lora.fan_in_fan_out": "the adapter is fan_in_fan_out, which ExLlamaV2Lora refuses",
    "lora.peft_type": "the adapter is not a LoRA (peft_type)",
    "lora.dora": "the adapter is DoRA, whose magnitude vectors exllamav2 cannot load",
    "lora.fp32_residual": "the architecture keeps an fp32 residual stream, for which exllamav2 has no LoRA",
    "lora.unsupported_key": "a tensor is neither a decoder-layer linear nor lm_head/embed_tokens",
    "lora.target_unknown": "a tensor targets a module exllamav2 does not build as a linear",
    "lora.shape_mismatch": "a tensor's shape does not match the model's linear (another base model)",
    "lora.dtype": "a tensor's dtype is not FP16, BF16 or FP32",
    "lora.unpaired": "a module has lora_A without lora_B or the other way round",
    "lora.rank_mismatch": "lora_A and lora_B ranks differ, or differ from the adapter's r",
    "lora.rank_pattern": "per-module ranks or alphas, which exllamav2 ignores (one scaling for all)",
    "lora.bias": "the adapter stores biases, which exllamav2 accepts only when all zero",
    "lora.scale_negative": "a negative LoRA scale (TabbyAPI refuses it)",
    "lora.base_model_differs": "the adapter names another base model than the one planned",
    "lora.placed": "the adapters' tensors, each on the GPU of the module it attaches to",
    "lora.not_in_one_dir": "the adapters live in different folders; TabbyAPI reads them all from "
    "one lora_dir",
    # --------------------------------------------------------------------------------- staleness
    "stale.model.gone": "the model directory no longer exists",
    "stale.model.other": "the profile was computed for another model directory",
    "stale.model.changed": "config.json or the safetensors headers changed",
    "stale.model.other_revision": "the profile was planned from a Hub revision; this directory holds "
    "another revision or model",
    "stale.gpu.gone": "a GPU the profile was computed with is gone",
    "stale.gpu.replaced": "another GPU model sits where the profile's GPU was",
    "stale.gpu.vram": "a GPU's total VRAM changed",
    "stale.gpu.cuda_order": "a GPU moved in CUDA's device order",
    "stale.gpu.new": "a GPU is present that the profile was computed without",
    "stale.draft.gone": "the draft model's directory no longer exists",
    "stale.draft.changed": "the draft model's config.json or safetensors headers changed",
    "stale.lora.gone": "a LoRA adapter's directory or files no longer exist",
    "stale.lora.changed": "a LoRA adapter's adapter_config.json or safetensors header changed",
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
