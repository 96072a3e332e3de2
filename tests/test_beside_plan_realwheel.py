"""Plans with a draft model, tensor parallelism and LoRA adapters, checked against the real exllamav2 0.3.2
wheel on CPU torch (only exllamav2_ext stood in), on sparse full-size model directories.

Expected values come from exllamav2 itself: the draft's modules' weight_footprint() and the scratch of the
device context set_device_map creates for it, its real cache class materialised on the meta device, the
real set_device_map placing the main model by the plan's gpu_split, the real TPContext splitting by the
plan's tensor-parallel gpu_split, and the real ExLlamaV2Lora's tensors. The planner's own arithmetic at
the next page (`device_totals_at`) says the context is the largest that fits WITH them in place.
"""

from __future__ import annotations

from typing import ClassVar

import pytest

from exlx_autocfg.errors import DraftRefusedError, LoraRefusedError, TensorParallelRefusedError
from exlx_autocfg.facts.what_if import what_if_facts
from exlx_autocfg.findings import codes_of
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.planner.core import device_totals_at, plan
from tests.support.adapters import make_adapter
from tests.support.model_dirs import make_model_dir
from tests.support.real_wheel import CACHE_CLASSES, real_cache_bytes

PAGE = 256


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("beside")
    return {
        "72b": make_model_dir(root, "qwen2.5-72b", bpw=4.25, name="Qwen2.5-72B-exl2"),
        "7b": make_model_dir(root, "qwen2.5-7b", bpw=4.0, name="Qwen2.5-7B-exl2"),
        "draft": make_model_dir(root, "qwen2.5-0.5b", bpw=4.0, name="Qwen2.5-0.5B-exl2"),
        "llama": make_model_dir(root, "llama3-8b", bpw=4.0, name="Llama-3-8B-exl2"),
    }


@pytest.fixture(scope="module")
def rig():
    return what_if_facts(["3090x2"], recommended=True)


@pytest.fixture(scope="module")
def torch_rig():
    """2x3090 with torch alone (matmul attention): what this process's exllamav2 import has, so the real
    set_device_map sizes attention as the plan does (temp_attn_size depends on has_flash_attn)."""
    return what_if_facts(["3090x2"])


class _Recorder:
    """Stands in for ExLlamaV2DeviceContext, whose constructor creates a CUDA stream (the hardware)."""

    made: ClassVar[dict[int, int]] = {}

    def __init__(self, model, idx, scratch_bytes, archparams=None):
        _Recorder.made[idx] = scratch_bytes


def _real_model(exl2, directory, *, seq, chunk):
    config = exl2.ExLlamaV2Config(str(directory))
    config.max_seq_len, config.max_input_len, config.max_attention_size = seq, chunk, chunk**2
    return exl2.ExLlamaV2(config)


# ------------------------------------------------------------------------------------------------- draft


@pytest.mark.parametrize("mode", ["FP16", "Q4"])
def test_the_draft_in_the_plan_is_what_exllamav2_allocates(exl2, dirs, torch_rig, monkeypatch, mode):
    import exllamav2.model as model_mod

    assert not exl2.attn.has_flash_attn and not exl2.attn.has_xformers
    p = plan(torch_rig, dirs["72b"], draft=dirs["draft"], cache=mode)
    s, d = p.settings, p.settings.draft
    assert d is not None and d.cache_mode == mode  # the draft's cache follows the model's
    assert d.path == str(dirs["draft"]) and d.name == "Qwen2.5-0.5B-exl2"
    assert len(p.gpus) == 2 and d.gpu_split is not None  # pinned by draft_gpu_split on a multi-GPU rig
    # The draft as TabbyAPI loads it with draft_gpu_split: the real set_device_map, its device contexts.
    _Recorder.made = {}
    monkeypatch.setattr(model_mod, "ExLlamaV2DeviceContext", _Recorder)
    draft = _real_model(exl2, dirs["draft"], seq=s.max_seq_len, chunk=s.max_input_len)
    draft.set_device_map(d.gpu_split)
    devices = {m.device_idx for m in draft.modules[1:]}
    assert devices == {0}  # a 0.5B draft sits on GPU 0
    parts = p.memory[0].parts
    assert parts["draft_weights"] == sum(m.weight_footprint() for m in draft.modules[1:])
    assert parts["draft_weights"] == p.draft["weights_bytes"]
    assert parts["draft_scratch"] == _Recorder.made[0] // 2 * 2
    states, staging = real_cache_bytes(exl2, draft, mode, seq=s.max_seq_len,
                                       layers=range(draft.config.num_hidden_layers))
    assert (parts["draft_cache"], parts["draft_staging"]) == (states, staging)
    assert "draft_weights" not in p.memory[1].parts
    # Everything on GPU 0 is in its row, and the row is within its budget.
    assert p.memory[0].total_bytes == sum(parts.values()) <= p.memory[0].budget_bytes
    assert p.memory[0].weights_bytes == parts["weights"] + parts["draft_weights"]


