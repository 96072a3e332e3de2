"""The memory model against the real exllamav2 0.3.2's own accounting, for every architecture it recognises
(CPU torch, stand-in extension).

Sparse full-size model directories (tests/support/model_dirs.py, whose tensors come from the real wheel's
module graph and converter, not from our code) go through the real `ExLlamaV2Config` and `ExLlamaV2`
(never loaded); caches are allocated lazily and then materialised on torch's `meta` device through the real
`update_cache_tensors()` / `touch_device()`, RoPE tables through the real `prepare_sincos`, so every byte
compared is the wheel's.
"""

from __future__ import annotations

import pytest
import torch

from exlx_autocfg.model.architectures import supported_architectures
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.planner import memory
from tests.support.arch_models import ARCHITECTURES
from tests.support.model_dirs import make_model_dir
from tests.support.real_wheel import CACHE_CLASSES, real_cache_bytes, storage_bytes

# FP16 checkpoints where the layout differs: fused q/k/v or gate/up (exllamav2 falls back to its assumed
# footprint for the parts), keymapped Hugging Face names, fused experts, an fp32 checkpoint.
FP16 = [
    "Phi3ForCausalLM", "Glm4ForCausalLM", "InternLM2ForCausalLM", "GPT2LMHeadModel", "GPTBigCodeForCausalLM",
    "DbrxForCausalLM", "Gemma2ForCausalLM", "Qwen3MoeForCausalLM", "Mistral3ForConditionalGeneration",
]  # fmt: skip
CASES = [(a, "exl2") for a in ARCHITECTURES] + [(a, "fp16") for a in FP16]


def test_every_recognised_architecture_is_covered():
    assert sorted(ARCHITECTURES) == sorted(supported_architectures())
    assert len(ARCHITECTURES) == 28


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    out = {}
    for arch, quant in CASES:
        model, overrides = ARCHITECTURES[arch]
        out[(arch, quant)] = make_model_dir(root, model, quant=quant, bpw=4.0, **overrides)
    return out


def _real_model(exl2, directory, *, max_input_len=2048, max_batch_size=1, max_seq_len=None):
    config = exl2.ExLlamaV2Config(str(directory))
    config.max_input_len = max_input_len
    config.max_batch_size = max_batch_size
    if max_seq_len is not None:
        config.max_seq_len = max_seq_len
    return exl2.ExLlamaV2(config)


def _keys(model) -> list[str]:
    """exllamav2 keys attention and MLP by their layer prefix; ours add the sub-module name."""
    suffix = {"ExLlamaV2Attention": ".self_attn", "ExLlamaV2MLP": ".mlp", "ExLlamaV2MoEMLP": ".mlp"}
    return [m.key + suffix.get(type(m).__name__, "") for m in model.modules]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}")
@pytest.mark.parametrize(("max_input_len", "max_batch_size", "seq"), [(2048, 1, 16384), (512, 4, 3000)])
def test_module_costs_match_exllamav2(exl2, dirs, case, max_input_len, max_batch_size, seq):
    spec = load_model_spec(dirs[case])
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
    kv_modules = [
        type(m).__name__ in ("ExLlamaV2Attention", "ExLlamaV2ParallelDecoder") for m in model.modules
    ]
    assert [c.has_cache for c in ours] == kv_modules and sum(kv_modules) == spec.num_hidden_layers
    attns = [getattr(m, "attn", m) for m, kv in zip(model.modules, kv_modules, strict=True) if kv]
    windows = [a.sliding_window for a in attns]
    assert windows == [spec.sliding_window_of(i) for i in range(spec.num_hidden_layers)]




