"""`check --draft DIR --lora DIR [--model DIR]`: will what loads beside the model load?

A draft must read as an EXL2 model of an architecture exllamav2 supports; with `--model` the pair is judged
as the planner judges it (a vocabulary or tokenizer that differs, a draft not smaller than the model). An
adapter must read as a PEFT LoRA directory (adapter_config.json and adapter_model.safetensors) that
ExLlamaV2Lora accepts (no DoRA, no fan_in_fan_out, per-module ranks, dtypes); with `--model` its every
tensor is checked against the model's linears. One verdict per draft and per adapter, coded: a refusal
carries the finding's own code (`draft.*`, `lora.*`).
"""

from __future__ import annotations

from exlx_autocfg.checks.verdict import Verdict, from_findings, make
from exlx_autocfg.errors import ExlxError
from exlx_autocfg.findings import Finding
from exlx_autocfg.model.spec import ModelSpec

DRAFT_TITLE = "the draft model loads and can draft for the model"
LORA_TITLE = "the LoRA adapter loads with ExLlamaV2Lora on the model"


def draft_verdict(draft_ref: str, model: ModelSpec | None) -> Verdict:
    from exlx_autocfg.model.companions import read_draft, tokenizer_of
    from exlx_autocfg.planner import draft as dr

    try:
        draft = read_draft(draft_ref)
    except ExlxError as exc:
        return make("draft", "fail", f"the draft {draft_ref} does not read as a model exllamav2 loads: "
                    f"{exc.one_line()}", code="check.draft.unreadable", title=DRAFT_TITLE)
    if model is None:
        return make("draft", "pass", f"{draft.spec.name} reads as a {draft.spec.architecture} model "
                    "exllamav2 supports (give --model to check the pair)", code="check.draft.ok",
                    title=DRAFT_TITLE)
    found = dr.judge_draft(model, draft.spec, cache_size=256, cache_mode="FP16", draft_cache_mode="FP16",
                           model_tokenizer=tokenizer_of(model), draft_tokenizer=draft.tokenizer)
    refusals = [f for f in found if dr.is_refusal(f)]
    if refusals:
        return from_findings("draft", "fail", refusals, "choose a draft of the model's family, smaller "
                             "than it, with the same tokenizer", title=DRAFT_TITLE)
    notes: list[Finding] = [f for f in found if f.code != "draft.context_beyond_trained"]
    return make("draft", "pass", f"{draft.spec.name} can draft for {model.name} (same vocabulary, "
                "smaller)", code="check.draft.ok", also=notes, title=DRAFT_TITLE)


def lora_verdict(lora_ref: str, model: ModelSpec | None) -> Verdict:
    from exlx_autocfg.model.companions import read_lora
    from exlx_autocfg.planner import lora as lp

    try:
        item = read_lora(lora_ref)
    except ExlxError as exc:
        why = f"the adapter {lora_ref} does not read as a LoRA ExLlamaV2Lora loads: {exc.one_line()}"
        return make(f"lora:{lora_ref}", "fail", why, code="check.lora.unreadable", title=LORA_TITLE)
    vid = f"lora:{item.adapter.name}"
    if model is None:
        found = lp.adapter_findings(item.adapter, scale=item.scale)
        what = "(give --model to check its tensors against the model)"
    else:
        found = lp.plan_lora(item.adapter, model, scale=item.scale).findings
        what = f"on {model.name}"
    refusals = [f for f in found if lp.is_refusal(f)]
    if refusals:
        return from_findings(vid, "fail", refusals, "use a PEFT LoRA trained on this base model, "
                             "saved as adapter_model.safetensors", title=LORA_TITLE)
    return make(vid, "pass", f"{item.adapter.name} (r {item.adapter.r}) loads with ExLlamaV2Lora {what}",
                code="check.lora.ok", also=found, title=LORA_TITLE)


def companion_verdicts(model: ModelSpec | None, draft: str | None, loras: list[str]) -> list[Verdict]:
    out = []
    if draft is not None:
        out.append(draft_verdict(draft, model))
    out += [lora_verdict(x, model) for x in loras]
    return out