def test_the_draft_per_token_cache_has_the_models_meaning(exl2, dirs, rig):
    p = plan(rig, dirs["72b"], draft=dirs["draft"], cache="Q8")
    draft = _real_model(exl2, dirs["draft"], seq=4096, chunk=2048)
    for mode in CACHE_CLASSES:
        states, staging = real_cache_bytes(exl2, draft, mode, seq=4096,
                                           layers=range(draft.config.num_hidden_layers))
        assert p.draft["kv_cache_bytes_per_token"][mode] * 4096 == states + staging
    assert set(p.draft["kv_cache_bytes_per_token"]) == set(p.kv_cache_bytes_per_token)


def test_the_context_is_solved_with_the_draft_in_place(exl2, dirs, torch_rig, monkeypatch):
    """max_seq_len is the largest page at which the model fits around the draft: +256 does not fit with the
    draft, though it fits without it; the model's gpu_split still lands its layers where planned."""
    import exllamav2.model as model_mod

    rig = torch_rig
    spec = load_model_spec(dirs["72b"])
    alone = plan(rig, spec, cache="Q4", chunk_size=2048)
    p = plan(rig, spec, draft=dirs["draft"], cache="Q4", chunk_size=2048)
    assert p.settings.max_seq_len < alone.settings.max_seq_len
    request = {"cache": "Q4", "chunk_size": 2048, "draft": dirs["draft"]}
    totals = [m.total_bytes for m in p.memory]
    assert device_totals_at(rig, spec, p, p.settings.max_seq_len, **request) == totals
    assert device_totals_at(rig, spec, p, p.settings.max_seq_len + PAGE, **request) is None
    assert device_totals_at(rig, spec, p, p.settings.max_seq_len + PAGE, cache="Q4", chunk_size=2048)
    # Per mode, the table is solved with the draft too.
    assert all(p.max_seq_len_by_cache_mode[m] <= alone.max_seq_len_by_cache_mode[m] for m in CACHE_CLASSES)
    # The real set_device_map with the plan's gpu_split places the model's layers as planned.
    monkeypatch.setattr(model_mod, "ExLlamaV2DeviceContext", _Recorder)
    real = _real_model(exl2, dirs["72b"], seq=p.settings.max_seq_len, chunk=p.settings.max_input_len)
    real.set_device_map(p.settings.gpu_split)
    for row, gpu in zip(p.memory, range(2), strict=True):
        layers = sorted({m.layer_idx for m in real.modules[1:]
                         if hasattr(m, "layer_idx") and m.device_idx == gpu})
        assert layers == row.layers


def test_draft_cache_mode_policy_and_forcing(dirs, rig):
    free = plan(rig, dirs["72b"], draft=dirs["draft"])
    assert free.settings.draft.cache_mode == free.settings.cache_mode
    assert free.reason("draft_cache_mode").code == "draft.cache.follows_model"
    forced = plan(rig, dirs["72b"], draft=dirs["draft"], cache="Q4", draft_cache="FP16")
    assert forced.settings.draft.cache_mode == "FP16" and forced.settings.cache_mode == "Q4"
    assert forced.reason("draft_cache_mode").code == "draft.cache.forced"
    q4 = plan(rig, dirs["72b"], draft=dirs["draft"], cache="Q4")
    assert forced.settings.max_seq_len < q4.settings.max_seq_len  # an FP16 draft cache costs context
    assert forced.memory[0].parts["draft_cache"] > q4.memory[0].parts["draft_cache"]


