"""The vision tower of a multimodal model, read the way exllamav2 0.3.2 reads it: config.json
`vision_config` and `preprocessor_config.json` (`config.py` L492-621 @ v0.3.2), for the three tower types it
implements (SigLIP for Gemma 3, Pixtral for Pixtral / Mistral 3, Qwen2-VL / Qwen2.5-VL).

exllamav2 reads the preprocessor whenever config.json names a `vision_config.model_type`, even to load the
text model alone, so a missing file, a wrong `image_processor_type` or a missing key fails the model, with one
line naming the file and the key.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

from exlx_autocfg.errors import ModelSpecError
from exlx_autocfg.model.readkeys import positive, read_key

VISION_MAX_SIZE = 16384  # config.py vision_max_size: get_image_embeddings refuses larger images

# config.py asserts image_processor_type per tower type (L524, L558, L582, L590)
PROCESSOR_TYPES: dict[str, tuple[str, ...]] = {
    "siglip_vision_model": ("Gemma3ImageProcessor",),
    "pixtral": ("PixtralImageProcessor", "PixtralImageProcessorFast"),
    "qwen2": ("Qwen2VLImageProcessor",),
    "qwen2.5": ("Qwen2_5_VLImageProcessor", "Qwen2VLImageProcessor"),
}
QWEN25_MERGER_INTERMEDIATE = 5120  # config.py L591: hard-coded for qwen2.5 ("doesn't seem to appear")


@dataclass(frozen=True, kw_only=True)
class VisionSpec:
    """What ExLlamaV2Config holds about the vision tower (`vision_*` attributes), plus the largest image the
    preprocessor produces (`max_image_*`, from preprocessor_config.json). The fields one tower type reads
    default to None for the others."""

    model_type: str  # siglip_vision_model | pixtral | qwen2 | qwen2.5
    num_layers: int
    hidden_size: int
    intermediate_size: int
    merger_intermediate_size: int | None = None
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    patch_size: int  # square patches (height == width, checked)
    temporal_patch_size: int | None = None  # qwen: Conv3d over this many frames
    spatial_merge_size: int
    spatial_patch_size: int | None = None  # qwen
    rope_theta: float | None = None
    num_channels: int = 3
    image_processor_type: str
    multimodal_projector_bias: bool | None = None
    mm_tokens_per_image: int | None = None  # siglip (Gemma 3)
    window_size: int | None = None  # qwen2.5 windowed attention
    fullatt_block_indexes: tuple[int, ...] | None = None  # qwen2.5 layers with full attention
    size: tuple[int, int] | None = None  # siglip: the fixed (height, width) every image is resized to
    longest_edge: int | None = None  # pixtral
    min_pixels: int | None = None  # qwen
    max_pixels: int | None = None  # qwen
    max_image_height: int  # the largest preprocessed image, in pixels
    max_image_width: int

    @property
    def max_image_patches(self) -> int:
        """Patches (tokens into the tower) of the largest preprocessed image."""
        return (self.max_image_height // self.patch_size) * (self.max_image_width // self.patch_size)


def parse_vision(
    config: dict[str, Any],
    preprocessor: dict[str, Any] | None,
    model_type: str,
    *,
    text_hidden_size: int,
    where: str,
    preprocessor_where: str,
) -> VisionSpec | None:
    """config.py's vision block for `model_type` (already known to be set). `preprocessor` None: the file is
    missing. None for a tower type exllamav2 does not implement (it warns and loads the text model)."""
    if preprocessor is None:
        raise ModelSpecError(
            f"{preprocessor_where}: missing (config.json has vision_config.model_type {model_type!r}; "
            "exllamav2 0.3.2 reads the image processor from it even for text-only use)"
        )
    if not isinstance(preprocessor, dict):
        raise ModelSpecError(f"{preprocessor_where}: not a JSON object")
    if model_type not in PROCESSOR_TYPES:  # config.py L620: a warning, and the text model still loads
        return None
    rc = functools.partial(read_key, config, where=where)
    rp = functools.partial(read_key, preprocessor, where=preprocessor_where)
    processor = rp(str, ["image_processor_type"])
    if processor not in PROCESSOR_TYPES[model_type]:
        raise ModelSpecError(
            f"{preprocessor_where}: image_processor_type is {processor!r}; exllamav2 0.3.2 needs "
            f"{' or '.join(PROCESSOR_TYPES[model_type])} for a {model_type} vision tower"
        )
    if model_type == "siglip_vision_model":
        return _siglip(rc, rp, processor, text_hidden_size, where, preprocessor_where)
    if model_type == "pixtral":
        return _pixtral(rc, rp, processor, text_hidden_size, where, preprocessor_where)
    return _qwen(rc, rp, processor, model_type, where, preprocessor_where)


def _siglip(rc: Any, rp: Any, processor: str, text_hidden: int, where: str, pwhere: str) -> VisionSpec:
    heads = positive(
        where, "vision_config.num_attention_heads", rc(int, ["vision_config->num_attention_heads"])
    )
    kv = positive(
        where, "vision_config.num_key_value_heads", rc(int, ["vision_config->num_key_value_heads"], heads)
    )
    hidden = positive(where, "vision_config.hidden_size", rc(int, ["vision_config->hidden_size"]))
    head_dim = rc(int, ["vision_config->head_dim"], hidden // heads)
    bias = rc(bool, ["multimodal_projector_bias"], False)
    patch = positive(where, "vision_config.patch_size", rc(int, ["vision_config->patch_size"]))
    rc(str, ["vision_config->hidden_act"], "silu")
    layers = rc(int, ["vision_config->num_hidden_layers"], 24)
    inter = rc(int, ["vision_config->intermediate_size"], text_hidden)
    rp(list, ["image_mean"])
    rp(list, ["image_std"])
    rp(int, ["resample"])
    rp(float, ["rescale_factor"])
    size = rp(dict, ["size"])
    tokens = rc(int, ["mm_tokens_per_image"])
    h, w = _size_hw(size, pwhere)
    return VisionSpec(
        model_type="siglip_vision_model",
        num_layers=layers,
        hidden_size=hidden,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        patch_size=patch,
        spatial_merge_size=1,
        image_processor_type=processor,
        multimodal_projector_bias=bias,
        mm_tokens_per_image=tokens,
        size=(h, w),
        max_image_height=h,
        max_image_width=w,
    )


def _size_hw(size: dict, pwhere: str) -> tuple[int, int]:
    h, w = size.get("height"), size.get("width")
    if type(h) is not int or type(w) is not int or h <= 0 or w <= 0:
        raise ModelSpecError(f"{pwhere}: size must give integer height and width, got {size!r}")
    return h, w


def _pixtral(rc: Any, rp: Any, processor: str, text_hidden: int, where: str, pwhere: str) -> VisionSpec:
    head_dim = positive(where, "vision_config.head_dim", rc(int, ["vision_config->head_dim"]))
    heads = positive(
        where, "vision_config.num_attention_heads", rc(int, ["vision_config->num_attention_heads"])
    )
    kv = rc(int, ["vision_config->num_key_value_heads"], heads)
    bias = rc(bool, ["multimodal_projector_bias"], True)
    rc(str, ["vision_config->hidden_act"])
    hidden = rc(int, ["vision_config->hidden_size"], 1024)
    patch = positive(where, "vision_config.patch_size", rc(int, ["vision_config->patch_size"]))
    theta = rc(int, ["vision_config->rope_theta"])
    rc(int, ["vision_feature_layer"])
    layers = rc(int, ["vision_config->num_hidden_layers"], 24)
    inter = rc(int, ["vision_config->intermediate_size"], text_hidden)
    rp(list, ["image_mean"])
    rp(list, ["image_std"])
    prep_patch = rp(object, ["patch_size"])
    if isinstance(prep_patch, int) and not isinstance(prep_patch, bool):
        prep_patch = {"width": prep_patch, "height": prep_patch}
    if not isinstance(prep_patch, dict) or any(prep_patch.get(x) != patch for x in ("width", "height")):
        raise ModelSpecError(
            f"{pwhere}: patch_size {prep_patch!r} disagrees with config.json vision_config.patch_size {patch}"
        )
    rp(int, ["resample"])
    rp(float, ["rescale_factor"])
    size = rp(dict, ["size"])
    merge = rc(int, ["spatial_merge_size"], 1)
    edge = size.get("longest_edge")
    if type(edge) is not int or edge <= 0:  # pixtral.preprocess asserts "longest_edge" in size
        raise ModelSpecError(
            f"{pwhere}: size.longest_edge missing (exllamav2's Pixtral preprocessor needs it)"
        )
    # the largest image: a square at longest_edge, aligned up to 2 * patch (vlm/util.py
    # size_to_longest_edge_and_patch_size, pixtral.preprocess patch_size * 2)
    side = -(-edge // (2 * patch)) * 2 * patch
    return VisionSpec(
        model_type="pixtral",
        num_layers=layers,
        hidden_size=hidden,
        intermediate_size=inter,
        merger_intermediate_size=inter,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        patch_size=patch,
        spatial_merge_size=merge,
        rope_theta=float(theta),
        image_processor_type=processor,
        multimodal_projector_bias=bias,
        longest_edge=edge,
        max_image_height=side,
        max_image_width=side,
    )


def _qwen(rc: Any, rp: Any, processor: str, model_type: str, where: str, pwhere: str) -> VisionSpec:
    window = full = None
    if model_type == "qwen2":
        hidden = positive(where, "vision_config.embed_dim", rc(int, ["vision_config->embed_dim"]))
        ratio = rc(int, ["vision_config->mlp_ratio"], None)
        if ratio is None:  # hidden_size * None raises TypeError in exllamav2
            raise ModelSpecError(
                f"{where}: missing vision_config.mlp_ratio (exllamav2 0.3.2 multiplies by it)"
            )
        inter = merger = hidden * ratio
    else:
        hidden = positive(where, "vision_config.hidden_size", rc(int, ["vision_config->hidden_size"]))
        inter = rc(int, ["vision_config->intermediate_size"])
        full_list = rc(list, ["vision_config->fullatt_block_indexes"])  # no default: a missing key crashes
        window = rc(int, ["vision_config->window_size"])
        if not all(type(i) is int for i in full_list):
            raise ModelSpecError(f"{where}: vision_config.fullatt_block_indexes must be a list of integers")
        full = tuple(full_list)
        merger = QWEN25_MERGER_INTERMEDIATE
    heads = positive(where, "vision_config.num_heads", rc(int, ["vision_config->num_heads"]))
    merge = positive(
        where, "vision_config.spatial_merge_size", rc(int, ["vision_config->spatial_merge_size"])
    )
    spatial_patch = positive(
        where, "vision_config.spatial_patch_size", rc(int, ["vision_config->spatial_patch_size"])
    )
    patch = positive(where, "vision_config.patch_size", rc(int, ["vision_config->patch_size"]))
    theta = rc(int, ["vision_config->rope_theta"], 10000.0)
    layers = rc(int, ["vision_config->depth"])
    rp(list, ["image_mean"])
    rp(list, ["image_std"])
    if rp(int, ["patch_size"]) != patch:
        raise ModelSpecError(
            f"{pwhere}: patch_size disagrees with config.json vision_config.patch_size {patch}"
        )
    temporal = positive(pwhere, "temporal_patch_size", rp(int, ["temporal_patch_size"]))
    if rp(int, ["merge_size"]) != merge:
        raise ModelSpecError(
            f"{pwhere}: merge_size disagrees with config.json vision_config.spatial_merge_size {merge}"
        )
    rp(float, ["rescale_factor"], 0.00392156862745098)
    min_pixels = rp(int, ["min_pixels"])
    max_pixels = positive(pwhere, "max_pixels", rp(int, ["max_pixels"]))
    side = _qwen_max_side(max_pixels, spatial_patch * merge)
    return VisionSpec(
        model_type=model_type,
        num_layers=layers,
        hidden_size=hidden,
        intermediate_size=inter,
        merger_intermediate_size=merger,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden // heads,
        patch_size=patch,
        temporal_patch_size=temporal,
        spatial_merge_size=merge,
        spatial_patch_size=spatial_patch,
        rope_theta=float(theta),
        image_processor_type=processor,
        window_size=window,
        fullatt_block_indexes=full,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        max_image_height=side,
        max_image_width=side,
    )


def _qwen_max_side(max_pixels: int, factor: int) -> int:
    """The side of the largest square image vlm/util.py smart_resize returns: a multiple of `factor` whose
    square is at most max_pixels (any image reaches at most max_pixels / patch**2 patches; the square
    reaches it when sqrt(max_pixels) is a multiple of factor, as for every published Qwen2-VL config)."""
    side = math.isqrt(max_pixels) // factor * factor
    return min(max(side, factor), VISION_MAX_SIZE)
