"""Model directories and catalog references -> ModelSpec; bad input -> one ModelSpecError line."""

from __future__ import annotations

import json

import pytest

from exlx_autocfg.errors import ModelSpecError, OptionError
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.model.safetensors import write_header_only
from tests.support.model_dirs import make_model_dir


def test_directory_spec_reads_config_and_headers(tmp_path):
    d = make_model_dir(tmp_path, "nous-capybara-34b", bpw=4.0)
    spec = load_model_spec(d)
    assert (spec.architecture, spec.num_hidden_layers, spec.hidden_size) == ("LlamaForCausalLM", 60, 7168)
    assert (spec.num_attention_heads, spec.num_key_value_heads, spec.head_dim) == (56, 8, 128)
    assert spec.max_position_embeddings == 200000 and spec.vocab_size == 64000
    assert spec.quant_method == "exl2" and spec.bits_per_weight == 4.0 and spec.head_bits == 6
    assert spec.source == "directory" and spec.path == str(d)
    invperm = next(t for t in spec.tensors if t.name == "model.layers.0.self_attn.q_proj.q_invperm")
    assert (invperm.dtype, invperm.shape, invperm.nbytes, invperm.file) == (
        "I32",
        (7168,),
        28672,
        "output.safetensors",
    )
    summary = spec.summary()
    assert (summary.layers, summary.kv_heads, summary.head_dim, summary.source) == (60, 8, 128, "directory")
    assert summary.fingerprint == spec.fingerprint and len(spec.fingerprint) == 64


def test_explicit_head_dim_swa_and_softcap(tmp_path):
    spec = load_model_spec(make_model_dir(tmp_path, "gemma2-9b"))
    assert spec.head_dim == 256 != spec.hidden_size // spec.num_attention_heads
    assert spec.uses_swa and spec.sliding_window == 4096
    assert (spec.attn_logit_softcapping, spec.final_logit_softcapping) == (50.0, 30.0)
    assert spec.head_alt_key == "model.embed_tokens" and not spec.tie_word_embeddings  # the arch ties it
    mistral = load_model_spec(make_model_dir(tmp_path, "mistral-7b"))
    assert mistral.sliding_window == 4096 and not mistral.uses_swa  # exllamav2 ignores Mistral's window


def test_sharded_directory_with_index_equals_single_file(tmp_path):
    single = load_model_spec(make_model_dir(tmp_path, "llama2-7b", name="one"))
    sharded_dir = make_model_dir(tmp_path, "llama2-7b", name="three", shards=3)
    sharded = load_model_spec(sharded_dir)
    assert len({t.file for t in sharded.tensors}) == 3
    assert (sharded_dir / "model.safetensors.index.json").exists()
    strip = lambda s: sorted((t.name, t.dtype, t.shape, t.nbytes) for t in s.tensors)  # noqa: E731
    assert strip(single) == strip(sharded)
    assert single.fingerprint != sharded.fingerprint


@pytest.mark.parametrize(
    ("ref", "catalog_id", "bpw"),
    [
        ("yi-34b@4.0bpw", "yi-34b", 4.0),
        ("Nous-Capybara-34B", "nous-capybara-34b", 4.0),
        ("NousResearch/Nous-Capybara-34B@3.5", "nous-capybara-34b", 3.5),
        ("LLAMA3-8B@6bpw", "llama3-8b", 6.0),
        ("qwen2.5-72b", "qwen2.5-72b", 4.0),
        ("phi-3-mini@fp16", "phi3-mini", None),
    ],
)
def test_catalog_references(ref, catalog_id, bpw):
    spec = load_model_spec(ref)
    assert spec.catalog_id == catalog_id and spec.bits_per_weight == bpw
    assert spec.quant_method == ("exl2" if bpw else None)