def test_draft_rope_alpha_and_reasons(dirs, rig):
    p = plan(rig, dirs["72b"], draft=dirs["draft"], cache="Q4")
    trained = load_model_spec(dirs["draft"]).max_position_embeddings
    ratio = p.settings.max_seq_len / trained
    assert ratio > 1
    # exllamav2 examples/chat.py L126-134 @ v0.3.2 (the draft's own length), TabbyAPI's calculate_rope_alpha
    assert p.settings.draft.rope_alpha == round(-0.13436 + 0.80541 * ratio + 0.28833 * ratio**2, 4)
    assert p.reason("draft_rope_alpha").code == "draft.rope.alpha"
    short = plan(rig, dirs["72b"], draft=dirs["draft"], cache="Q4", context=16384)
    assert short.settings.draft.rope_alpha == 1.0
    assert short.reason("draft_rope_alpha").code == "draft.rope.native"
    assert p.reason("draft").code == "draft.placed"
    assert {"draft.tokenizer_unverified", "draft.eos_differs"} <= codes_of(p.warnings)


def test_one_gpu_draft_is_autosplit_on_it(dirs):
    one = what_if_facts(["3090"], recommended=True)
    p = plan(one, dirs["7b"], draft=dirs["draft"], context=32768)
    d = p.settings.draft
    assert d.autosplit and d.gpu_split is None and p.draft["load"] == "autosplit"
    assert sum(p.memory[0].parts[k] for k in p.memory[0].parts if k.startswith("draft_")) > 0


def test_drafts_that_cannot_draft_are_refused(dirs, rig):
    with pytest.raises(DraftRefusedError) as info:
        plan(rig, dirs["7b"], draft=dirs["72b"])
    assert "draft.larger_than_model" in codes_of(info.value.findings)
    with pytest.raises(DraftRefusedError) as info:
        plan(rig, dirs["draft"], draft=dirs["llama"])
    assert {"draft.larger_than_model", "draft.bos_mismatch"} <= codes_of(info.value.findings)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


# --------------------------------------------------------------------------------------- tensor parallel


@pytest.mark.parametrize(("mode", "draft"), [("Q4", False), ("FP16", True)])
def test_tensor_parallel_split_is_tpcontexts(exl2, dirs, rig, mode, draft):
    from exllamav2.tensor_p import TPContext

    p = plan(rig, dirs["72b"], tensor_parallel=True, cache=mode, draft=dirs["draft"] if draft else None)
    s = p.settings
    assert s.tensor_parallel and s.gpu_split is not None and len(s.gpu_split) == 2 and not s.autosplit
    tp_doc = p.tensor_parallel
    model = _real_model(exl2, dirs["72b"], seq=s.max_seq_len, chunk=s.max_input_len)
    real = TPContext(model, s.gpu_split, tp_doc["expect_cache_tokens"], getattr(exl2, CACHE_CLASSES[mode]))
    assert tp_doc["split"] == {"kv": [list(r) for r in real.kv_split], "q": [list(r) for r in real.q_split],
                               "intermediate": [list(r) for r in real.id_split],
                               "hidden": [list(r) for r in real.rs_split],
                               "vocab": [list(r) for r in real.vc_split]}
    assert tp_doc["expect_cache_tokens"] == s.max_seq_len * s.max_batch_size
    assert p.reason("tensor_parallel").code == "tp.worth_it"  # 72B needs both GPUs, the GPUs are alike
    for row in p.memory:
        assert row.total_bytes == sum(row.parts.values()) <= row.budget_bytes
    if draft:
        held = sum(v for k, v in p.memory[0].parts.items() if k.startswith("draft_"))
        gib = 1024**3
        assert s.gpu_split[0] == pytest.approx((p.memory[0].budget_bytes - held) / gib, abs=1e-4)
        assert s.gpu_split[1] == pytest.approx(p.memory[1].budget_bytes / gib, abs=1e-4)


