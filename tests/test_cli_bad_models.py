"""`exlx-autocfg plan DIR` on model directories exllamav2 0.3.2 would refuse or load wrongly: one line on
stderr naming the file and the key, exit 2, nothing on stdout. Each case is checked against what the real
wheel does with the same directory (it raises, or loads the wrong thing)."""

from __future__ import annotations

import json

import pytest

from exlx_autocfg.cli import run
from tests.support.model_dirs import make_model_dir, model_preprocessor


def _plan(capsys, directory) -> tuple[int, str, str]:
    code = run(["plan", str(directory), "--gpu", "3090"])
    out, err = capsys.readouterr()
    return code, out, err


def _expect_refusal(capsys, directory, *needles: str) -> str:
    code, out, err = _plan(capsys, directory)
    assert code == 2 and out == ""
    line = err.strip()
    assert "\n" not in line and line.startswith("exlx-autocfg: error: "), err
    for needle in needles:
        assert needle in line, line
    return line


def _real_refuses(exl2, directory) -> bool:
    try:
        exl2.ExLlamaV2Config(str(directory))
    except (AssertionError, ValueError, KeyError, TypeError, AttributeError):
        return True
    return False


def test_multimodal_model_without_its_preprocessor(capsys, exl2, tmp_path):
    d = make_model_dir(tmp_path, "gemma3-4b", preprocessor=None)
    assert _real_refuses(exl2, d)  # config.py L497: assert os.path.exists(preprocessor_config.json)
    _expect_refusal(capsys, d, "preprocessor_config.json: missing", "siglip_vision_model")


@pytest.mark.parametrize(
    ("model", "wrong"),
    [("gemma3-4b", "SiglipImageProcessor"), ("qwen2.5-vl-7b", "Qwen2VLImageProcessorFast"),
     ("mistral-small-3.1-24b", "LlavaImageProcessor")],
)  # fmt: skip
def test_preprocessor_of_the_wrong_processor_type(capsys, exl2, tmp_path, model, wrong):
    prep = model_preprocessor(model)
    prep["image_processor_type"] = wrong
    d = make_model_dir(tmp_path, model)
    (d / "preprocessor_config.json").write_text(json.dumps(prep))
    assert _real_refuses(exl2, d)  # config.py asserts the image_processor_type per tower
    line = _expect_refusal(capsys, d, "preprocessor_config.json", "image_processor_type", wrong)
    assert "needs" in line


def test_preprocessor_missing_a_key_exllamav2_requires(capsys, exl2, tmp_path):
    prep = {k: v for k, v in model_preprocessor("qwen2.5-vl-7b").items() if k != "max_pixels"}
    d = make_model_dir(tmp_path, "qwen2.5-vl-7b")
    (d / "preprocessor_config.json").write_text(json.dumps(prep))
    assert _real_refuses(exl2, d)
    _expect_refusal(capsys, d, "preprocessor_config.json: missing max_pixels")


@pytest.mark.parametrize(("tensors", "config"), [(8, 4), (4, 8)])
def test_moe_expert_count_that_disagrees_with_the_tensors(capsys, exl2, tmp_path, tensors, config):
    d = make_model_dir(tmp_path, "tiny-mixtral", name=f"moe-{tensors}-{config}", num_local_experts=tensors)
    cfg = json.loads((d / "config.json").read_text())
    cfg["num_local_experts"] = config
    (d / "config.json").write_text(json.dumps(cfg))
    # fewer tensors than config.json says: check_keys fails; more: exllamav2 loads silently, ignoring some
    assert _real_refuses(exl2, d) == (tensors < config)
    if tensors > config:
        line = _expect_refusal(capsys, d, "config.json", f"is {config}", f"holds {tensors} experts")
    else:
        line = _expect_refusal(capsys, d, f"experts.{tensors}.w1 missing", f"{config} experts")
    assert str(d) in line


def test_text_config_missing_a_key_without_default(capsys, exl2, tmp_path):
    d = make_model_dir(tmp_path, "mistral-small-3.1-24b", vision=False)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["text_config"]["hidden_size"]
    (d / "config.json").write_text(json.dumps(cfg))
    assert _real_refuses(exl2, d)  # read(): "Missing any of the following keys"
    _expect_refusal(capsys, d, "config.json: missing hidden_size", "text_config.hidden_size")


def test_text_config_missing_a_key_gemma3_defaults(capsys, exl2, tmp_path):
    """Gemma 3 has exllamav2 defaults for heads / head_dim / vocab: without them in text_config the model
    still loads, with the defaults (architecture.py L604-611), and so do we."""
    d = make_model_dir(tmp_path, "gemma3-4b")
    code, _, err = _plan(capsys, d)
    assert code == 0, err
    cfg = exl2.ExLlamaV2Config(str(d))
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (8, 4, 256)


def test_rope_scaling_with_both_type_and_rope_type(capsys, exl2, tmp_path):
    """Re-saved Qwen2.5-VL configs carry {"type": "default", "rope_type": "default", ...}: exllamav2 0.3.2
    asserts on that (config.py L387)."""
    d = make_model_dir(tmp_path, "tiny-qwen2.5-vl")
    cfg = json.loads((d / "config.json").read_text())
    cfg["rope_scaling"] = {"type": "default", "rope_type": "default", "mrope_section": [8, 12, 12]}
    (d / "config.json").write_text(json.dumps(cfg))
    assert _real_refuses(exl2, d)
    _expect_refusal(capsys, d, "rope_scaling has both 'type'", "'rope_type'")


def test_an_architecture_exllamav2_would_load_as_llama(capsys, exl2, tmp_path):
    d = make_model_dir(tmp_path, "gemma3-4b", vision=False)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["Gemma3ForCausalLM"]  # the text-only 1B's architecture string
    (d / "config.json").write_text(json.dumps(cfg))
    _expect_refusal(capsys, d, "Gemma3ForCausalLM is not one exllamav2 0.3.2 recognises", "LlamaForCausalLM")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("num_hidden_layers", 2**40, "says num_hidden_layers 1099511627776, but the safetensors files hold"),
        ("num_local_experts", 2**40, "says 1099511627776 experts, but the safetensors files hold"),
    ],
)
def test_absurd_counts_are_refused_at_once(tmp_path, capsys, key, value, message):
    """A layer or expert count the headers cannot hold is refused before anything loops over it (a
    hypothesis run found `num_hidden_layers: 2**40` kept check_keys busy for good)."""
    directory = make_model_dir(tmp_path, "tiny-mixtral" if "experts" in key else "tiny-llama")
    config = json.loads((directory / "config.json").read_text())
    config[key] = value  # after the tensors were written for the real count
    (directory / "config.json").write_text(json.dumps(config))
    assert run(["plan", str(directory), "--gpu", "3090"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