def test_bpw_keyword_applies_when_the_reference_has_none():
    assert load_model_spec("llama3-8b", bpw=3.0).bits_per_weight == 3.0
    assert load_model_spec("llama3-8b@5.0", bpw=5.0).bits_per_weight == 5.0
    # Two different answers are refused, not resolved silently in favour of one (issue 14).
    with pytest.raises(OptionError, match=r"bpw=3\.0: conflicts with the bits in the reference"):
        load_model_spec("llama3-8b@5.0", bpw=3.0)


def test_weights_grow_with_bpw_and_match_known_sizes():
    sizes = {b: load_model_spec(f"llama3-8b@{b}").total_tensor_bytes for b in (3.0, 4.0, 5.0, 6.0, 8.0)}
    assert sorted(sizes.values()) == list(sizes.values())
    # decoder 6.98e9 weights at 4.0 bits + 1.05 GB fp16 embedding + 6.3-bit head: ~4.97 GB (turboderp's
    # Llama-3-8B-exl2 4.0bpw is ~5.0 GB)
    assert 4.8e9 < sizes[4.0] < 5.1e9


def _expect(ref, *fragments):
    with pytest.raises(ModelSpecError) as err:
        load_model_spec(ref)
    line = err.value.one_line()
    assert "\n" not in line
    for fragment in fragments:
        assert fragment in line, line
    return line


def test_unknown_catalog_name_and_missing_directory(tmp_path):
    _expect("gpt-5@4.0", "unknown model 'gpt-5@4.0'", "yi-34b")
    _expect(str(tmp_path / "nowhere"), "nowhere: no such directory")
    (tmp_path / "file.txt").write_text("x")
    _expect(str(tmp_path / "file.txt"), "not a model directory", "config.json")
    _expect("yi-34b@1.0", "between 2.0 and 8.0")


def test_directory_errors_name_the_file_and_the_problem(tmp_path):
    d = make_model_dir(tmp_path, "tiny-llama")
    config = d / "config.json"
    good = config.read_text()

    config.unlink()
    _expect(d, str(config), "missing")
    config.write_text('{"architectures": ["LlamaForCausalLM"], ')
    _expect(d, str(config), "not valid JSON")
    config.write_text(json.dumps({**json.loads(good), "architectures": ["MambaForCausalLM"]}))
    _expect(d, "MambaForCausalLM is not one exllamav2 0.3.2 recognises", "as LlamaForCausalLM")
    cfg = json.loads(good)
    del cfg["hidden_size"]
    config.write_text(json.dumps(cfg))
    _expect(d, "missing hidden_size")
    config.write_text(json.dumps({**json.loads(good), "num_key_value_heads": "eight"}))
    _expect(d, "num_key_value_heads must be int")
    config.write_text(json.dumps({**json.loads(good), "num_hidden_layers": -2}))
    _expect(d, "num_hidden_layers must be positive")
    config.write_text(json.dumps({**json.loads(good), "num_hidden_layers": 3}))
    _expect(d, "tensor model.layers.2.input_layernorm missing", "3 layers")
    config.write_text(json.dumps({**json.loads(good), "hidden_size": 512}))
    _expect(d, "model.embed_tokens.weight shape", "from config.json")
    config.write_text(good)
    (d / "output.safetensors").unlink()
    _expect(d, "no .safetensors files")


def test_truncated_shard_is_named(tmp_path):
    d = make_model_dir(tmp_path, "tiny-llama", shards=2)
    shard = sorted(d.glob("*.safetensors"))[1]
    with shard.open("r+b") as fh:
        fh.truncate(shard.stat().st_size - 1)
    _expect(d, str(shard), "file truncated")


def test_index_that_disagrees_with_the_files(tmp_path):
    d = make_model_dir(tmp_path, "tiny-llama", shards=2)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "output-00001-of-00002.safetensors"
    index["weight_map"]["model.norm.weight"] = "missing.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    _expect(d, "model.safetensors.index.json", "model.norm.weight")


def test_duplicate_tensor_across_files(tmp_path):
    d = make_model_dir(tmp_path, "tiny-llama")
    write_header_only(d / "extra.safetensors", [("model.norm.weight", "F16", (256,))])
    _expect(d, "model.norm.weight", "also in")
