"""The plan's gpu_split makes the real exllamav2 0.3.2 `set_device_map` place exactly the planned modules.

`set_device_map` runs on CPU torch up to the point where it creates CUDA streams for the device contexts
(the hardware boundary): the module placement is done by then, so we read it from the real modules.
"""

from __future__ import annotations

import re

import pytest

from exlx_autocfg.facts.what_if import what_if_facts
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.planner.core import plan
from tests.support.model_dirs import make_model_dir
from tests.support.standin import import_exllamav2


def _placement_by_exllamav2(exl2, model_dir, p) -> list[set]:
    config = exl2.ExLlamaV2Config(str(model_dir))
    config.max_seq_len = p.settings.max_seq_len
    config.max_input_len = p.settings.max_input_len
    config.max_attention_size = p.settings.max_attention_size
    config.max_batch_size = p.settings.max_batch_size
    model = exl2.ExLlamaV2(config)
    try:
        model.set_device_map(p.settings.gpu_split)
    except (RuntimeError, AssertionError) as exc:  # CUDA streams: no accelerator on this machine
        assert "accelerator" in str(exc) or "CUDA" in str(exc) or "cuda" in str(exc), exc
    devices: list[set] = [set() for _ in p.settings.gpu_split]
    for module in model.modules:
        if module.device_idx < 0:
            assert module.key == "model.embed_tokens"  # the embedding stays on the CPU
            continue
        m = re.match(r"model\.layers\.(\d+)", module.key)
        devices[module.device_idx].add(int(m.group(1)) if m else module.key)
    return devices


@pytest.mark.parametrize(
    ("arch", "bpw", "gpus", "context"),
    [
        ("llama3-70b", 4.0, ["3090x2", "4090"], 16384),
        ("yi-34b", 4.0, ["1080ti", "p40"], 4096),
        ("mixtral-8x7b", 3.5, ["3060x3"], 32768),
    ],
)
def test_gpu_split_reproduces_the_planned_placement(tmp_path, arch, bpw, gpus, context):
    exl2 = import_exllamav2()
    model_dir = make_model_dir(tmp_path, arch, bpw=bpw)
    p = plan(what_if_facts(gpus), load_model_spec(str(model_dir)), context=context)
    assert (
        p.settings.backend == "matmul"
    )  # like this machine's exllamav2 (no flash-attn/xformers): same temp_attn_size
    assert p.settings.gpu_split and len(p.settings.gpu_split) >= 2
    planned = [set(row.layers) for row in p.memory]
    planned[-1].add("lm_head")
    planned[-1].add("model.norm")
    assert _placement_by_exllamav2(exl2, model_dir, p) == planned
