"""LoRA adapters against the real exllamav2 0.3.2 `ExLlamaV2Lora` on CPU torch (only exllamav2_ext stood in).

ExLlamaV2Lora needs only the model's module graph: with every module's device set to the CPU (-1) it
reads the adapter with the real safetensors loader, checks, transposes, converts and "moves" each tensor,
and its update_loras() is a no-op for unloaded modules. So the bytes it keeps per module are the real ones;
on a GPU they would sit on that module's device. Adapters are PEFT-layout safetensors files written with
the header only (the data region a hole: zeros), on sparse full-size base models.
"""

from __future__ import annotations

import math

import pytest

from exlx_autocfg.findings import codes_of
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.model.lora import AdapterError, read_adapter
from exlx_autocfg.planner import lora as lp
from tests.support.adapters import ALL, PREFIX, make_adapter
from tests.support.model_dirs import make_model_dir


def _real(exl2, base_dir, adapter_dir, scale=1.0):
    config = exl2.ExLlamaV2Config(str(base_dir))
    model = exl2.ExLlamaV2(config)
    for module in model.modules:
        module.set_device_idx(-1)  # the CPU stands in for the GPUs the modules would be on
    return exl2.ExLlamaV2Lora.from_directory(model, str(adapter_dir), scale)


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-bases")
    return {
        "llama3-8b": make_model_dir(root, "llama3-8b", bpw=4.0),
        "qwen2.5-0.5b": make_model_dir(root, "qwen2.5-0.5b", bpw=4.0),
        "tiny-llama": make_model_dir(root, "tiny-llama", bpw=4.0),
        "tiny-gemma2": make_model_dir(root, "tiny-gemma2", bpw=4.0),
        "tiny-mixtral": make_model_dir(root, "tiny-mixtral", bpw=4.0),
        "tiny-qwen3": make_model_dir(root, "tiny-qwen3", bpw=4.0),
    }


@pytest.mark.parametrize(
    ("base", "r", "modules", "dtype", "rslora", "scale"),
    [
        ("llama3-8b", 8, ALL, "BF16", False, 1.0),
        ("llama3-8b", 16, ("q_proj", "v_proj"), "F32", True, 0.5),
        ("qwen2.5-0.5b", 32, ALL, "F16", False, 2.0),
        ("tiny-llama", 4, ("o_proj", "down_proj"), "BF16", False, 1.0),
    ],
)
def test_footprint_is_exllamav2loras(exl2, tmp_path, bases, base, r, modules, dtype, rslora, scale):
    adapter_dir = make_adapter(
        tmp_path, bases[base], r=r, modules=modules, dtype=dtype, config={"use_rslora": rslora}
    )
    real = _real(exl2, bases[base], adapter_dir, scale)
    plan = lp.plan_lora(read_adapter(adapter_dir), load_model_spec(bases[base]), scale=scale)
    assert not [f for f in plan.findings if lp.is_refusal(f)]
    ours = {}
    for m in plan.modules:
        ours[f"{m.key}.lora_A.weight"], ours[f"{m.key}.lora_B.weight"] = m.a_bytes, m.b_bytes
    assert ours == {k: _nbytes(t) for k, t in real.tensors.items()}
    assert set(real.target_modules) == set(ours)
    assert all(str(t.dtype) == "torch.float16" for t in real.tensors.values())  # converted, whatever the file
    assert math.isclose(plan.scaling, real.lora_scaling)
    assert plan.max_rank == r and plan.gpu_bytes == sum(ours.values())


