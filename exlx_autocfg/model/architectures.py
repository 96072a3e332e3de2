"""How exllamav2 0.3.2 builds each architecture it knows, as far as memory and checkpoint layout go.

The rules are data (`profiles/models.toml`, `[architectures.*]`, each with its source in exllamav2's
`architecture.py`); this module only types them. An architecture missing from the table is one
exllamav2 0.3.2 cannot load (it would silently load it as Llama) or one whose layout we do not model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from exlx_autocfg.data import load_data


@dataclass(frozen=True)
class ArchRules:
    name: str
    norm: str = "rmsnorm"
    attn_norms: tuple[str, ...] = ("input_layernorm",)
    mlp_norms: tuple[str, ...] = ("post_attention_layernorm",)
    lm_head: str = "lm_head"
    swa: bool = False
    alternating_swa: bool = False
    moe: bool = False
    parallel_decoder: bool = False
    fused_qkv: str | None = None
    fused_mlp: str | None = None
    attention_bias_qkv: bool = False
    mlp_gate: bool = True
    use_qk_norm: bool = False
    residual_fp32: bool = False
    supports_tp: bool = False  # architecture.py `supports_tp`: load_tp / TPContext accept the architecture
    supports_tp_source: str = ""
    source: str = ""

    @property
    def uses_swa(self) -> bool:
        """Whether exllamav2 gives any layer a sliding window (config `sliding_window` alone does not)."""
        return self.swa or self.alternating_swa


def supported_architectures() -> tuple[str, ...]:
    return tuple(sorted(load_data("models.toml")["architectures"]))


@functools.cache
def arch_rules(name: str) -> ArchRules | None:
    """The rules for `name` (config.json `architectures[0]`), or None when exllamav2 0.3.2 cannot load it."""
    entry = load_data("models.toml")["architectures"].get(name)
    if entry is None:
        return None
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in entry.items()}
    return ArchRules(name=name, **fields)