def test_tensor_parallel_refusals(dirs, rig, tmp_path):
    with pytest.raises(TensorParallelRefusedError) as info:
        plan(what_if_facts(["3090"], recommended=True), dirs["72b"], tensor_parallel=True)
    assert codes_of(info.value.findings) == {"tp.single_gpu"}
    no_flash = what_if_facts(["3090x2"], ["flash-attn==none"], recommended=True)
    with pytest.raises(TensorParallelRefusedError) as info:
        plan(no_flash, dirs["72b"], tensor_parallel=True)
    assert codes_of(info.value.findings) & {"tp.attention.assertion", "tp.attention.sdpa_defect"}
    adapter = make_adapter(tmp_path, dirs["7b"], r=8, layers=2)
    with pytest.raises(TensorParallelRefusedError) as info:
        plan(rig, dirs["7b"], tensor_parallel=True, loras=[str(adapter)])
    assert "tp.lora_ignored" in codes_of(info.value.findings)


def test_tensor_parallel_on_a_model_that_fits_one_gpu_says_so(dirs, rig):
    p = plan(rig, dirs["7b"], tensor_parallel=True, context=32768)
    assert p.reason("tensor_parallel").code == "tp.not_worth.fits_one_gpu"
    assert p.tensor_parallel["worth_it"]["code"] == "tp.not_worth.fits_one_gpu"


# ------------------------------------------------------------------------------------------------- LoRA


def test_lora_bytes_sit_on_their_modules_gpus(exl2, dirs, torch_rig, tmp_path, monkeypatch):
    """A rank-16 adapter on q, v and down of every layer of the 72B: each GPU's `lora` part is the real "
      "ExLlamaV2Lora's
    fp16 tensors of the modules that the real set_device_map, given the plan's gpu_split, puts there."""
    import exllamav2.model as model_mod

    rig = torch_rig
    adapter = make_adapter(tmp_path, dirs["72b"], r=16, modules=("q_proj", "v_proj", "down_proj"))
    p = plan(rig, dirs["72b"], loras=[f"{adapter}:0.5"], cache="Q4")
    assert [(x.name, x.scale) for x in p.settings.loras] == [("adapter", 0.5)]
    monkeypatch.setattr(model_mod, "ExLlamaV2DeviceContext", _Recorder)
    model = _real_model(exl2, dirs["72b"], seq=p.settings.max_seq_len, chunk=p.settings.max_input_len)
    model.set_device_map(p.settings.gpu_split)
    # exllamav2 keys a layer's attention and MLP modules both "model.layers.L"; an adapter's keys name them
    part = {"ExLlamaV2Attention": "self_attn", "ExLlamaV2MLP": "mlp"}
    device_of = {f"{m.key}.{part[type(m).__name__]}": m.device_idx for m in model.modules
                 if type(m).__name__ in part}
    for module in model.modules:
        module.set_device_idx(-1)  # the CPU stands in for the GPUs while the adapter loads
    real = exl2.ExLlamaV2Lora.from_directory(model, str(adapter), 0.5)
    by_gpu: dict[int, int] = {}
    for key, tensor in real.tensors.items():
        owner = key.rsplit(".", 3)[0]  # model.layers.L.self_attn(.q_proj.lora_A.weight)
        gpu = device_of[owner]
        by_gpu[gpu] = by_gpu.get(gpu, 0) + tensor.numel() * tensor.element_size()
    assert {i: row.parts.get("lora", 0) for i, row in enumerate(p.memory)} == by_gpu
    assert p.reason("loras").code == "lora.placed"
    assert p.loras[0]["gpu_bytes"] == sum(by_gpu.values())
    alone = plan(rig, dirs["72b"], cache="Q4")
    assert p.settings.max_seq_len < alone.settings.max_seq_len


def test_adapters_for_another_model_are_refused(dirs, rig, tmp_path):
    adapter = make_adapter(tmp_path, dirs["llama"], r=8)
    with pytest.raises(LoraRefusedError) as info:
        plan(rig, dirs["7b"], loras=[str(adapter)])
    assert "lora.shape_mismatch" in codes_of(info.value.findings)
    assert "refusals in all" in str(info.value) and "\n" not in str(info.value)
