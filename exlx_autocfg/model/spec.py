"""What the planner knows about a model: its dimensions and tensors (a `ModelSpec`), however it was read.

`exlx_autocfg.model.load.load_model_spec(ref)` builds one from a model directory (`directory`), from the
catalog (`catalog`), or from a Hugging Face repo revision's config.json and safetensors headers (`hub`, see
`model.hub`); `config.parse_config` reads config.json the way exllamav2 0.3.2 does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from exlx_autocfg.model.architectures import ArchRules, arch_rules
from exlx_autocfg.model.vision import VisionSpec


@dataclass(frozen=True)
class HubSource:
    """Where a `hub` spec was read: the repo, the revision asked for, the commit it resolved to, and what the
    read cost (bytes fetched from the network for it; 0 when everything came from the cache)."""

    repo: str
    revision: str
    commit: str
    endpoint: str = "https://huggingface.co"
    files: tuple[str, ...] = ()  # files read (config.json, the index, each safetensors header)
    bytes_read: int = 0  # bytes fetched from the network for this read (response bodies)
    bytes_cached: int = 0  # bytes of configs and headers served from the cache instead
    weights_bytes: int = 0  # size of the *.safetensors files: what downloading the revision costs
    offline: bool = False  # HF_HUB_OFFLINE: read from the cache alone

    @property
    def reference(self) -> str:
        return f"hf:{self.repo}@{self.revision}"


@dataclass
class ModelSummary:
    name: str
    path: str | None  # model directory; None for catalog models
    architecture: str
    layers: int
    hidden_size: int
    attention_heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    bits_per_weight: float | None = None
    fingerprint: str | None = None  # sha256 over config.json and the safetensors headers
    source: str = "directory"  # directory | catalog | hub
    hub: HubSource | None = None  # for source "hub": repo, revision, commit, bytes read


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    file: str | None = None  # file name inside the model directory; None for catalog models


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str | None
    source: str  # "directory" | "catalog" | "hub"
    architecture: str
    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int  # exllamav2's config.max_seq_len default (same key order)
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    sliding_window: int
    uses_swa: bool
    attn_logit_softcapping: float | None
    final_logit_softcapping: float | None
    num_experts: int | None
    num_experts_per_tok: int | None
    tie_word_embeddings: bool
    quant_method: str | None  # "exl2", "gptq", ... or None for an unquantized checkpoint
    bits_per_weight: float | None
    head_bits: int | None
    use_qk_norm: bool = False
    partial_rotary_factor: float = 1.0
    norm_eps: float | None = None
    # config.json names no context length (Gemma 3's published files): exllamav2's max_seq_len is then its
    # 2048 default (config.py L369-375), far below what the model was trained for; say so, ask for --context
    max_seq_len_defaulted: bool = False
    sliding_window_pattern: int = 1  # config sliding_window_pattern (Gemma 3: every 6th layer is global)
    rope_theta_alt: float | None = None  # a second RoPE base for the sliding layers (Gemma 3): a second table
    attention_bias_qkv: bool = False  # after architecture.py's config.json overrides (L920, L937-944)
    attention_bias_o: bool = False
    mlp_bias: bool = False
    config_num_experts: int | None = None  # config num_local_experts / num_experts, whatever the architecture
    mrope_section: tuple[int, ...] | None = None  # Qwen2-VL M-RoPE (rope_scaling type mrope)
    vision: VisionSpec | None = None  # the vision tower config.json + preprocessor_config.json describe
    checkpoint_fused_mlp: bool = False  # mlp.swiglu.w12 checkpoints (config.py L438-444)
    tensors: tuple[TensorInfo, ...] = ()
    fingerprint: str | None = None
    catalog_id: str | None = None
    hf_repo: str | None = None
    # Where a `hub` spec was read. Not part of the model's identity: a revision read from the Hub and the same
    # files in a directory compare by tensors and fingerprint.
    hub: HubSource | None = field(default=None, compare=False)

    @property
    def rules(self) -> ArchRules:
        rules = arch_rules(self.architecture)
        assert rules is not None  # load_model_spec refuses unknown architectures
        return rules

    @property
    def lm_prefix(self) -> str:
        return self.rules.lm_prefix

    @property
    def head_alt_key(self) -> str | None:
        """Where the head falls back to when `lm_head` has no tensor: the architecture's keys["lm_head"], or
        model.embed_tokens when config.json ties the embeddings (architecture.py L946-951, model.py
        L152-153)."""
        key = "model.embed_tokens" if self.tie_word_embeddings else self.rules.lm.key("lm_head")
        return None if key in (None, "lm_head") else key

    @property
    def eager_only(self) -> bool:
        """arch_compat_overrides disables flash-attn, xformers and SDPA (none of the 28 in 0.3.2 is)."""
        return self.rules.lm.eager_attn_only

    @property
    def swa_arch(self) -> bool:
        """The architecture gives layers a sliding window: arch_compat_overrides then turns off xformers and
        needs a windowed flash-attn, whatever config.json's sliding_window is (config.py L650, L666)."""
        return self.rules.uses_swa

    @property
    def mrope(self) -> bool:
        return self.rules.lm.mrope

    @property
    def is_moe(self) -> bool:
        return self.rules.lm.is_moe

    @property
    def rope_style(self) -> str:
        return self.rules.lm.rope_style

    def sliding_window_of(self, layer: int) -> int:
        """The window model.py L111-120 gives `layer` (0: full attention)."""
        lm = self.rules.lm
        if lm.alternating_swa:
            if self.sliding_window_pattern > 1:
                return self.sliding_window if (layer + 1) % self.sliding_window_pattern != 0 else 0
            return self.sliding_window if not layer % 2 else 0
        return self.sliding_window if lm.swa else 0

    @property
    def num_key_value_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @cached_property
    def tensor_bytes(self) -> dict[str, int]:
        """name -> bytes on disk (what exllamav2's `STFile.measure` returns)."""
        return {t.name: t.nbytes for t in self.tensors}

    @property
    def total_tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def summary(self) -> ModelSummary:
        return ModelSummary(
            name=self.name,
            path=self.path,
            architecture=self.architecture,
            layers=self.num_hidden_layers,
            hidden_size=self.hidden_size,
            attention_heads=self.num_attention_heads,
            kv_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            vocab_size=self.vocab_size,
            max_position_embeddings=self.max_position_embeddings,
            bits_per_weight=self.bits_per_weight,
            fingerprint=self.fingerprint,
            source=self.source,
            hub=self.hub,
        )
