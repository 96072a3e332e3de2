"""A LoRA adapter on a model: which exllamav2 linears it attaches to, its GPU bytes there, and whether
ExLlamaV2Lora can load it. Pure: works on a LoraAdapter (model/lora.py, read from the headers) and the
model's ModelSpec. Rules and sources in profiles/lora.toml.

ExLlamaV2Lora (exllamav2/lora.py) keeps every lora_A / lora_B tensor transposed, contiguous and in fp16 on
the device of the linear it attaches to, so a module costs (in + out) * r * 2 bytes there whatever the
file's dtype; an `lm_head` replacement costs its fp16 size on the head's GPU; an `embed_tokens` one stays in
system RAM with the embedding. Tested against the real ExLlamaV2Lora on CPU (tests/test_lora_realwheel.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from exlx_autocfg.data import load_data
from exlx_autocfg.findings import Finding, finding
from exlx_autocfg.model.graph import lm_modules
from exlx_autocfg.model.lora import LoraAdapter
from exlx_autocfg.model.spec import ModelSpec


@functools.cache
def rules() -> dict[str, Any]:
    return load_data("lora.toml")


@dataclass(frozen=True)
class Linear:
    key: str  # exllamav2 modules_dict key, e.g. "model.layers.3.self_attn.q_proj"
    layer: int
    in_features: int
    out_features: int


def lora_targets(spec: ModelSpec) -> dict[str, Linear]:
    """The linears exllamav2 builds in the decoder layers of `spec` (model/graph.py, the module graph of
    model.py), keyed as in its modules_dict: what a LoRA key must name."""
    out: dict[str, Linear] = {}
    for node in lm_modules(spec):
        if node.layer is None:
            continue
        for module in (node, *node.parts):
            for lin in module.linears:
                out[lin.key] = Linear(lin.key, node.layer, lin.in_features, lin.out_features)
    return out


def head_key(spec: ModelSpec) -> str:
    """The key ExLlamaV2Lora matches a head replacement against (arch.lm.keys['lm_head'])."""
    tied = spec.rules.lm.key("lm_head") != "lm_head" or spec.tie_word_embeddings
    return "model.embed_tokens" if tied else "lm_head"


@dataclass(frozen=True)
class LoraModule:
    key: str
    layer: int
    rank: int
    a_bytes: int  # fp16 lora_A^T (in x r) on the module's GPU
    b_bytes: int  # fp16 lora_B^T (r x out)

    @property
    def gpu_bytes(self) -> int:
        return self.a_bytes + self.b_bytes


@dataclass(frozen=True)
class LoraPlan:
    name: str
    path: str
    scale: float  # the user's (TabbyAPI `scaling`, --lora DIR:SCALE)
    scaling: float  # what exllamav2 multiplies lora_B by: scale * alpha / r (alpha * sqrt(r) with rsLoRA)
    max_rank: int
    modules: tuple[LoraModule, ...]
    head_bytes: int  # fp16 lm_head replacement on the head's GPU (0: none)
    embed_host_bytes: int  # fp16 embed_tokens replacement, in system RAM with the embedding
    fingerprint: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def gpu_bytes(self) -> int:
        return sum(m.gpu_bytes for m in self.modules) + self.head_bytes

    def bytes_by_position(self, layer_position: Mapping[int, int], head_position: int) -> dict[int, int]:
        """GPU bytes per GPU position, given where the plan put each decoder layer and the head."""
        out: dict[int, int] = {}
        for m in self.modules:
            pos = layer_position[m.layer]
            out[pos] = out.get(pos, 0) + m.gpu_bytes
        if self.head_bytes:
            out[head_position] = out.get(head_position, 0) + self.head_bytes
        return out

    def transient_bytes(self, max_input_len: int, max_batch_size: int = 1) -> int:
        """One forward with the adapter: max_rank x rows fp16 elements on the module's GPU."""
        return 2 * self.max_rank * max_input_len * max_batch_size

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "scale": self.scale,
            "scaling": self.scaling,
            "max_rank": self.max_rank,
            "modules": len(self.modules),
            "gpu_bytes": self.gpu_bytes,
            "head_bytes": self.head_bytes,
            "embed_host_bytes": self.embed_host_bytes,
            "fingerprint": self.fingerprint,
        }


