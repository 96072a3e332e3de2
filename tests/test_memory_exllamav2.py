"""The memory model against the real exllamav2 0.3.2's own accounting (CPU torch, stand-in extension).

Sparse full-size model directories (tests/support/model_dirs.py) go through the real `ExLlamaV2Config`
and `ExLlamaV2` (never loaded); caches are allocated lazily and then materialised on torch's `meta`
device through the real `update_cache_tensors()` / `touch_device()`, so every byte is the wheel's.
"""

from __future__ import annotations

import pytest
import torch

from exlx_autocfg.exl2 import CACHE_MODES
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.planner import memory
from tests.support.model_dirs import make_model_dir
from tests.support.standin import import_exllamav2

ARCH_CASES = [
    ("llama3-8b", "exl2"),  # GQA 4:1, 128k vocab (lm_head dq capped)
    ("llama2-7b", "exl2"),  # MHA
    ("nous-capybara-34b", "exl2"),  # Yi-34B GQA 7:1
    ("qwen2.5-7b", "exl2"),  # q/k/v bias
    ("gemma2-9b", "exl2"),  # softcap, alternating SWA, head_dim 256 != h/H, tied head, 4 norms/layer
    ("phi3-mini", "exl2"),  # MHA, head_dim 96
    ("phi3-mini", "fp16"),  # fused qkv/gate_up checkpoint: exllamav2 falls back to its assumed footprint
    ("gemma2-9b", "fp16"),  # tied head read from embed_tokens, fp32 checkpoint
    ("mixtral-8x7b", "exl2"),  # MoE
    ("command-r-35b", "exl2"),  # parallel decoder, layernorm, tied head
    ("tiny-qwen3", "exl2"),  # q/k head norms, tied head, head_dim 64 != h/H
    ("tiny-granite", "fp16"),  # MQA-like (1 KV head: q_block 8), tied fp16 head
]


@pytest.fixture(scope="module")
def exl2():
    return import_exllamav2()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {case: make_model_dir(root, case[0], quant=case[1], bpw=4.0) for case in ARCH_CASES}


