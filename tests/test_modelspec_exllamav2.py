"""Every catalog model, written as a sparse directory, is accepted by the real exllamav2 0.3.2 and read the
same way: our ModelSpec holds the numbers exllamav2's own ExLlamaV2Config computes."""

from __future__ import annotations

import pytest

from exlx_autocfg.model.catalog import catalog
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.planner import memory
from tests.support.model_dirs import TINY_CONFIGS, make_model_dir
from tests.support.standin import import_exllamav2


@pytest.fixture(scope="module")
def exl2():
    return import_exllamav2()


@pytest.mark.parametrize("arch", sorted(catalog()) + sorted(TINY_CONFIGS))
def test_exllamav2_reads_what_we_read(exl2, tmp_path, arch):
    d = make_model_dir(tmp_path, arch, bpw=4.65)
    spec = load_model_spec(d)
    if arch in catalog():  # the catalog synthesizes exactly the tensors the directory holds
        listed = load_model_spec(f"{arch}@4.65bpw")
        strip = lambda s: [(t.name, t.dtype, t.shape, t.nbytes) for t in s.tensors]  # noqa: E731
        assert strip(listed) == strip(spec)
        assert memory.module_costs(listed) == memory.module_costs(spec)
        assert listed.source == "catalog" and listed.path is None
        assert listed.hf_repo == catalog()[arch]["hf_repo"]
    cfg = exl2.ExLlamaV2Config(str(d))  # prepare(): config.json + every header + its check_keys
    assert spec.architecture == cfg.arch.arch_string
    assert spec.num_hidden_layers == cfg.num_hidden_layers
    assert spec.hidden_size == cfg.hidden_size
    assert spec.num_attention_heads == cfg.num_attention_heads
    assert spec.num_key_value_heads == cfg.num_key_value_heads
    assert spec.head_dim == cfg.head_dim
    assert spec.intermediate_size == cfg.intermediate_size
    assert spec.vocab_size == cfg.vocab_size
    assert spec.max_position_embeddings == cfg.max_seq_len
    assert spec.rope_theta == cfg.rotary_embedding_base
    assert spec.sliding_window == cfg.sliding_window
    assert spec.uses_swa == bool((cfg.arch.lm.swa or cfg.arch.lm.alternating_swa) and cfg.sliding_window)
    assert spec.attn_logit_softcapping == cfg.attn_logit_softcapping
    assert spec.final_logit_softcapping == cfg.final_logit_softcapping
    assert spec.num_experts == (cfg.num_experts if cfg.arch.lm.is_moe else None)
    assert spec.use_qk_norm == cfg.use_qk_norm
    assert set(t.name for t in spec.tensors) == set(cfg.tensor_file_map)
    assert spec.rules.parallel_decoder == cfg.arch.lm.parallel_decoder_blocks
    assert spec.rules.moe == cfg.arch.lm.is_moe
    assert spec.rules.residual_fp32 == cfg.arch.lm.residual_stream_fp32


def test_fp16_checkpoints_too(exl2, tmp_path):
    for arch in ("phi3-mini", "gemma2-9b", "qwen2.5-7b", "tiny-mixtral", "command-r-35b"):
        d = make_model_dir(tmp_path, arch, quant="fp16")
        spec = load_model_spec(d)
        cfg = exl2.ExLlamaV2Config(str(d))
        assert spec.quant_method is None and spec.bits_per_weight is None
        assert set(t.name for t in spec.tensors) == set(cfg.tensor_file_map)
