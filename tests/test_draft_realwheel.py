"""A draft model against the real exllamav2 0.3.2 wheel on CPU torch (only exllamav2_ext stood in).

The manual placement (TabbyAPI's draft_gpu_split) is the real `set_device_map`, with the device context
it creates per GPU (a CUDA stream: the hardware boundary) replaced by a recorder of its scratch size. The
cache is the real cache class, materialised on the meta device per GPU. The pair rules are the real
`ExLlamaV2DynamicGenerator`'s asserts, which run on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest

from exlx_autocfg.errors import DoesNotFitError
from exlx_autocfg.findings import codes_of
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.model.tokenizer import from_config, read_tokenizer_info
from exlx_autocfg.planner import draft as dr
from exlx_autocfg.planner import memory
from tests.support.model_dirs import make_model_dir, model_config
from tests.support.real_wheel import CACHE_CLASSES, real_cache_bytes

MAIN_SEQ = 32768  # the draft runs at the model's max_seq_len


@pytest.fixture(scope="module")
def draft_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("draft"), "qwen2.5-0.5b", bpw=4.0)


def _model(exl2, directory, *, seq=MAIN_SEQ, chunk=2048):
    config = exl2.ExLlamaV2Config(str(directory))
    config.max_seq_len, config.max_input_len, config.max_attention_size = seq, chunk, chunk**2
    return exl2.ExLlamaV2(config)


class _Recorder:
    """Stands in for ExLlamaV2DeviceContext, whose constructor creates a CUDA stream."""

    made: ClassVar[list[tuple[int, int]]] = []

    def __init__(self, model, idx, scratch_bytes, archparams=None):
        _Recorder.made.append((idx, scratch_bytes))


def _real_manual_placement(exl2, monkeypatch, directory, split):
    import exllamav2.model as model_mod

    _Recorder.made = []
    monkeypatch.setattr(model_mod, "ExLlamaV2DeviceContext", _Recorder)
    model = _model(exl2, directory)
    model.set_device_map(split)
    devices = [m.device_idx for m in model.modules[1:]]
    return model, devices, dict(_Recorder.made)


@pytest.mark.parametrize(
    ("split", "gpus_used"), [([24.0], 1), ([0.4, 0.4, 24.0], 3), ([0.45, 24.0], 2), ([0.5, 0.0, 24.0], 2)]
)
def test_draft_gpu_split_placement_is_set_device_maps(exl2, monkeypatch, draft_dir, split, gpus_used):
    spec = load_model_spec(draft_dir)
    model, real, scratch = _real_manual_placement(exl2, monkeypatch, draft_dir, split)
    ours = dr.set_device_map_placement(spec, split, max_seq_len=MAIN_SEQ, max_input_len=2048)
    assert ours == real
    assert len(set(real)) == gpus_used
    plan = dr.place_draft_gpu_split(
        spec, split, cache_mode="Q4", max_seq_len=MAIN_SEQ, chunk_size=2048, backend="matmul"
    )
    # set_device_map creates a context for every device it placed a module on, sized by their fixed scratch
    assert {d.position: d.scratch_bytes for d in plan.devices} == {
        i: s // 2 * 2 for i, s in scratch.items() if s
    }
    for d in plan.devices:
        mods = [m for m, i in zip(model.modules[1:], real, strict=True) if i == d.position]
        assert d.weights_bytes == sum(m.weight_footprint() for m in mods)


def test_too_small_a_draft_gpu_split_is_refused_like_exllamav2(exl2, monkeypatch, draft_dir):
    spec = load_model_spec(draft_dir)
    with pytest.raises(AssertionError, match="Insufficient space in device allocation"):
        _real_manual_placement(exl2, monkeypatch, draft_dir, [0.1, 0.1])
    with pytest.raises(DoesNotFitError, match="Insufficient space"):
        dr.set_device_map_placement(spec, [0.1, 0.1], max_seq_len=MAIN_SEQ, max_input_len=2048)


@pytest.mark.parametrize("mode", list(CACHE_CLASSES))
def test_draft_cache_per_gpu_is_exllamav2s(exl2, monkeypatch, draft_dir, mode):
    """The draft cache at the model's max_seq_len, per GPU of the draft's layers, as the real cache class
    allocates it (update_cache_tensors: the layers' K/V and scales, plus touch_device's FP16 pair)."""
    spec = load_model_spec(draft_dir)
    split = [0.45, 24.0]  # layers 0-13 on GPU 0, the rest and the head on GPU 1
    model, real, _ = _real_manual_placement(exl2, monkeypatch, draft_dir, split)
    plan = dr.place_draft_gpu_split(
        spec, split, cache_mode=mode, max_seq_len=MAIN_SEQ, chunk_size=2048, backend="matmul"
    )
    by_layer = {
        m.layer_idx: i
        for m, i in zip(model.modules[1:], real, strict=True)
        if hasattr(m, "layer_idx") and type(m).__name__ == "ExLlamaV2Attention"
    }
    for d in plan.devices:
        states, staging = real_cache_bytes(exl2, model, mode, seq=MAIN_SEQ,
                                           layers=[layer for layer, i in by_layer.items() if i == d.position])
        assert (d.cache_bytes, d.staging_bytes) == (states, staging), d.position
    assert len(plan.devices) == 2
    assert sum(d.cache_bytes for d in plan.devices) == memory.kv_cache_bytes(spec, mode, MAIN_SEQ)


def test_draft_weights_and_per_token_cache(exl2, draft_dir):
    spec = load_model_spec(draft_dir)
    model = _model(exl2, draft_dir)
    assert dr.draft_weights_bytes(spec) == sum(m.weight_footprint() for m in model.modules[1:])
    for mode in CACHE_CLASSES:
        states, staging = real_cache_bytes(exl2, model, mode, seq=1024, layers=range(spec.num_hidden_layers))
        assert states + staging == 1024 * dr.draft_kv_cache_bytes_per_token(spec)[mode]


def test_autosplit_puts_a_small_draft_on_gpu_0_and_spills_at_the_boundary(exl2, draft_dir):
    """load_autosplit_gen's rule, with the bytes taken from the real modules and cache: a GPU is left for
    the next when the module, its cache layer, the first-touch tensors, one forward and the load-time
    reserves no longer fit in what is free."""
    spec = load_model_spec(draft_dir)
    model = _model(exl2, draft_dir)
    plan = dr.place_draft_autosplit(
        spec,
        [24 * 2**30, 24 * 2**30],
        cache_mode="Q4",
        max_seq_len=MAIN_SEQ,
        chunk_size=2048,
        backend="matmul",
    )
    assert [d.position for d in plan.devices] == [0]
    assert plan.devices[0].layers == tuple(range(spec.num_hidden_layers))
    assert plan.devices[0].scratch_bytes == max(m.scratch_space_fixed() for m in model.modules) // 2 * 2
    # GPU 0 with room for the first-touch tensors, the load reserves and the first attention module only
    d0 = plan.devices[0]
    per_layer = memory.kv_cache_bytes(spec, "Q4", MAIN_SEQ, layers=1)
    transient = d0.transient_bytes
    first = model.modules[1].weight_footprint()
    free0 = (
        d0.scratch_bytes
        + d0.rope_bytes
        + d0.staging_bytes
        + first
        + per_layer
        + transient
        + 96 * 2**20
        + 256 * 2**20
    )
    spilled = dr.place_draft_autosplit(
        spec, [free0, 24 * 2**30], cache_mode="Q4", max_seq_len=MAIN_SEQ, chunk_size=2048, backend="matmul"
    )
    assert [(d.position, d.layers) for d in spilled.devices] == [
        (0, (0,)),
        (1, tuple(range(spec.num_hidden_layers))),
    ]
    assert spilled.devices[0].persistent_bytes + transient + 352 * 2**20 == free0
    with pytest.raises(DoesNotFitError):
        dr.place_draft_autosplit(
            spec, [2**20, 2**20], cache_mode="Q4", max_seq_len=MAIN_SEQ, chunk_size=2048, backend="matmul"
        )


# ------------------------------------------------------------------------------------------- the pair


@pytest.fixture(scope="module")
def pair_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    return make_model_dir(root, "tiny-llama", name="main"), make_model_dir(
        root, "tiny-llama", name="draft", num_hidden_layers=1
    )


@pytest.mark.parametrize("cache_size", [4096, 4097, 4098, 4352])
@pytest.mark.parametrize(
    ("mode", "draft_mode"), [("FP16", "Q4"), ("Q4", "FP16"), ("Q8", "Q6"), ("FP16", "FP16")]
)
def test_dynamic_generator_asserts_what_the_judge_refuses(exl2, pair_dirs, cache_size, mode, draft_mode):
    from exllamav2.generator import ExLlamaV2DynamicGenerator

    main_dir, draft_dir = pair_dirs
    main, draft = _model(exl2, main_dir, seq=cache_size), _model(exl2, draft_dir, seq=cache_size)
    cache = getattr(exl2, CACHE_CLASSES[mode])(main, max_seq_len=cache_size, lazy=True)
    dcache = getattr(exl2, CACHE_CLASSES[draft_mode])(draft, max_seq_len=cache_size, lazy=True)
    findings = dr.judge_draft(
        load_model_spec(main_dir),
        load_model_spec(draft_dir),
        cache_size=cache_size,
        cache_mode=mode,
        draft_cache_mode=draft_mode,
    )
    refused = "draft.cache_length_mismatch" in codes_of(findings)
    try:
        ExLlamaV2DynamicGenerator(
            model=main, cache=cache, tokenizer=None, draft_model=draft, draft_cache=dcache, paged=False
        )
        raised = None
    except AssertionError as exc:
        raised = str(exc)
    assert (raised == "Cache and draft cache must be same dimensions") is refused, raised
    if not refused and cache_size % 256 == 0:
        assert raised is None


def test_the_draft_must_run_at_the_models_max_seq_len(exl2, pair_dirs):
    """What TabbyAPI does (draft_config.max_seq_len = the model's) and the loader must do: the generator
    asserts the draft's max_seq_len >= the model's; the tiny draft's own default (2048) is less."""
    from exllamav2.generator import ExLlamaV2DynamicGenerator

    main_dir, draft_dir = pair_dirs
    main = _model(exl2, main_dir, seq=4096)
    config = exl2.ExLlamaV2Config(str(draft_dir))  # its own max_position_embeddings
    draft = exl2.ExLlamaV2(config)
    cache = exl2.ExLlamaV2Cache(main, max_seq_len=4096, lazy=True)
    dcache = exl2.ExLlamaV2Cache(draft, max_seq_len=4096, lazy=True)
    with pytest.raises(AssertionError, match="Draft model seq len must be >= model seq len"):
        ExLlamaV2DynamicGenerator(
            model=main, cache=cache, tokenizer=None, draft_model=draft, draft_cache=dcache, paged=False
        )
    plan = dr.place_draft_autosplit(
        load_model_spec(draft_dir),
        [2**33],
        cache_mode="FP16",
        max_seq_len=4096,
        chunk_size=2048,
        backend="matmul",
    )
    assert plan.max_seq_len == 4096  # what the loader sets on the draft's config


def test_qwen_72b_with_its_0_5b_draft_is_a_good_pair():
    model, draft = load_model_spec("qwen2.5-72b@4.25bpw"), load_model_spec("qwen2.5-0.5b@4.0bpw")
    f = dr.judge_draft(
        model,
        draft,
        cache_size=32768,
        cache_mode="Q4",
        draft_cache_mode="Q4",
        model_tokenizer=from_config(model_config("qwen2.5-72b")),
        draft_tokenizer=from_config(model_config("qwen2.5-0.5b")),
    )
    assert not [x for x in f if dr.is_refusal(x)]
    assert codes_of(f) == {
        "draft.tokenizer_unverified",
        "draft.eos_differs",
    }  # base 72B eos 151643, Instruct 151645
    long = dr.judge_draft(model, draft, cache_size=65536, cache_mode="Q4", draft_cache_mode="Q4")
    beyond = next(x for x in long if x.code == "draft.context_beyond_trained")
    assert beyond.evidence["draft_rope_alpha"] == round(
        -0.13436 + 0.80541 * 2 + 0.28833 * 4, 4
    )  # TabbyAPI's formula


def test_refusals_larger_draft_and_other_vocabulary():
    small, big = load_model_spec("qwen2.5-0.5b@4.0bpw"), load_model_spec("qwen2.5-7b@4.0bpw")
    f = dr.judge_draft(small, big, cache_size=4096, cache_mode="FP16", draft_cache_mode="FP16")
    assert "draft.larger_than_model" in codes_of(f) and "draft.vocab_larger" in codes_of(f)  # 152064 > 151936
    llama2, llama3 = load_model_spec("llama2-70b@4.0bpw"), load_model_spec("llama3-8b@4.0bpw")
    f = dr.judge_draft(
        llama2,
        llama3,
        cache_size=4096,
        cache_mode="FP16",
        draft_cache_mode="FP16",
        model_tokenizer=from_config(model_config("llama2-70b")),
        draft_tokenizer=from_config(model_config("llama3-8b")),
    )
    assert {"draft.vocab_larger", "draft.bos_mismatch"} <= codes_of(f)
    assert all(x.message for x in f)


def _tokenizer_dir(root: Path, name: str, vocab: dict[str, int], added: list[tuple[int, str]], bos: int = 1):
    d = root / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"bos_token_id": bos, "eos_token_id": 2}))
    doc = {
        "model": {"type": "BPE", "vocab": vocab, "merges": ["a b"]},
        "added_tokens": [{"id": i, "content": c, "special": True} for i, c in added],
    }
    (d / "tokenizer.json").write_text(json.dumps(doc))
    return d