def test_head_and_embedding_replacements(exl2, tmp_path, bases):
    """An lm_head replacement goes to the head's GPU in fp16; embed_tokens stays with the embedding (CPU).
    For a tied model (tie_word_embeddings) exllamav2 reads embed_tokens.weight as the head."""
    llama = load_model_spec(bases["tiny-llama"])
    extra = [
        (f"{PREFIX}lm_head.weight", "F32", (llama.vocab_size, llama.hidden_size)),
        (f"{PREFIX}model.embed_tokens.weight", "BF16", (llama.vocab_size, llama.hidden_size)),
    ]
    d = make_adapter(tmp_path, bases["tiny-llama"], name="heads", modules=("q_proj",), extra=extra)
    real = _real(exl2, bases["tiny-llama"], d)
    plan = lp.plan_lora(read_adapter(d), llama)
    assert plan.head_bytes == _nbytes(real.lm_head.weight) == llama.vocab_size * llama.hidden_size * 2
    assert plan.embed_host_bytes == _nbytes(real.embed_tokens.weight)
    qwen = load_model_spec(bases["tiny-qwen3"])
    assert qwen.tie_word_embeddings
    tied = [(f"{PREFIX}model.embed_tokens.weight", "BF16", (qwen.vocab_size, qwen.hidden_size))]
    d = make_adapter(tmp_path, bases["tiny-qwen3"], name="tied", modules=("q_proj",), extra=tied)
    real = _real(exl2, bases["tiny-qwen3"], d)
    plan = lp.plan_lora(read_adapter(d), qwen)
    assert real.embed_tokens is None and plan.embed_host_bytes == 0
    assert plan.head_bytes == _nbytes(real.lm_head.weight)


def test_bytes_follow_the_modules_devices(tmp_path, bases):
    spec = load_model_spec(bases["tiny-llama"])
    extra = [(f"{PREFIX}lm_head.weight", "F16", (spec.vocab_size, spec.hidden_size))]
    plan = lp.plan_lora(read_adapter(make_adapter(tmp_path, bases["tiny-llama"], r=4, extra=extra)), spec)
    per_layer = sum(m.gpu_bytes for m in plan.modules if m.layer == 0)
    # by hand: (in + out) * r * 2 per module, tiny-llama h=256, I=512, 4 heads, 2 KV heads of 64
    assert per_layer == 4 * 2 * ((256 + 256) + (256 + 128) * 2 + (256 + 256) + (256 + 512) * 2 + (512 + 256))
    assert plan.bytes_by_position({0: 0, 1: 1}, head_position=1) == {
        0: per_layer,
        1: per_layer + spec.vocab_size * 256 * 2,
    }
    assert plan.transient_bytes(2048) == 2 * 4 * 2048


# ------------------------------------------------------------------------------------------ refusals


def _refusals(adapter_dir, base_dir):
    return {
        f.code
        for f in lp.plan_lora(read_adapter(adapter_dir), load_model_spec(base_dir)).findings
        if lp.is_refusal(f)
    }


@pytest.mark.parametrize(
    ("case", "kwargs", "code", "error"),
    [
        (
            "fan_in",
            {"config": {"fan_in_fan_out": True}},
            "lora.fan_in_fan_out",
            "fan_in_fan_out mode not supported",
        ),
        ("int8", {"dtype": "I8"}, "lora.dtype", "unsupported tensor dtype"),
        (
            "norm",
            {"extra": [(f"{PREFIX}model.norm.lora_A.weight", "F16", (8, 256))]},
            "lora.unsupported_key",
            "unsupported layer",
        ),
        (
            "fused",
            {"extra": [(f"{PREFIX}model.layers.0.self_attn.qkv_proj.lora_A.weight", "F16", (8, 256))]},
            "lora.target_unknown",
            "qkv_proj",
        ),
        (
            "dora",
            {
                "config": {"use_dora": True},
                "extra": [(f"{PREFIX}model.layers.0.self_attn.q_proj.lora_magnitude_vector", "F16", (256,))],
            },
            "lora.dora",
            "model.layers.0.self_attn.",
        ),
    ],
)
def test_what_exllamav2_cannot_load_is_refused(exl2, tmp_path, bases, case, kwargs, code, error):
    d = make_adapter(tmp_path, bases["tiny-llama"], name=case, r=8, **kwargs)
    with pytest.raises((ValueError, KeyError), match=error):
        _real(exl2, bases["tiny-llama"], d)
    assert code in _refusals(d, bases["tiny-llama"])


def test_an_adapter_for_another_base_model_is_refused(exl2, tmp_path, bases):
    d = make_adapter(tmp_path, bases["qwen2.5-0.5b"], name="qwen-lora", layers=2)  # 896-wide tensors
    with pytest.raises(ValueError, match="incompatible tensor shape"):
        _real(exl2, bases["tiny-llama"], d)
    assert "lora.shape_mismatch" in _refusals(d, bases["tiny-llama"])


def test_fp32_residual_architectures_are_refused(exl2, tmp_path, bases):
    d = make_adapter(tmp_path, bases["tiny-gemma2"], modules=("q_proj",))
    with pytest.raises(AssertionError, match="FP32 residual stream"):
        _real(exl2, bases["tiny-gemma2"], d)
    assert "lora.fp32_residual" in _refusals(d, bases["tiny-gemma2"])