def _real_model(exl2, directory, *, max_input_len=2048, max_batch_size=1, max_seq_len=None):
    config = exl2.ExLlamaV2Config(str(directory))
    config.max_input_len = max_input_len
    config.max_batch_size = max_batch_size
    if max_seq_len is not None:
        config.max_seq_len = max_seq_len
    return exl2.ExLlamaV2(config)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@pytest.mark.parametrize("case", ARCH_CASES, ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize(("max_input_len", "max_batch_size"), [(2048, 1), (512, 4)])
def test_module_costs_match_exllamav2(exl2, dirs, case, max_input_len, max_batch_size):
    spec = load_model_spec(dirs[case])
    seq = 16384
    model = _real_model(
        exl2, dirs[case], max_input_len=max_input_len, max_batch_size=max_batch_size, max_seq_len=seq
    )
    ours = memory.module_costs(spec, max_input_len, max_batch_size, max_seq_len=seq)

    assert [c.key for c in ours] == _keys(model)
    for cost, module in zip(ours, model.modules, strict=True):
        assert cost.weight_bytes == module.weight_footprint(), cost.key
        assert cost.scratch_fixed_bytes == module.scratch_space_fixed(), cost.key
        assert cost.scratch_bytes == module.scratch_space(), cost.key
    real_fixed = max(m.scratch_space_fixed() for m in model.modules)  # model.py load_autosplit_gen
    assert memory.fixed_scratch_bytes(ours) == real_fixed // 2 * 2
    assert ours[0].on_cpu and ours[0].kind == "embedding"
    assert sum(c.has_cache for c in ours) == spec.num_hidden_layers


def _keys(model) -> list[str]:
    """exllamav2 keys attention and MLP by their layer prefix; ours add the sub-module name."""
    suffix = {"ExLlamaV2Attention": ".self_attn", "ExLlamaV2MLP": ".mlp", "ExLlamaV2MoEMLP": ".mlp"}
    return [m.key + suffix.get(type(m).__name__, "") for m in model.modules]


CACHE_CLASSES = {
    "FP16": "ExLlamaV2Cache",
    "Q8": "ExLlamaV2Cache_Q8",
    "Q6": "ExLlamaV2Cache_Q6",
    "Q4": "ExLlamaV2Cache_Q4",
}


@pytest.mark.parametrize("case", [ARCH_CASES[i] for i in (0, 1, 2, 4, 5, 8, 9, 11)], ids=lambda c: c[0])
@pytest.mark.parametrize(
    ("seq_len", "batch"), [(4096, 1), (32768, 1), (2001, 3)]
)  # 2001: not a q_block multiple (MQA)
def test_cache_bytes_match_exllamav2(exl2, dirs, case, seq_len, batch):
    spec = load_model_spec(dirs[case])
    model = _real_model(exl2, dirs[case])
    layers = list(range(0, spec.num_hidden_layers, 3))  # a partial split: only these layers on the device
    for mode, cls_name in CACHE_CLASSES.items():
        cache = getattr(exl2, cls_name)(model, batch_size=batch, max_seq_len=seq_len, lazy=True)
        model.cache_map = {i: "meta" for i in layers}
        cache.update_cache_tensors()  # the autosplit path: allocates per layer + staging per device
        states = _nbytes(cache.key_states + cache.value_states + cache.key_scales + cache.value_scales)
        staging = _nbytes([t for pair in getattr(cache, "temp_tensors", {}).values() for t in pair])
        assert states == memory.kv_cache_bytes(spec, mode, seq_len, batch, layers=layers), mode
        assert staging == memory.kv_staging_bytes(spec, mode, seq_len, batch), mode
        if mode != "FP16":
            assert cache.q_block == memory.q_block(spec)
    per_token = {m: memory.kv_cache_bytes_per_token(spec, m) for m in CACHE_MODES}
    full_fp16 = memory.kv_cache_bytes(spec, "FP16", seq_len, batch)
    assert full_fp16 == batch * seq_len * per_token["FP16"]


def test_per_token_figures_quoted_by_turboderp(dirs):
    # exllamav2#383: Yi-34B FP16 cache is 240 kB/token; #425: Phi-3-mini 384 kB FP16, 108 kB Q4 (+12 staging)
    yi = load_model_spec(dirs[("nous-capybara-34b", "exl2")])
    phi = load_model_spec(dirs[("phi3-mini", "exl2")])
    assert memory.kv_cache_bytes(yi, "FP16", 1) == 240 * 1024
    assert memory.kv_cache_bytes(phi, "FP16", 1) == 384 * 1024
    assert memory.kv_cache_bytes(phi, "Q4", 1) == 108 * 1024
    assert memory.kv_staging_bytes(phi, "Q4", 1) == 12 * 1024


@pytest.mark.parametrize("case", [ARCH_CASES[i] for i in (2, 4)], ids=lambda c: c[0])
@pytest.mark.parametrize("flash", [True, False])
@pytest.mark.parametrize(("attn_size", "seq"), [(2048**2, 32768), (1024**2, 4096), (4096**2, 2048)])
def test_temp_attn_size_matches_exllamav2(exl2, dirs, monkeypatch, case, flash, attn_size, seq):
    import exllamav2.attn as attn_mod

    monkeypatch.setattr(attn_mod, "has_flash_attn", flash)
    monkeypatch.setattr(attn_mod, "has_xformers", False)
    spec = load_model_spec(dirs[case])
    model = _real_model(exl2, dirs[case], max_seq_len=seq)
    model.config.max_attention_size = attn_size
    attn = next(m for m in model.modules if type(m).__name__ in ("ExLlamaV2Attention",))
    ours = memory.manual_split_attn_reserve_bytes(spec, attn_size, seq, flash_or_xformers=flash)
    assert ours == int(attn.temp_attn_size())


@pytest.mark.parametrize("case", [ARCH_CASES[i] for i in (0, 4, 5, 9)], ids=lambda c: c[0])
def test_rope_tables_match_exllamav2(exl2, dirs, case):
    from exllamav2.device import ExLlamaV2DeviceContext

    spec = load_model_spec(dirs[case])
    seq = 3000
    model = _real_model(exl2, dirs[case], max_seq_len=seq)
    ctx = object.__new__(ExLlamaV2DeviceContext)  # skip __init__: it creates a CUDA stream
    ctx.model, ctx.device_idx, ctx.archparams = model, -1, model.config.arch.lm
    ctx.scratch_bytes = max(m.scratch_space_fixed() for m in model.modules)  # what load_autosplit passes
    ctx.scratch = None
    with torch.inference_mode():
        ctx.prepare(True)  # the real sin/cos construction and scratch allocation, on the CPU
    assert _nbytes(ctx.sin + ctx.cos) == memory.rope_bytes(spec, seq)
    assert _nbytes([ctx.scratch]) == memory.fixed_scratch_bytes(memory.module_costs(spec, max_seq_len=seq))
