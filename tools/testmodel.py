"""Random-weight FP16 models of a real architecture, for validating the memory model and the loader.

`write_test_model(dest, shape)` writes a Llama-style decoder with grouped-query attention as
`config.json` + `model.safetensors` + a byte-level BPE `tokenizer.json`, in the layout the real
exllamav2 0.3.2 loads unquantized (FP16 linears are kept as `nn.Linear`, `linear.py` `load`). Nothing is
downloaded: the tokenizer is built with the `tokenizers` library from a deterministic merge list, so its
vocabulary has exactly `vocab_size` entries and every id the model can emit decodes.

`reference_logits` is an independent float32 forward pass of the same model (HF Llama semantics: RMSNorm,
rotate-half RoPE, GQA, SwiGLU) used as ground truth for exllamav2's attention backends.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 as in Llama-2 tokenizers
BOS_ID, EOS_ID = 1, 2
INIT_STD = 0.02  # weights ~N(0, 0.02^2): activations stay far from FP16 overflow, as in trained models


@dataclass(frozen=True)
class TestModelShape:
    """The config.json numbers of a Llama-style model with grouped-query attention."""

    __test__ = False  # not a pytest test class, despite the name

    layers: int
    hidden_size: int
    intermediate_size: int
    attention_heads: int
    kv_heads: int
    vocab_size: int
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.attention_heads

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the checkpoint, in file order, with the HF Llama names exllamav2 expects."""
        h, kvd = self.hidden_size, self.kv_heads * self.head_dim
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab_size, h)}
        for i in range(self.layers):
            p = f"model.layers.{i}."
            shapes[p + "input_layernorm.weight"] = (h,)
            shapes[p + "self_attn.q_proj.weight"] = (h, h)
            shapes[p + "self_attn.k_proj.weight"] = (kvd, h)
            shapes[p + "self_attn.v_proj.weight"] = (kvd, h)
            shapes[p + "self_attn.o_proj.weight"] = (h, h)
            shapes[p + "post_attention_layernorm.weight"] = (h,)
            shapes[p + "mlp.gate_proj.weight"] = (self.intermediate_size, h)
            shapes[p + "mlp.up_proj.weight"] = (self.intermediate_size, h)
            shapes[p + "mlp.down_proj.weight"] = (h, self.intermediate_size)
        shapes["model.norm.weight"] = (h,)
        shapes["lm_head.weight"] = (self.vocab_size, h)
        return shapes

    def parameter_count(self) -> int:
        return sum(math.prod(s) for s in self.tensor_shapes().values())

    def config_json(self) -> dict:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.attention_heads,
            "num_key_value_heads": self.kv_heads,
            "num_hidden_layers": self.layers,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "torch_dtype": "float16",
            "bos_token_id": BOS_ID,
            "eos_token_id": EOS_ID,
        }


# Named sizes. "1b" is TinyLlama-1.1B's shape (22 layers, 32 heads over 4 KV heads, 32000 tokens) with a 32k
# context, so the cache is a real share of the plan: a GQA geometry whose FP16 checkpoint (2.2 GB) writes in
# seconds. "3b" follows Llama-3.2-3B's layer geometry.
SHAPES: dict[str, TestModelShape] = {
    "tiny": TestModelShape(layers=2, hidden_size=256, intermediate_size=512, attention_heads=8, kv_heads=2,
                           vocab_size=512, max_position_embeddings=2048),
    "small": TestModelShape(layers=4, hidden_size=1024, intermediate_size=2816, attention_heads=16,
                            kv_heads=4, vocab_size=8192, max_position_embeddings=4096),
    "1b": TestModelShape(layers=22, hidden_size=2048, intermediate_size=5632, attention_heads=32, kv_heads=4,
                         vocab_size=32000, max_position_embeddings=32768),
    "3b": TestModelShape(layers=28, hidden_size=3072, intermediate_size=8192, attention_heads=24, kv_heads=8,
                         vocab_size=32000, max_position_embeddings=32768),
}


