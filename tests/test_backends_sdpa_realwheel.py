"""exllamav2 0.3.2's SDPA path is non-causal on prompt passes; its matmul path is causal.

Runs the real `ExLlamaV2Attention._attn_torch` of the installed exllamav2 0.3.2 wheel on CPU torch (only the
compiled `exllamav2_ext` is stood in for; nothing here calls it) on a real one-layer Llama checkpoint, and
checks that the planner's switches (no_sdpa) send exllamav2 to the causal path.
"""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from exlx_autocfg.facts.what_if import what_if_facts  # noqa: E402
from exlx_autocfg.planner.backends import BackendQuery, select  # noqa: E402
from tests.support.standin import import_exllamav2  # noqa: E402

H, HKV, D, HIDDEN, INTER, VOCAB = 4, 2, 16, 64, 128, 256
Q_LEN = 16


@pytest.fixture(scope="module")
def attention(tmp_path_factory):
    """A real ExLlamaV2Attention built by the wheel from a real (tiny) Llama checkpoint."""
    exl2 = import_exllamav2()
    model_dir = tmp_path_factory.mktemp("tiny-llama")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": HIDDEN,
        "intermediate_size": INTER,
        "num_attention_heads": H,
        "num_key_value_heads": HKV,
        "num_hidden_layers": 1,
        "vocab_size": VOCAB,
        "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5,
        "torch_dtype": "float16",
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    f16 = torch.float16
    p = "model.layers.0."
    tensors = {
        "model.embed_tokens.weight": torch.zeros(VOCAB, HIDDEN, dtype=f16),
        "model.norm.weight": torch.ones(HIDDEN, dtype=f16),
        "lm_head.weight": torch.zeros(VOCAB, HIDDEN, dtype=f16),
        p + "input_layernorm.weight": torch.ones(HIDDEN, dtype=f16),
        p + "post_attention_layernorm.weight": torch.ones(HIDDEN, dtype=f16),
        p + "self_attn.q_proj.weight": torch.zeros(H * D, HIDDEN, dtype=f16),
        p + "self_attn.k_proj.weight": torch.zeros(HKV * D, HIDDEN, dtype=f16),
        p + "self_attn.v_proj.weight": torch.zeros(HKV * D, HIDDEN, dtype=f16),
        p + "self_attn.o_proj.weight": torch.zeros(HIDDEN, H * D, dtype=f16),
        p + "mlp.gate_proj.weight": torch.zeros(INTER, HIDDEN, dtype=f16),
        p + "mlp.up_proj.weight": torch.zeros(INTER, HIDDEN, dtype=f16),
        p + "mlp.down_proj.weight": torch.zeros(HIDDEN, INTER, dtype=f16),
    }
    safetensors_torch.save_file(tensors, str(model_dir / "model.safetensors"))
    from exllamav2.attn import ExLlamaV2Attention

    assert exl2.__version__ == "0.3.2"
    config = exl2.ExLlamaV2Config(str(model_dir))
    model = exl2.ExLlamaV2(config, lazy_load=True)
    attn = next(m for m in model.modules if isinstance(m, ExLlamaV2Attention))
    return attn, config


def _qkv():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, Q_LEN, H, D, generator=g).half()
    k = torch.randn(1, Q_LEN, HKV, D, generator=g).half()
    v = torch.randn(1, Q_LEN, HKV, D, generator=g).half()
    return q, k, v


def _run(attn, config, *, no_sdpa: bool):
    """One prompt pass (16 tokens, past 0, no padding) through the wheel's `_attn_torch`."""
    from exllamav2.attn_params import Params

    config.no_sdpa = no_sdpa
    q, k, v = _qkv()
    return attn._attn_torch(1, Q_LEN, q, k, v, Params(1, Q_LEN, 0), config).float()


def _reference(attn, *, causal: bool):
    q, k, v = _qkv()
    rep = H // HKV
    qq = q.float().transpose(1, 2)
    kk = k.float().repeat_interleave(rep, 2).transpose(1, 2)
    vv = v.float().repeat_interleave(rep, 2).transpose(1, 2)
    out = torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, is_causal=causal, scale=attn.scaling)
    return out.transpose(1, 2).reshape(1, Q_LEN, H * D)


def test_sdpa_path_is_non_causal_and_matmul_causal(attention):
    import exllamav2.attn as attn_module

    attn, config = attention
    assert attn_module.has_lower_right_sdpa  # torch >= 2.3: exllamav2 would pick SDPA without no_sdpa
    sdpa = _run(attn, config, no_sdpa=False)
    matmul = _run(attn, config, no_sdpa=True)
    causal, bidirectional = _reference(attn, causal=True), _reference(attn, causal=False)
    # fp16 inputs and (for matmul) an fp16 softmax: 1e-2 separates "equal" from the ~2.5 causal gap.
    assert (sdpa - bidirectional).abs().max() < 1e-2
    assert (sdpa - causal).abs().max() > 1.0
    assert (matmul - causal).abs().max() < 1e-2
    assert (matmul - bidirectional).abs().max() > 1.0


def test_planner_switches_land_on_the_causal_path(attention):
    """No flash-attn, no xformers, torch >= 2.3, exllamav2 0.3.2: SDPA is refused and no_sdpa is set, so the
    wheel's own precedence ends on matmul, which matches causal attention."""
    attn, config = attention
    facts = what_if_facts(["t4"], ["torch==2.6.0", "exllamav2==0.3.2"])
    selection = select(BackendQuery(facts, tuple(facts.gpu.gpus), "0.3.2"))
    assert selection.backend == "matmul"
    assert any("WRONG" in f.message for f in selection.rejected["sdpa"])
    assert "backend.sdpa.causal_defect" in {f.code for f in selection.rejected["sdpa"]}
    assert selection.switches["no_sdpa"] is True
    out = _run(attn, config, no_sdpa=selection.switches["no_sdpa"])
    assert (out - _reference(attn, causal=True)).abs().max() < 1e-2
