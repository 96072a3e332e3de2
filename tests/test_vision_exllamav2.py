"""planner/vision.py against the real exllamav2 0.3.2 vision tower (CPU torch, stand-in extension).

* The tower's own accounting (weight_footprint, scratch_space_fixed, scratch_space per module) on sparse
  full-size directories of every multimodal catalog model and fixture, and on tiny ones.
* Where the tower lands and what its device context builds: the real set_device_map and prepare_sincos.
* What a load leaves resident and the peak of embedding the largest image: the real module.load() and the
  real `process` on tiny towers of each type, measured with a TorchDispatchMode (tests/support/vision_run.py).
"""

from __future__ import annotations

import pytest
import torch

from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.planner import memory, vision
from tests.support import vision_run
from tests.support.model_dirs import make_model_dir
from tests.support.real_wheel import storage_bytes

FULL = ["gemma3-4b", "gemma3-27b", "pixtral-12b", "mistral-small-3.1-24b", "qwen2-vl-7b", "qwen2.5-vl-7b",
        "qwen2.5-vl-72b"]  # fmt: skip
TINY = ["tiny-gemma3", "tiny-pixtral", "tiny-mistral3", "tiny-qwen2-vl", "tiny-qwen2.5-vl"]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    return {name: make_model_dir(root, name, quant="exl2") for name in FULL + TINY}


def _tower(exl2, directory, **config):
    from exllamav2.vlm.vision_tower import ExLlamaV2VisionTower

    cfg = exl2.ExLlamaV2Config(str(directory))
    for key, value in config.items():
        setattr(cfg, key, value)
    return ExLlamaV2VisionTower(cfg)


def _key(tower, module) -> str:
    if type(module).__name__ == "ExLlamaV2Attention":
        return module.key + ".self_attn"
    if type(module).__name__ == "ExLlamaV2MLP" and module.archparams is tower.config.arch.vt:
        return module.key + ".mlp"
    return module.key


@pytest.mark.parametrize("name", FULL + TINY)
@pytest.mark.parametrize(("rows", "batch", "seq"), [(2048, 1, 8192), (512, 4, 3000)])
def test_module_costs_match_the_towers_own(exl2, dirs, name, rows, batch, seq):
    spec = load_model_spec(dirs[name])
    tower = _tower(exl2, dirs[name], max_input_len=rows, max_batch_size=batch, max_seq_len=seq)
    ours = vision.vision_module_costs(spec, rows, batch, seq)
    assert [c.key for c in ours] == [_key(tower, m) for m in tower.modules]
    for cost, module in zip(ours, tower.modules, strict=True):
        assert cost.weight_bytes == module.weight_footprint(), cost.key
        assert cost.scratch_fixed_bytes == module.scratch_space_fixed(), cost.key
        assert cost.scratch_bytes == module.scratch_space(), cost.key
    costs = vision.vision_costs(spec, max_input_len=rows, max_batch_size=batch, max_seq_len=seq)
    assert costs.footprint_bytes == sum(m.weight_footprint() for m in tower.modules)


@pytest.mark.parametrize("name", ["gemma3-27b", "mistral-small-3.1-24b", "qwen2.5-vl-7b", "tiny-pixtral"])
def test_the_tower_lands_on_device_0_and_rebuilds_the_text_rope_tables(exl2, dirs, monkeypatch, name):
    """load()/load_gen() without a gpu_split (TabbyAPI, the examples) = set_device_map([99999]): every
    module on device 0, one device context sized to the largest scratch_space_fixed, built with the TEXT
    model's archparams, so its prepare_sincos builds the text model's sin/cos tables a second time."""
    import exllamav2.device as device

    monkeypatch.setattr(device, "global_streams", {0: None})  # a stream for device 0 "exists" already
    spec = load_model_spec(dirs[name])
    seq = 5000
    tower = _tower(exl2, dirs[name], max_seq_len=seq)
    tower.set_device_map([99999])
    costs = vision.vision_costs(spec, max_seq_len=seq)
    assert {m.device_idx for m in tower.modules} == {costs.device} == {vision.VISION_DEVICE}
    (ctx,) = tower.device_context
    assert ctx.scratch_bytes == max(c.scratch_fixed_bytes for c in costs.modules)
    assert ctx.archparams is tower.config.arch.lm
    ctx.device_idx = -1  # build the tables on the CPU
    with torch.inference_mode():
        ctx.prepare(False)  # what the first attention call (forward_torch) does: no scratch tensor
    assert ctx.scratch is None
    assert storage_bytes(ctx.sin + ctx.cos) == costs.rope_bytes == memory.rope_bytes(spec, seq)


@pytest.mark.parametrize("name", TINY)
def test_weights_bytes_match_a_real_load(dirs, name):
    spec = load_model_spec(dirs[name])
    _, resident = vision_run.load_tower(str(dirs[name]))
    # On the CPU, load_weight_fused's q, k and v slices are views of three fp16 copies of the whole fused
    # qkv tensor (safe_move_tensor to the same device copies nothing); on a GPU each slice is copied alone.
    fused = sum(t.nbytes // 2 * 2 for t in spec.tensors if ".attn.qkv." in t.name)
    assert resident == vision.weights_bytes(spec) + 2 * fused


@pytest.mark.parametrize("name", TINY)
def test_image_transient_matches_the_real_process_on_the_matmul_path(dirs, name):
    """The peak of `process` on the largest image, matmul attention (SDPA off, as the planner runs 0.3.2),
    against our phase model without the input image (on a GPU it is a device copy freed after the
    convolution, on the CPU the caller's tensor). Qwen2.5's window bookkeeping adds a few int64 index
    tensors per patch on the CPU, which on a GPU stay on the CPU."""
    spec = load_model_spec(dirs[name])
    tower, _ = vision_run.load_tower(str(dirs[name]))
    peak, patches = vision_run.embed_peak(tower)
    assert patches == spec.vision.max_image_patches
    phases = vision.image_transient_phases(spec, "matmul")
    phases["conv"] -= vision.image_input_bytes(spec)
    ours = max(phases.values())
    assert ours <= peak <= ours + 8 * patches, (phases, peak)


def test_flash_path_is_far_smaller_than_matmul_at_qwen25_vl_max_pixels():
    spec = load_model_spec("qwen2.5-vl-7b")
    assert spec.vision.max_image_patches == 65536  # 3584 x 3584 pixels at max_pixels 12845056
    flash = vision.image_transient_bytes(spec, "flash_attn")
    matmul = vision.image_transient_bytes(spec, "matmul")
    assert flash < 4 * 1024**3 < 100 * 1024**3 < matmul  # (16, 65536, 65536) fp16 weights, twice
