"""Per-architecture comparison: what `plan` counts against what exllamav2 0.3.2 itself counts.

    python -m tools.arch_table

For one full-size sparse model directory per recognised architecture (the ones tests/test_memory_exllamav2.py
uses), prints: the GPU weights (sum of weight_footprint() over the modules placed on GPUs), the fixed
scratch (max scratch_space_fixed()), the KV bytes per token of each cache mode (the real cache classes,
allocated on the meta device) and, for the multimodal ones, the vision tower's resident weights (the real
tower loaded on the CPU). "ours" is exlx-autocfg's memory model on the same directory; "=" marks equality.
Dev tool (CPU torch, stand-in extension); not shipped in the package.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exlx_autocfg.exl2 import CACHE_MODES  # noqa: E402
from exlx_autocfg.model.load import load_model_spec  # noqa: E402
from exlx_autocfg.planner import memory  # noqa: E402
from exlx_autocfg.planner import vision as vis  # noqa: E402
from tests.support import vision_run  # noqa: E402
from tests.support.arch_models import ARCHITECTURES  # noqa: E402
from tests.support.model_dirs import make_model_dir  # noqa: E402
from tests.support.real_wheel import real_cache_bytes  # noqa: E402
from tests.support.standin import import_exllamav2  # noqa: E402


def _real_per_token(exl2: object, model: object, layers: int, mode: str) -> int:
    return sum(real_cache_bytes(exl2, model, mode, seq=1, layers=range(layers)))


def _mark(ours: int, real: int) -> str:
    return "=" if ours == real else f"{ours - real:+,}"


def main() -> None:
    exl2 = import_exllamav2()
    rows = []
    with tempfile.TemporaryDirectory(prefix="exlx-arch-") as root:
        for arch, (model_id, overrides) in sorted(ARCHITECTURES.items()):
            directory = make_model_dir(Path(root), model_id, quant="exl2", bpw=4.0, **overrides)
            spec = load_model_spec(directory)
            config = exl2.ExLlamaV2Config(str(directory))
            model = exl2.ExLlamaV2(config)
            costs = memory.module_costs(spec)
            real_weights = sum(m.weight_footprint() for m in model.modules
                               if type(m).__name__ != "ExLlamaV2Embedding")
            ours_weights = memory.gpu_weight_bytes(costs)
            real_scratch = max(m.scratch_space_fixed() for m in model.modules) // 2 * 2
            ours_scratch = memory.fixed_scratch_bytes(costs)
            kv = []
            for mode in CACHE_MODES:
                real = _real_per_token(exl2, model, spec.num_hidden_layers, mode)
                ours = memory.kv_cache_bytes_per_token(spec, mode)
                kv.append(f"{real:,}{'' if ours == real else ' (' + _mark(ours, real) + ')'}")
            vision = "-"
            if spec.vision is not None and vis.vision_tensors_present(spec):
                _, resident = vision_run.load_tower(str(directory))
                fused = sum(t.nbytes // 2 * 2 for t in spec.tensors if ".attn.qkv." in t.name)
                real_v = resident - 2 * fused  # CPU-only copies of a fused qkv (see test_vision_exllamav2)
                vision = f"{real_v:,} {_mark(vis.weights_bytes(spec), real_v)}"
            rows.append((arch, model_id, f"{real_weights:,} {_mark(ours_weights, real_weights)}",
                         f"{real_scratch:,} {_mark(ours_scratch, real_scratch)}", *kv, vision))
    head = ("architecture", "model", "GPU weights B", "fixed scratch B",
            *[f"KV/token {m}" for m in CACHE_MODES], "vision weights B")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    exact = sum(all("(" not in c and (c == "-" or c.endswith("=") or c.replace(",", "").isdigit())
                    for c in row[2:]) for row in rows)
    print(f"\n{exact} of {len(rows)} architectures equal exllamav2's own accounting in every column")


if __name__ == "__main__":
    main()
