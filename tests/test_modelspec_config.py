"""config.json reading: what exllamav2 0.3.2 reads, and never anything but a spec or a ModelSpecError."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exlx_autocfg.errors import ModelSpecError
from exlx_autocfg.model.config import parse_config
from exlx_autocfg.model.load import load_model_spec
from tests.support.model_dirs import make_model_dir, model_config

BASE = model_config("tiny-llama")
KEYS = [
    *sorted(BASE),
    "head_dim",
    "sliding_window",
    "rope_scaling",
    "attn_logit_softcapping",
    "num_local_experts",
    "quantization_config",
    "text_config",
    "max_sequence_length",
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**66), max_value=2**66)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from([*KEYS, "bits", "x"]), inner, max_size=3)
    ),
    max_leaves=8,
)
edits = st.lists(st.tuples(st.sampled_from(KEYS), st.one_of(st.just("<delete>"), json_values)), max_size=4)


def _apply(edit_list):
    config = json.loads(json.dumps(BASE))
    for key, value in edit_list:
        if value == "<delete>":
            config.pop(key, None)
        else:
            config[key] = value
    return config


@settings(max_examples=300, deadline=None)
@given(edits)
def test_parse_config_returns_sane_fields_or_one_error(edit_list):
    try:
        fields = parse_config(_apply(edit_list))
    except ModelSpecError as exc:
        assert "\n" not in exc.one_line()
        return
    for name in (
        "num_hidden_layers",
        "hidden_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
    ):
        assert type(fields[name]) is int and fields[name] > 0, name
    assert fields["num_attention_heads"] % fields["num_key_value_heads"] == 0


_DIR = make_model_dir(Path(tempfile.mkdtemp(prefix="exlx-cfg-")), "tiny-llama")


@settings(max_examples=120, deadline=None)
@given(edits)
def test_directory_with_mutated_config_never_tracebacks(edit_list):
    (_DIR / "config.json").write_text(json.dumps(_apply(edit_list)))
    try:
        spec = load_model_spec(_DIR)
    except ModelSpecError as exc:
        assert "\n" not in exc.one_line()
        return
    assert spec.num_hidden_layers == 2 and spec.hidden_size == 256  # the headers pin these down


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ({"n_layers": 2, "num_hidden_layers": None}, {"num_hidden_layers": 2}),  # exllamav2's fallbacks
        ({"text_config": {"hidden_size": 256}, "hidden_size": None}, {"hidden_size": 256}),
        (
            {"max_sequence_length": 999},
            {"max_position_embeddings": 999},
        ),  # read before max_position_embeddings
        ({"max_position_embeddings": None}, {"max_position_embeddings": 2048}),  # exllamav2 default
        ({"num_key_value_heads": None}, {"num_key_value_heads": 4}),  # defaults to num_attention_heads (MHA)
        ({"rope_theta": 500000}, {"rope_theta": 500000.0}),  # int accepted as float
        ({"vocab_size": 1024.0}, {"vocab_size": 1024}),  # integral float accepted as int
    ],
)
def test_key_fallbacks_follow_exllamav2(edit, expected):
    config = {**BASE, **{k: v for k, v in edit.items() if v is not None}}
    for k, v in edit.items():
        if v is None:
            config.pop(k)
    fields = parse_config(config)
    for k, v in expected.items():
        assert fields[k] == v and type(fields[k]) is type(v)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"architectures": ["LlamaForCausalLM", "MistralForCausalLM"]}, "exactly one architecture"),
        ({"num_attention_heads": 3}, "not a multiple"),
        ({"vocab_size": 1024.5}, "vocab_size must be int"),
        ({"hidden_size": True}, "hidden_size must be int"),
        ({"rope_theta": -1.0}, "rope_theta must be a positive"),
        ({"sliding_window": -5}, "sliding_window must not be negative"),
        ({"quantization_config": {"quant_method": "exl2", "bits": "4.0"}}, "bits must be float"),
        ({"rope_scaling": [1, 2]}, "rope_scaling must be dict"),
    ],
)
def test_bad_values_are_named(edit, message):
    with pytest.raises(ModelSpecError, match=message):
        parse_config({**BASE, **edit})