REFUSALS = frozenset(
    {
        "lora.fan_in_fan_out",
        "lora.peft_type",
        "lora.dora",
        "lora.fp32_residual",
        "lora.unsupported_key",
        "lora.target_unknown",
        "lora.shape_mismatch",
        "lora.dtype",
        "lora.unpaired",
        "lora.rank_mismatch",
        "lora.rank_pattern",
        "lora.scale_negative",
    }
)


def is_refusal(f: Finding) -> bool:
    return f.code in REFUSALS


def _model_names(spec: ModelSpec) -> set[str]:
    names = {spec.name.lower()}
    if spec.hf_repo:
        names |= {spec.hf_repo.lower(), spec.hf_repo.rsplit("/", 1)[-1].lower()}
    if spec.catalog_id:
        names.add(spec.catalog_id.lower())
    return names


def plan_lora(adapter: LoraAdapter, spec: ModelSpec, *, scale: float = 1.0) -> LoraPlan:
    """The adapter's modules and bytes on `spec`, with every reason ExLlamaV2Lora would refuse it (codes in
    REFUSALS) and the warnings. Refusals do not raise: the caller decides (one line, exit 2)."""
    where = adapter.path
    out: list[Finding] = adapter_findings(adapter, scale=scale)

    def refuse(code: str, message: str, **evidence: Any) -> None:
        out.append(finding(code, f"{adapter.name}: {message}", adapter=where, **evidence))

    if spec.rules.lm.residual_stream_fp32:
        refuse(
            "lora.fp32_residual",
            f"exllamav2 has no LoRA support for {spec.architecture} (fp32 residual stream)",
            architecture=spec.architecture,
            source=rules()["refuse"]["fp32_residual_source"],
        )
    return _plan_tensors(adapter, spec, scale, out, refuse)


def adapter_findings(adapter: LoraAdapter, *, scale: float = 1.0) -> list[Finding]:
    """What ExLlamaV2Lora refuses whatever the model: the scale, peft_type, fan_in_fan_out, DoRA and
    per-module ranks or alphas (from adapter_config.json alone)."""
    t, rf = rules()["tensors"], rules()["refuse"]
    where = adapter.path
    out: list[Finding] = []

    def refuse(code: str, message: str, **evidence: Any) -> None:
        out.append(finding(code, f"{adapter.name}: {message}", adapter=where, **evidence))

    if scale < rules()["scaling"]["tabby_min_scale"]:
        refuse(
            "lora.scale_negative", f"scale {scale:g} is negative", source=rules()["scaling"]["tabby_source"]
        )
    if adapter.peft_type is not None and adapter.peft_type.upper() != "LORA":
        refuse("lora.peft_type", f"peft_type {adapter.peft_type} is not LORA", source=t["target_source"])
    if adapter.fan_in_fan_out:
        refuse(
            "lora.fan_in_fan_out",
            "fan_in_fan_out adapters are not supported by exllamav2",
            source=rf["fan_in_fan_out_source"],
        )
    if adapter.use_dora:
        refuse(
            "lora.dora", "DoRA adapters (use_dora) cannot be loaded by exllamav2", source=rf["dora_source"]
        )
    if adapter.rank_pattern or adapter.alpha_pattern:
        refuse(
            "lora.rank_pattern",
            "rank_pattern/alpha_pattern give some modules other ranks or alphas; "
            "exllamav2 scales every module by one lora_alpha / r",
            source=rf["rank_pattern_source"],
        )
    for tensor in adapter.tensors:
        if any(tensor.name.endswith(s) for s in t["skip_suffixes"]):
            continue
        if tensor.dtype not in t["dtypes"]:
            refuse(
                "lora.dtype",
                f"{tensor.name} is {tensor.dtype}; exllamav2 takes FP16, BF16 or FP32",
                tensor=tensor.name,
                source=t["dtype_source"],
            )
    return out


