"""Properties of the memory model over every catalog model (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from exlx_autocfg import exl2
from exlx_autocfg.model.catalog import catalog
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.planner import memory

models = st.sampled_from(sorted(catalog()))
modes = st.sampled_from(exl2.CACHE_MODES)
bpws = st.sampled_from([2.5, 3.0, 4.0, 4.65, 6.0, 8.0])


@settings(max_examples=30, deadline=None)
@given(model=models, mode=modes, seq=st.integers(1, 1 << 20), batch=st.integers(1, 8), bpw=bpws)
def test_cache_is_linear_in_tokens_and_batch(model, mode, seq, batch, bpw):
    spec = load_model_spec(f"{model}@{bpw}")
    one = memory.kv_cache_bytes(spec, mode, 1)
    assert memory.kv_cache_bytes(spec, mode, seq, batch) == seq * batch * one
    assert memory.kv_cache_bytes_per_token(spec, mode) == one + memory.kv_staging_bytes(spec, mode, 1)
    half = spec.num_hidden_layers // 2
    assert memory.kv_cache_bytes(spec, mode, seq, batch, layers=half) + memory.kv_cache_bytes(
        spec, mode, seq, batch, layers=range(half, spec.num_hidden_layers)
    ) == memory.kv_cache_bytes(spec, mode, seq, batch)
    more_precise = exl2.CACHE_MODES[: exl2.CACHE_MODES.index(mode)]
    assert all(
        memory.kv_cache_bytes_per_token(spec, m) > memory.kv_cache_bytes_per_token(spec, mode)
        for m in more_precise
    )


@settings(max_examples=25, deadline=None)
@given(model=models, bpw=bpws, chunk=st.sampled_from([256, 512, 1024, 2048, 4096]), batch=st.integers(1, 4))
def test_module_costs_are_sane(model, bpw, chunk, batch):
    spec = load_model_spec(f"{model}@{bpw}")
    costs = memory.module_costs(spec, chunk, batch)
    assert costs[0].on_cpu and costs[-1].kind == "lm_head" and costs[-2].kind == "norm"
    assert all(c.weight_bytes > 0 and c.scratch_fixed_bytes >= 0 for c in costs)
    assert sum(c.has_cache for c in costs) == spec.num_hidden_layers
    # everything but the embedding (and a vision tower, not part of the text model) is on the GPU: weights
    # there = file bytes - embedding, except that exllamav2 counts hidden_size * 2 for each q/k head norm
    # whatever its tensor holds (headnorm.py weight_footprint)
    vision = sum(
        t.nbytes
        for t in spec.tensors
        if not t.name.startswith(spec.lm_prefix + "model.")
        and not t.name.startswith(spec.lm_prefix + "lm_head")
    )
    head_norms = [t for t in spec.tensors if t.name.endswith(("q_norm.weight", "k_norm.weight"))]
    adjust = sum(spec.hidden_size * 2 - t.nbytes for t in head_norms)
    embedding = spec.vocab_size * spec.hidden_size * 2
    assert memory.gpu_weight_bytes(costs) == spec.total_tensor_bytes - vision - embedding + adjust
    bigger = memory.module_costs(spec, chunk * 2, batch)
    assert memory.fixed_scratch_bytes(bigger) >= memory.fixed_scratch_bytes(costs)


@settings(max_examples=25, deadline=None)
@given(
    model=models,
    backend=st.sampled_from(exl2.BACKENDS),
    chunk=st.sampled_from([256, 1024, 2048]),
    seq=st.integers(256, 1 << 18),
)
def test_attention_transients_grow_with_context(model, backend, chunk, seq):
    spec = load_model_spec(model)
    a = memory.attention_transient_bytes(spec, backend, chunk, chunk * chunk, seq)
    b = memory.attention_transient_bytes(spec, backend, chunk, chunk * chunk, seq * 2)
    assert 0 < a <= b
    assert memory.attention_transient_bytes(spec, "flash_attn", chunk, chunk * chunk, seq) <= a
