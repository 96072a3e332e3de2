"""The random-weight test model: a checkpoint the real exllamav2 0.3.2 reads, and its float32 reference."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open

from tests.support.standin import import_exllamav2
from tools.testmodel import (
    SHAPES,
    TestModelShape,
    build_tokenizer_json,
    read_shape,
    reference_attention,
    reference_logits,
    write_test_model,
)

TINY = SHAPES["tiny"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_test_model(tmp_path_factory.mktemp("tm") / "tiny", "tiny", seed=3)


def test_checkpoint_has_every_tensor_with_its_shape(tiny_dir):
    with safe_open(str(tiny_dir / "model.safetensors"), "pt") as fh:
        shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
        dtypes = {fh.get_slice(k).get_dtype() for k in fh.keys()}  # noqa: SIM118
    assert shapes == TINY.tensor_shapes()
    assert dtypes == {"F16"}
    assert sum(torch.Size(s).numel() for s in shapes.values()) == TINY.parameter_count()
    config = json.loads((tiny_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # GQA
    assert read_shape(tiny_dir) == TINY


def test_named_sizes_are_what_the_issue_asks_for():
    assert 1.0e9 <= SHAPES["1b"].parameter_count() <= 1.2e9  # TinyLlama-1.1B geometry
    assert 2.9e9 <= SHAPES["3b"].parameter_count() <= 3.1e9
    assert SHAPES["tiny"].parameter_count() < 2e6  # CI: writes in milliseconds


def test_real_exllamav2_reads_config_and_tokenizer(tiny_dir):
    exllamav2 = import_exllamav2()
    config = exllamav2.ExLlamaV2Config(str(tiny_dir))
    config.prepare()
    assert config.architecture == "LlamaForCausalLM"
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (
        TINY.layers, TINY.attention_heads, TINY.kv_heads)
    assert config.head_dim == TINY.head_dim
    tokenizer = exllamav2.ExLlamaV2Tokenizer(config)
    assert tokenizer.get_vocab_size() == TINY.vocab_size == config.vocab_size
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)
    text = "Hello, world! 0123 ünïcödé"
    ids = tokenizer.encode(text)
    assert ids.shape[0] == 1 and int(ids.max()) < config.vocab_size
    assert tokenizer.decode(ids)[0] == text
    model = exllamav2.ExLlamaV2(config, lazy_load=True)  # the module graph builds from the headers
    assert sum(type(m).__name__ == "ExLlamaV2Attention" for m in model.modules) == TINY.layers


@settings(max_examples=40, deadline=None)
@given(st.text(max_size=60))
def test_tokenizer_round_trips_any_text(text):
    tok = _tokenizer_8k()
    ids = tok.encode(text, add_special_tokens=False).ids
    assert all(0 <= i < 8192 for i in ids)
    assert tok.decode(ids) == text


_TOK: dict[int, object] = {}


def _tokenizer_8k():
    from tokenizers import Tokenizer

    if 8192 not in _TOK:
        _TOK[8192] = Tokenizer.from_str(build_tokenizer_json(8192))
    return _TOK[8192]


def test_tokenizer_vocab_is_exact_and_bounded():
    from tokenizers import Tokenizer

    assert Tokenizer.from_str(build_tokenizer_json(259)).get_vocab_size() == 259
    with pytest.raises(ValueError, match="vocab_size"):
        build_tokenizer_json(100)


def test_failed_write_leaves_nothing_behind(tmp_path):
    bad = TestModelShape(layers=1, hidden_size=64, intermediate_size=128, attention_heads=4, kv_heads=2,
                         vocab_size=100)
    with pytest.raises(ValueError):
        write_test_model(tmp_path / "m", bad)
    assert list(tmp_path.iterdir()) == []
    write_test_model(tmp_path / "m", "tiny")
    with pytest.raises(FileExistsError):
        write_test_model(tmp_path / "m", "tiny")


def test_reference_attention_matches_torch_sdpa_in_float32():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 9, 8, 16, generator=gen)
    k = torch.randn(2, 9, 2, 16, generator=gen)
    v = torch.randn(2, 9, 2, 16, generator=gen)
    for causal in (True, False):
        kk, vv = (t.repeat_interleave(4, 2).transpose(1, 2) for t in (k, v))
        expected = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), kk, vv, is_causal=causal).transpose(1, 2).reshape(2, 9, 128)
        got = reference_attention(q, k, v, causal=causal)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_reference_logits_are_causal_only_when_asked(tiny_dir):
    a = torch.tensor([[1, 40, 41, 42, 43, 44]])
    b = a.clone()
    b[0, -1] = 300  # change only the last token
    ca, cb = reference_logits(tiny_dir, a), reference_logits(tiny_dir, b)
    assert ca.shape == (1, 6, TINY.vocab_size) and ca.dtype == torch.float32
    torch.testing.assert_close(ca[:, :-1], cb[:, :-1])  # earlier positions cannot see the change
    assert (ca[:, -1] - cb[:, -1]).abs().max() > 1e-3
    na, nb = reference_logits(tiny_dir, a, causal=False), reference_logits(tiny_dir, b, causal=False)
    assert (na[:, 0] - nb[:, 0]).abs().max() > 1e-3  # bidirectional: the first position sees it