def _plan_tensors(
    adapter: LoraAdapter, spec: ModelSpec, scale: float, out: list[Finding], refuse: Any
) -> LoraPlan:
    """The tensors against the model's linears (refusals through `refuse`, into `out`) and the plan."""
    t = rules()["tensors"]
    where = adapter.path
    targets = lora_targets(spec)
    head = head_key(spec)
    halves: dict[str, dict[str, tuple[int, ...]]] = {}
    head_bytes = embed_bytes = 0
    bias_seen = False
    for tensor in adapter.tensors:
        key = tensor.name
        if any(key.endswith(s) for s in t["skip_suffixes"]):
            continue
        if tensor.dtype not in t["dtypes"]:
            continue  # refused by adapter_findings
        if key.endswith(f"{head}.weight"):
            head_bytes += tensor.numel * 2
            continue
        if key.endswith("embed_tokens.weight"):
            embed_bytes += tensor.numel * 2
            continue
        i = key.find("model.layers.")
        parts = key[i:].split(".") if i >= 0 else []
        if i < 0 or len(parts) < 6 or not parts[2].isdigit():
            refuse(
                "lora.unsupported_key",
                f"{key} is not a decoder-layer linear, lm_head or embed_tokens",
                tensor=key,
                source=t["target_source"],
            )
            continue
        half = parts[-2]
        if half == "bias":
            bias_seen = True
            continue
        module = f"model.layers.{parts[2]}.{parts[3]}.{'.'.join(parts[4:-2])}"
        linear = targets.get(module)
        if linear is None:
            refuse(
                "lora.target_unknown",
                f"{key} targets {module}, which exllamav2 does not build as a linear for {spec.architecture}",
                tensor=key,
                target=module,
                source=t["target_source"],
            )
            continue
        if half not in ("lora_A", "lora_B") or len(tensor.shape) != 2:
            refuse(
                "lora.unsupported_key",
                f"{key}: only 2-D lora_A / lora_B tensors are loaded",
                tensor=key,
                source=t["half_source"],
            )
            continue
        want = (None, linear.in_features) if half == "lora_A" else (linear.out_features, None)
        got = tensor.shape[1] if half == "lora_A" else tensor.shape[0]
        if got != (want[1] if half == "lora_A" else want[0]):
            side = "in_features" if half == "lora_A" else "out_features"
            refuse(
                "lora.shape_mismatch",
                f"{key} has shape {list(tensor.shape)} but {module} has {side} "
                f"{getattr(linear, side)} (an adapter for another base model?)",
                tensor=key,
                shape=list(tensor.shape),
                expected=getattr(linear, side),
                source=t["shape_source"],
            )
            continue
        halves.setdefault(module, {})[half] = tensor.shape

    modules: list[LoraModule] = []
    for module, pair in sorted(halves.items(), key=lambda kv: (targets[kv[0]].layer, kv[0])):
        if set(pair) != {"lora_A", "lora_B"}:
            have = next(iter(pair))
            refuse(
                "lora.unpaired",
                f"{module} has {have} but no {'lora_B' if have == 'lora_A' else 'lora_A'}",
                target=module,
                source=t["pairs_source"],
            )
            continue
        a, b = pair["lora_A"], pair["lora_B"]
        if a[0] != b[1] or (a[0] != adapter.r and not adapter.rank_pattern):
            refuse(
                "lora.rank_mismatch",
                f"{module}: lora_A rank {a[0]}, lora_B rank {b[1]}, adapter r {adapter.r}",
                target=module,
                a_rank=a[0],
                b_rank=b[1],
                r=adapter.r,
                source=t["rank_source"],
            )
            continue
        modules.append(LoraModule(module, targets[module].layer, a[0], math.prod(a) * 2, math.prod(b) * 2))

    if bias_seen:
        out.append(
            finding(
                "lora.bias",
                f"{adapter.name}: the adapter stores bias tensors; exllamav2 loads it only if they "
                "are all zero (not checked: only headers are read)",
                adapter=where,
                source=t["bias_source"],
            )
        )
    if adapter.base_model and _model_names(spec).isdisjoint(
        {adapter.base_model.lower(), adapter.base_model.rsplit("/", 1)[-1].lower()}
    ):
        out.append(
            finding(
                "lora.base_model_differs",
                f"{adapter.name} was trained on {adapter.base_model}; planned on "
                f"{spec.name} (the shapes agree: check it is the same base model)",
                adapter=where,
                base_model=adapter.base_model,
            )
        )
    alpha = adapter.lora_alpha * math.sqrt(adapter.r) if adapter.use_rslora else adapter.lora_alpha
    return LoraPlan(
        name=adapter.name,
        path=where,
        scale=scale,
        scaling=scale * alpha / adapter.r,
        max_rank=max((m.rank for m in modules), default=0),
        modules=tuple(modules),
        head_bytes=head_bytes,
        embed_host_bytes=embed_bytes,
        fingerprint=adapter.fingerprint,
        findings=out,
    )