def test_tokenizer_files_decide(tmp_path, pair_dirs):
    vocab = {"<s>": 1, "</s>": 2, "a": 3, "b": 4}
    same = read_tokenizer_info(_tokenizer_dir(tmp_path, "m", vocab, [(5, "<|im_end|>")]))
    twin = read_tokenizer_info(
        _tokenizer_dir(tmp_path, "d", dict(reversed(list(vocab.items()))), [(5, "<|im_end|>")], bos=7)
    )
    other = read_tokenizer_info(_tokenizer_dir(tmp_path, "o", {**vocab, "c": 3}, []))
    clash = read_tokenizer_info(_tokenizer_dir(tmp_path, "c", vocab, [(5, "<|eot|>")]))
    main, draft = (load_model_spec(d) for d in pair_dirs)

    def codes(mt, dt):
        return codes_of(
            dr.judge_draft(
                main,
                draft,
                cache_size=2048,
                cache_mode="FP16",
                draft_cache_mode="FP16",
                model_tokenizer=mt,
                draft_tokenizer=dt,
            )
        )

    assert (
        codes(same, twin) == set()
    )  # same map and added tokens; a BOS quirk in config.json is not a refusal
    assert "draft.tokenizer_mismatch" in codes(same, other)
    assert "draft.tokenizer_mismatch" in codes(same, clash)
    assert "draft.tokenizer_unverified" in codes(same, from_config({"bos_token_id": 1}))
    # the same merges written by tokenizers >= 0.20 (pairs) and older releases ("a b") are one tokenizer
    pairs = _tokenizer_dir(tmp_path, "p", vocab, [(5, "<|im_end|>")])
    doc = json.loads((pairs / "tokenizer.json").read_text())
    doc["model"]["merges"] = [["a", "b"]]
    (pairs / "tokenizer.json").write_text(json.dumps(doc))
    assert codes(same, read_tokenizer_info(pairs)) == set()


def test_special_ids_and_sentencepiece(tmp_path):
    d = tmp_path / "spm"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"text_config": {"bos_token_id": 2}, "eos_token_id": 1}))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 107]}))
    (d / "tokenizer.model").write_bytes(b"\x0a\x05hello")
    info = read_tokenizer_info(d)
    assert (info.source, info.bos_token_id, info.eos_token_ids) == ("tokenizer.model", 2, (1, 107))
    assert info.comparable and info.vocab_entries is None
