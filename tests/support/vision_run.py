"""Run the real exllamav2 0.3.2 vision tower on the CPU: load its modules, embed one image, and measure
what that allocates (tests/support/peak.py).

Only the compiled-extension and CUDA boundary is stood in for: `rms_norm`, `layer_norm` and `rope_` write
their result into the tensor the real Python code allocated, computed outside the measurement (they allocate
nothing the real kernels would); `stloader_read` leaves the zeros stloader.py allocated (the test files are
sparse anyway) and `torch.cuda.synchronize` does nothing. The tower's device index -1 (the CPU) is passed to
torch as "cpu" where exllamav2 moves tensors between devices.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch.utils._python_dispatch import _disable_current_modes

from tests.support.peak import PeakBytes
from tests.support.standin import import_exllamav2


def _rms_norm(x, w, out, eps):
    with _disable_current_modes():
        xf = x.float()
        out.copy_((xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()).to(out.dtype))


def _layer_norm(x, w, b, out, eps):
    with _disable_current_modes():
        bias = b.float() if b is not None and b.numel() == w.numel() else None
        out.copy_(
            torch.nn.functional.layer_norm(x.float(), (x.shape[-1],), w.float(), bias, eps).to(out.dtype)
        )


def _rope(x, sin, cos, past_len, heads, head_dim, offsets, neox):
    pass  # in place on the real kernel too: values do not matter for memory


def _read(filename, offset, size, tensor):
    pass  # the tensor stloader.py allocated stays zeros


@contextlib.contextmanager
def cpu_extension():
    """The three extension functions the FP16 vision path calls, and -1 -> "cpu" for torch."""
    exl2 = import_exllamav2()
    import exllamav2.vlm.vision_tower as vt
    from exllamav2.ext import exllamav2_ext as ext_c

    fakes = {"rms_norm": _rms_norm, "layer_norm": _layer_norm, "rope_": _rope, "stloader_read": _read}
    saved = {n: getattr(ext_c, n, None) for n in fakes}
    move, sync = vt.safe_move_tensor, torch.cuda.synchronize
    for name, fake in fakes.items():
        setattr(ext_c, name, fake)
    vt.safe_move_tensor = lambda t, d, **kw: move(t, "cpu" if d == -1 else d, **kw)
    torch.cuda.synchronize = lambda *a, **kw: None
    try:
        yield exl2
    finally:
        for n, f in saved.items():
            if f is None:
                delattr(ext_c, n)
            else:
                setattr(ext_c, n, f)
        vt.safe_move_tensor, torch.cuda.synchronize = move, sync


def load_tower(model_dir: str, *, max_seq_len: int | None = None, no_sdpa: bool = True) -> tuple[Any, int]:
    """The real ExLlamaV2VisionTower with every module loaded on the CPU; (tower, bytes the load left)."""
    exl2 = import_exllamav2()
    from exllamav2.vlm.vision_tower import ExLlamaV2VisionTower

    config = exl2.ExLlamaV2Config(model_dir)
    if max_seq_len is not None:
        config.max_seq_len = max_seq_len
    config.no_sdpa = no_sdpa
    config.no_flash_attn = config.no_xformers = True
    tower = ExLlamaV2VisionTower(config)
    tower.device_context = [None]
    with cpu_extension(), torch.inference_mode(), PeakBytes() as mode:
        for m in tower.modules:
            m.set_device_idx(-1)
            m.load()
    return tower, mode.current


def max_image(tower: Any) -> tuple[torch.Tensor, tuple[int, int], tuple | None]:
    """The preprocessed tensor of the largest image the preprocessor produces, built by the real
    preprocess functions from a PIL image of that size."""
    from PIL import Image

    cfg = tower.config
    if cfg.vision_model_type == "siglip_vision_model":
        size = (cfg.vision_size["width"], cfg.vision_size["height"])
    elif cfg.vision_model_type == "pixtral":
        edge = cfg.vision_size["longest_edge"]
        size = (edge, edge)
    else:
        import math

        factor = cfg.vision_spatial_patch_size * cfg.vision_spatial_merge_size
        side = math.isqrt(cfg.vision_max_pixels) // factor * factor
        size = (side, side)
    image = Image.new("RGB", size, (120, 80, 200))
    tensor, prep_size, grid, _ = tower.preprocess_func(cfg, image)
    return tensor, prep_size, grid


def tower_tensors(tower: Any) -> list[torch.Tensor]:
    """Every tensor the loaded tower holds (its weights and the tower's own RoPE tables)."""
    out: list[torch.Tensor] = [t for t in (tower.rope_sin, tower.rope_cos) if t is not None]

    def walk(obj: Any, depth: int = 0) -> None:
        if depth > 3:
            return
        for value in vars(obj).values():
            if isinstance(value, torch.Tensor):
                out.append(value)
            elif isinstance(value, torch.nn.Module):
                out.extend(value.parameters())
            elif hasattr(value, "submodules") and value is not tower:
                walk(value, depth + 1)
            elif isinstance(value, list):
                for item in value:
                    if hasattr(item, "submodules"):
                        walk(item, depth + 1)

    for module in tower.modules:
        walk(module)
    return out


def embed_peak(tower: Any) -> tuple[int, int]:
    """(peak transient bytes, patches) of embedding the largest image with the real `process`: everything
    allocated beyond the loaded weights and the preprocessed image (which on a GPU is a device copy that
    lives only until the patch convolution; on the CPU it is the caller's tensor)."""
    tensor, prep_size, grid = max_image(tower)
    cfg = tower.config
    fx = prep_size[0] // cfg.vision_patch_size["width"]
    fy = prep_size[1] // cfg.vision_patch_size["height"]
    with cpu_extension(), torch.inference_mode(), PeakBytes(tensor, *tower_tensors(tower)) as mode:
        out = tower.process(tensor, (fy, fx), thw_grid=grid)
        del out
    return mode.peak, fx * fy