def build_tokenizer_json(vocab_size: int) -> str:
    """A byte-level BPE tokenizer.json of exactly `vocab_size` tokens: 3 specials, 256 bytes, pair merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    # Printable ASCII first, so that ordinary text merges into two-character tokens.
    alphabet.sort(key=lambda c: (not (c.isascii() and c.isalnum()), c not in "Ġ", ord(c)))
    n_merges = vocab_size - len(SPECIAL_TOKENS) - len(alphabet)
    if n_merges < 0 or n_merges > len(alphabet) ** 2:
        raise ValueError(f"vocab_size {vocab_size} outside {len(SPECIAL_TOKENS) + len(alphabet)}.."
                         f"{len(SPECIAL_TOKENS) + len(alphabet) + len(alphabet) ** 2}")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in alphabet:
        vocab[ch] = len(vocab)
    merges: list[tuple[str, str]] = []
    for a in alphabet:
        for b in alphabet:
            if len(merges) == n_merges:
                break
            merges.append((a, b))
            vocab[a + b] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    assert tokenizer.get_vocab_size() == vocab_size
    return tokenizer.to_str()


def _random_state(shape: TestModelShape, seed: int, device: str) -> dict[str, torch.Tensor]:
    # Drawing on a GPU is ~10x faster for the 1-3 B sizes; the values depend on the device's generator.
    gen = torch.Generator(device=device).manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for name, dims in shape.tensor_shapes().items():
        if name.endswith("norm.weight"):
            state[name] = torch.ones(dims, dtype=torch.float16)
        else:
            t = torch.randn(dims, generator=gen, device=device, dtype=torch.float16) * INIT_STD
            state[name] = t.cpu()
    return state


def write_test_model(dest: str | os.PathLike[str], shape: TestModelShape | str = "tiny", *,
                     seed: int = 0, device: str = "cpu") -> Path:
    """Write the model directory atomically (a temp dir renamed into place) and return its path.

    `device` draws the random weights there ("cuda" for the large sizes); the files are the same format."""
    from safetensors.torch import save_file

    if isinstance(shape, str):
        shape = SHAPES[shape]
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(shape.config_json(), indent=2))
        (tmp / "tokenizer.json").write_text(build_tokenizer_json(shape.vocab_size), encoding="utf-8")
        (tmp / "tokenizer_config.json").write_text(json.dumps(
            {"bos_token": SPECIAL_TOKENS[BOS_ID], "eos_token": SPECIAL_TOKENS[EOS_ID], "unk_token": "<unk>",
             "add_bos_token": True, "model_max_length": shape.max_position_embeddings}, indent=2))
        (tmp / "exlx_testmodel.json").write_text(
            json.dumps({"shape": asdict(shape), "seed": seed, "drawn_on": device}, indent=2))
        state = _random_state(shape, seed, device)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def read_shape(model_dir: str | os.PathLike[str]) -> TestModelShape:
    """The shape a directory written by `write_test_model` was made with."""
    data = json.loads((Path(model_dir) / "exlx_testmodel.json").read_text())
    return TestModelShape(**data["shape"])


# ---- float32 reference forward pass -------------------------------------------------------------------


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate-half RoPE (HF Llama / exllamav2 NEOX style) on (batch, heads, seq, head_dim)."""
    d, seq = x.shape[-1], x.shape[-2]
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d))
    angles = torch.outer(torch.arange(seq, dtype=torch.float32, device=x.device), inv_freq)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
                        scale: float | None = None) -> torch.Tensor:
    """float32 attention on (batch, seq, heads, head_dim) tensors with GQA -> (batch, seq, heads*dim)."""
    b, s, n_heads, d = q.shape
    groups = n_heads // k.shape[2]
    q32, k32, v32 = (t.float().transpose(1, 2) for t in (q, k, v))
    k32 = k32.repeat_interleave(groups, dim=1)
    v32 = v32.repeat_interleave(groups, dim=1)
    scores = q32 @ k32.transpose(-1, -2) * (scale if scale is not None else d ** -0.5)
    if causal:
        keep = torch.ones(s, k32.shape[2], dtype=torch.bool, device=q.device).tril(k32.shape[2] - s)
        scores = scores.masked_fill(~keep, float("-inf"))
    out = scores.softmax(-1) @ v32
    return out.transpose(1, 2).reshape(b, s, n_heads * d)


@torch.no_grad()
def reference_logits(model_dir: str | os.PathLike[str], input_ids: torch.Tensor, *, causal: bool = True,
                     device: str | torch.device = "cpu") -> torch.Tensor:
    """float32 logits (batch, seq, vocab) of the model in `model_dir` for a prompt starting at position 0."""
    from safetensors.torch import load_file

    shape = read_shape(model_dir)
    w = {k: t.to(device=device, dtype=torch.float32)
         for k, t in load_file(str(Path(model_dir) / "model.safetensors")).items()}
    d = shape.head_dim
    ids = input_ids.to(device)
    b, s = ids.shape
    x = w["model.embed_tokens.weight"][ids]
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        y = _rms_norm(x, w[p + "input_layernorm.weight"], shape.rms_norm_eps)
        q = (y @ w[p + "self_attn.q_proj.weight"].T).view(b, s, shape.attention_heads, d)
        k = (y @ w[p + "self_attn.k_proj.weight"].T).view(b, s, shape.kv_heads, d)
        v = (y @ w[p + "self_attn.v_proj.weight"].T).view(b, s, shape.kv_heads, d)
        q = _rope(q.transpose(1, 2), shape.rope_theta).transpose(1, 2)
        k = _rope(k.transpose(1, 2), shape.rope_theta).transpose(1, 2)
        x = x + reference_attention(q, k, v, causal=causal) @ w[p + "self_attn.o_proj.weight"].T
        y = _rms_norm(x, w[p + "post_attention_layernorm.weight"], shape.rms_norm_eps)
        gate = torch.nn.functional.silu(y @ w[p + "mlp.gate_proj.weight"].T)
        x = x + (gate * (y @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    x = _rms_norm(x, w["model.norm.weight"], shape.rms_norm_eps)
    return x @ w["lm_head.weight"].T