@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize(("seq_len", "batch"), [(4096, 1), (2001, 3)])  # 2001: not a q_block multiple
def test_cache_bytes_match_exllamav2(exl2, dirs, arch, seq_len, batch):
    directory = dirs[(arch, "exl2")]
    spec = load_model_spec(directory)
    model = _real_model(exl2, directory)
    layers = list(range(0, spec.num_hidden_layers, 3))  # a partial split: only these layers on the device
    for mode, cls_name in CACHE_CLASSES.items():
        # the autosplit path: allocates per layer + staging per device
        states, staging = real_cache_bytes(exl2, model, mode, seq=seq_len, layers=layers, batch=batch)
        assert states == memory.kv_cache_bytes(spec, mode, seq_len, batch, layers=layers), mode
        assert staging == memory.kv_staging_bytes(spec, mode, seq_len, batch), mode
        if mode != "FP16":
            cache = getattr(exl2, cls_name)(model, batch_size=batch, max_seq_len=seq_len, lazy=True)
            assert cache.q_block == memory.q_block(spec)
        # bytes per token at batch 1, the figure `plan` prints for each mode
        per_token = sum(real_cache_bytes(exl2, model, mode, seq=1, layers=range(spec.num_hidden_layers)))
        assert per_token == memory.kv_cache_bytes_per_token(spec, mode), mode


def test_per_token_figures_quoted_by_turboderp(tmp_path):
    # exllamav2#383: Yi-34B FP16 cache is 240 kB/token; #425: Phi-3-mini 384 kB FP16, 108 kB Q4 (+12 staging)
    yi = load_model_spec(make_model_dir(tmp_path, "nous-capybara-34b"))
    phi = load_model_spec(make_model_dir(tmp_path, "phi3-mini"))
    assert memory.kv_cache_bytes(yi, "FP16", 1) == 240 * 1024
    assert memory.kv_cache_bytes(phi, "FP16", 1) == 384 * 1024
    assert memory.kv_cache_bytes(phi, "Q4", 1) == 108 * 1024
    assert memory.kv_staging_bytes(phi, "Q4", 1) == 12 * 1024


@pytest.mark.parametrize(
    "arch", ["YiForCausalLM", "Gemma2ForCausalLM", "GPTBigCodeForCausalLM", "Qwen3MoeForCausalLM"]
)
@pytest.mark.parametrize("flash", [True, False])
@pytest.mark.parametrize(("attn_size", "seq"), [(2048**2, 32768), (1024**2, 4096), (4096**2, 2048)])
def test_temp_attn_size_matches_exllamav2(exl2, dirs, monkeypatch, arch, flash, attn_size, seq):
    import exllamav2.attn as attn_mod

    monkeypatch.setattr(attn_mod, "has_flash_attn", flash)
    monkeypatch.setattr(attn_mod, "has_xformers", False)
    spec = load_model_spec(dirs[(arch, "exl2")])
    model = _real_model(exl2, dirs[(arch, "exl2")], max_seq_len=seq)
    model.config.max_attention_size = attn_size
    attn = next(m for m in model.modules if type(m).__name__ in ("ExLlamaV2Attention",))
    ours = memory.manual_split_attn_reserve_bytes(spec, attn_size, seq, flash_or_xformers=flash)
    assert ours == int(attn.temp_attn_size())


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_rope_tables_match_exllamav2(exl2, dirs, arch):
    from exllamav2.device import ExLlamaV2DeviceContext

    directory = dirs[(arch, "exl2")]
    spec = load_model_spec(directory)
    seq = 3000
    model = _real_model(exl2, directory, max_seq_len=seq)
    ctx = object.__new__(ExLlamaV2DeviceContext)  # skip __init__: it creates a CUDA stream
    ctx.model, ctx.device_idx, ctx.archparams = model, -1, model.config.arch.lm
    ctx.scratch_bytes = max(m.scratch_space_fixed() for m in model.modules)  # what load_autosplit passes
    ctx.scratch = None
    with torch.inference_mode():
        ctx.prepare(True)  # the real sin/cos construction and scratch allocation, on the CPU
    assert storage_bytes(ctx.sin + ctx.cos) == memory.rope_bytes(spec, seq)
    assert len(ctx.sin) == memory.rope_tables(spec) or spec.rope_style == "none"
    scratch = memory.fixed_scratch_bytes(memory.module_costs(spec, max_seq_len=seq))
    assert storage_bytes([ctx.scratch]) == scratch
