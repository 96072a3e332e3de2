"""attention_transient_bytes against the real attn.py `_attn_torch` (matmul and SDPA paths), run on CPU.

A TorchDispatchMode sees every tensor the real code allocates and when its storage dies, so the peak of
live bytes is measured, not guessed. The cache tensors and q_states exist before the call (q_states is
allocated in `forward`), so they are registered as pre-existing; our figure includes q_states.
"""

from __future__ import annotations

import pytest
import torch

from exlx_autocfg.exl2 import BACKENDS
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.planner import memory
from tests.support.model_dirs import make_model_dir
from tests.support.peak import PeakBytes
from tests.support.standin import import_exllamav2


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """arch -> (spec, real config, real attention module), built once per module."""
    exl2 = import_exllamav2()
    import exllamav2.attn as attn_mod

    root, built = tmp_path_factory.mktemp("transients"), {}
    for arch in ("tiny-llama", "tiny-phi3", "tiny-qwen3"):
        d = make_model_dir(root, arch)
        config = exl2.ExLlamaV2Config(str(d))
        attn = next(m for m in exl2.ExLlamaV2(config).modules if isinstance(m, attn_mod.ExLlamaV2Attention))
        built[arch] = (load_model_spec(d), config, attn)
    return built


SHAPES = [
    (1, 128, 512),
    (1, 256, 256),
    (2, 64, 512),
    (3, 32, 256),
    (1, 1, 300),
]  # (batch, q, keys); q=1: decode


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-phi3", "tiny-qwen3"])  # GQA 2:1, MHA, GQA 4:1
@pytest.mark.parametrize("backend", ["matmul", "sdpa"])
@pytest.mark.parametrize(("batch", "q", "seq"), SHAPES)
def test_attention_transients_match_the_real_torch_path(models, monkeypatch, arch, backend, batch, q, seq):
    import exllamav2.attn as attn_mod

    spec, config, attn = models[arch]
    monkeypatch.setattr(attn_mod, "has_lower_right_sdpa", backend == "sdpa")

    heads, kv_heads, head_dim = spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim
    cache_k = torch.zeros(batch, seq, kv_heads, head_dim, dtype=torch.half)
    cache_v = torch.zeros_like(cache_k)
    q_states = torch.zeros(batch, q, heads, head_dim, dtype=torch.half)
    params = attn_mod.ExLlamaV2Attention.Params(batch, q, seq - q, None, None)
    with PeakBytes(cache_k, cache_v, q_states) as meter:
        attn._attn_torch(batch, q, q_states, cache_k, cache_v, params, config)

    ours = memory.attention_transient_bytes(spec, backend, q, q * seq, seq, batch_size=batch)
    allocated_in_forward = q_states.numel() * 2 + (
        0 if batch == 1 else 2 * batch * q * kv_heads * head_dim * 2
    )
    assert meter.peak == ours - allocated_in_forward


def test_flash_needs_least_and_matmul_most():
    spec = load_model_spec("nous-capybara-34b@4.0")
    sizes = [memory.attention_transient_bytes(spec, b, 2048, 2048**2, 32768) for b in BACKENDS]
    assert sizes[0] < sizes[1] == sizes[2] < sizes[3]
    bounded = memory.attention_transient_bytes(spec, "matmul", 2048, 2048**2, 32768, path="forward")
    assert bounded < sizes[3] // 10  # model.forward cuts the chunk to keep q*k <= max_attention_size
    with pytest.raises(ValueError, match="backend"):
        memory.attention_transient_bytes(spec, "eager", 2048, 2048**2, 4096)