def test_moe_expert_targets_load(exl2, tmp_path, bases):
    """Mixtral experts are linears in modules_dict (loaded; applied by the torch path whenever LoRAs are
    active, moe_mlp.py L238-239)."""
    spec = load_model_spec(bases["tiny-mixtral"])
    extra = []
    for e in range(spec.num_experts):
        key = f"{PREFIX}model.layers.0.block_sparse_moe.experts.{e}.w1"
        extra += [
            (f"{key}.lora_A.weight", "BF16", (4, spec.hidden_size)),
            (f"{key}.lora_B.weight", "BF16", (spec.intermediate_size, 4)),
        ]
    d = make_adapter(tmp_path, bases["tiny-mixtral"], r=4, modules=("q_proj",), extra=extra)
    real = _real(exl2, bases["tiny-mixtral"], d)
    plan = lp.plan_lora(read_adapter(d), spec)
    assert not [f for f in plan.findings if lp.is_refusal(f)]
    assert {f"{m.key}.lora_A.weight" for m in plan.modules} | {
        f"{m.key}.lora_B.weight" for m in plan.modules
    } == set(real.tensors)


def test_lora_targets_are_exllamav2s_linears(exl2, bases):
    from exllamav2.linear import ExLlamaV2Linear

    for base in ("llama3-8b", "qwen2.5-0.5b", "tiny-mixtral"):
        model = exl2.ExLlamaV2(exl2.ExLlamaV2Config(str(bases[base])))
        real = {
            k: (m.in_features, m.out_features)
            for k, m in model.modules_dict.items()
            if isinstance(m, ExLlamaV2Linear) and k.startswith("model.layers.")
        }
        ours = {
            k: (v.in_features, v.out_features)
            for k, v in lp.lora_targets(load_model_spec(bases[base])).items()
        }
        assert ours == real, base


def test_pairs_ranks_patterns_and_scale(tmp_path, bases):
    base = bases["tiny-llama"]
    assert "lora.unpaired" in _refusals(
        make_adapter(tmp_path, base, name="a-only", drop=("q_proj.lora_B.weight",)), base
    )
    odd = [
        (f"{PREFIX}model.layers.0.self_attn.q_proj.lora_A.weight", "F16", (8, 256)),
        (f"{PREFIX}model.layers.0.self_attn.q_proj.lora_B.weight", "F16", (256, 4)),
    ]
    assert "lora.rank_mismatch" in _refusals(
        make_adapter(tmp_path, base, name="ranks", modules=(), extra=odd), base
    )
    assert "lora.rank_pattern" in _refusals(
        make_adapter(tmp_path, base, name="pattern", config={"rank_pattern": {"q_proj": 16}}), base
    )
    assert "lora.peft_type" in _refusals(
        make_adapter(tmp_path, base, name="ia3", config={"peft_type": "IA3"}), base
    )
    plan = lp.plan_lora(
        read_adapter(make_adapter(tmp_path, base, name="neg")), load_model_spec(base), scale=-1.0
    )
    assert "lora.scale_negative" in codes_of(plan.findings)
    assert "lora.base_model_differs" in codes_of(plan.findings)  # "some/base" is not tiny-llama


def test_adapter_directories_that_cannot_be_read(tmp_path, exl2, bases):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AdapterError, match=r"no adapter_config\.json") as exc:
        read_adapter(empty)
    assert "\n" not in str(exc.value)
    d = make_adapter(tmp_path, bases["tiny-llama"], name="st")
    (d / "adapter_model.safetensors").rename(d / "moved")
    with pytest.raises(ValueError, match="No LoRA found"):
        _real(exl2, bases["tiny-llama"], d)
    with pytest.raises(AdapterError, match=r"no adapter_model\.safetensors"):
        read_adapter(d)
    (d / "adapter_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(AdapterError, match=r"adapter_model\.bin"):
        read_adapter(d)
    with pytest.raises(AdapterError, match="no such adapter directory"):
        read_adapter(tmp_path / "nowhere")
    bad = make_adapter(tmp_path, bases["tiny-llama"], name="bad-r", config={"r": "eight"})
    with pytest.raises(AdapterError, match="r must be a number"):
        read_adapter(bad)
