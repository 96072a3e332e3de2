"""The vision tower and multimodal projector of a multimodal model, as exllamav2 0.3.2's
`ExLlamaV2VisionTower` loads and runs them (vlm/vision_tower.py), in bytes. Pure functions of a ModelSpec.

Exact (tested against the real wheel in tests/test_vision_exllamav2.py):
  vision_module_costs   each tower module's weight_footprint(), scratch_space_fixed(), scratch_space(), in
                        the tower's module order: what its set_device_map counts
  weights_bytes         what the loaded tower holds: every tower tensor as fp16 (module.py load_weight
                        .half()), the Mistral 3 patch merger included (weight_footprint leaves it out)
  rope_bytes            the tower's own device context is built with the text model's archparams
                        (device.py L65: `archparams or model.config.arch.lm`), so the first attention call
                        builds a second copy of the text model's sin/cos tables on the tower's device
  device                the tower is loaded with load() / load_gen() and no gpu_split (TabbyAPI
                        backends/exllamav2/model.py @ exl2-checkpoint L619-625; exllamav2's examples):
                        set_device_map([99999]) puts every module on CUDA device 0
Estimated (the wheel does not account for them), checked on CPU for the matmul path:
  image_transient_bytes the peak of embedding one image of the largest size the preprocessor produces
Units: bytes. Nothing here touches files, torch or exllamav2.
"""

from __future__ import annotations

from dataclasses import dataclass

from exlx_autocfg import exl2
from exlx_autocfg.model.graph import LinearNode, ModuleNode, vision_modules
from exlx_autocfg.model.layout import DTYPE_BYTES
from exlx_autocfg.model.spec import ModelSpec
from exlx_autocfg.planner import memory

VISION_DEVICE = 0  # set_device_map([99999]) in ExLlamaV2.load_gen, as TabbyAPI and the examples call it


@dataclass(frozen=True)
class VisionCosts:
    """What planning the vision tower of one model needs, for one attention backend."""

    model_type: str
    device: int  # CUDA device (in CUDA order) the whole tower is loaded on
    weights_bytes: int  # resident after load
    footprint_bytes: int  # sum of weight_footprint() before load (what exllamav2's placement counts)
    scratch_fixed_bytes: int  # the tower's device-context scratch size (allocated only for quantized towers)
    scratch_bytes: int  # max scratch_space(): what set_device_map reserves beside the weights
    rope_bytes: int  # the text model's sin/cos tables, built a second time on the tower's device
    image_transient_bytes: int  # peak while embedding one largest image with `backend`
    backend: str
    max_image: tuple[int, int]  # (height, width) in pixels of the largest preprocessed image
    patches: int  # tokens entering the tower for that image
    image_tokens: int  # embeddings it adds to the text model's context (special tokens included)
    modules: tuple[memory.ModuleCost, ...] = ()

def _tensor_bytes(spec: ModelSpec, keys: tuple[str, ...]) -> int:
    have = spec.tensor_bytes
    return sum(have.get(k, 0) for k in keys)


def _conv_footprint(spec: ModelSpec, node: ModuleNode) -> int:
    """conv.py: the stored weight (+ bias), else assumed_footprint = numel() * 2 with numel counting only the
    first two kernel dimensions (conv.py L51, L104)."""
    have = spec.tensor_bytes
    if f"{node.key}.weight" in have:
        return _tensor_bytes(spec, (f"{node.key}.weight", f"{node.key}.bias"))
    return node.channels * node.hidden * node.kernel[0] * node.kernel[1] * 2


def _linear_scratch(lin: LinearNode, rows: int) -> int:
    """linear.py scratch_space for a sub-module linear: temp_dq + temp_fwd (out * rows * 4 + 128)."""
    return memory.temp_dq_bytes(lin) + lin.padded_out * rows * 4 + 128


def vision_module_costs(
    spec: ModelSpec, max_input_len: int = 2048, max_batch_size: int = 1, max_seq_len: int | None = None
) -> list[memory.ModuleCost]:
    """The tower's modules in its order with exllamav2's own accounting. The tower shares the text model's
    config, so its scratch is sized from config.max_input_len / max_batch_size, its norms count the text
    hidden_size, and SigLIP's position embedding counts config.max_seq_len * hidden_size * 2 before load
    (pos_embedding.py native_ctx_size; after load it becomes the tensor's rows)."""
    seq = spec.max_position_embeddings if max_seq_len is None else max_seq_len
    rows = max_input_len * max_batch_size
    h = spec.hidden_size
    have = spec.tensor_bytes
    out: list[memory.ModuleCost] = []
    for node in vision_modules(spec):
        if node.kind == "conv":
            out.append(memory.ModuleCost(node.key, "conv", None, _conv_footprint(spec, node), 0, 0))
        elif node.kind == "norm":
            out.append(memory.ModuleCost(node.key, "norm", None, h * 2, 0, 0))
        elif node.kind == "pos_embedding":
            out.append(memory.ModuleCost(node.key, "pos_embedding", None, seq * h * 2, 0, 0))
        elif node.kind == "attn":
            fixed, scratch = memory.attn_scratch(node, rows, seq, max_batch_size)
            weight = memory.node_weight(spec, node, have, h * 2)
            out.append(memory.ModuleCost(f"{node.key}.self_attn", "attn", node.layer, weight, fixed, scratch))
        elif node.kind == "mlp":
            scratch = memory.mlp_scratch(node, rows)
            weight = memory.node_weight(spec, node, have, h * 2)
            projector = node.key == spec.rules.vision.mmp_prefix  # the merger MLP is keyed by its prefix
            key, kind = (node.key, "projector") if projector else (f"{node.key}.mlp", "mlp")
            out.append(memory.ModuleCost(key, kind, node.layer, weight, scratch, scratch))
        else:  # Gemma 3's input projection: a plain sub-module linear
            lin = node.linears[0]
            scratch = _linear_scratch(lin, rows)
            out.append(
                memory.ModuleCost(
                    node.key, "linear", None, memory.linear_footprint(have, lin), scratch, scratch
                )
            )
    return out


def _tower_tensors(spec: ModelSpec) -> list[tuple[str, str, int]]:
    """(name, dtype, elements) of every tower / projector tensor in the checkpoint."""
    arch = spec.rules.vision
    if arch is None:
        return []
    prefixes = (arch.vt_prefix, arch.mmp_prefix)
    return [
        (t.name, t.dtype, t.nbytes // DTYPE_BYTES[t.dtype])
        for t in spec.tensors
        if t.name.startswith(prefixes)
    ]


def weights_bytes(spec: ModelSpec) -> int:
    """The loaded tower: each tensor converted to fp16 on the device (load_weight `.half()`; the fused
    Qwen q/k/v is sliced on the CPU and each part moved on its own, load_weight_fused)."""
    return sum(n * 2 for _, _, n in _tower_tensors(spec))


def image_tokens(spec: ModelSpec) -> int:
    """Embeddings one largest image adds to the text model's context (vlm/processor postprocess)."""
    v = spec.vision
    assert v is not None
    fy, fx = v.max_image_height // v.patch_size, v.max_image_width // v.patch_size
    if v.model_type == "siglip_vision_model":
        return (v.mm_tokens_per_image or 0) + 2  # <start_of_image>, <end_of_image>
    if v.model_type == "pixtral":
        m = v.spatial_merge_size
        return (fy // m) * (fx // m + 1) + 1  # an [IMG_BREAK] per row, one [IMG_END]
    return fy * fx // v.spatial_merge_size**2 + 2  # <|vision_start|>, <|vision_end|>


# ------------------------------------------------------------------------------------------ the transient


def image_input_bytes(spec: ModelSpec) -> int:
    """The preprocessed image moved to the device: fp16 (C, H, W), or Qwen's flattened patches."""
    v = spec.vision
    assert v is not None
    if v.model_type in ("qwen2", "qwen2.5"):
        t = v.temporal_patch_size or 1
        return v.max_image_patches * v.num_channels * t * v.patch_size**2 * 2
    return v.num_channels * v.max_image_height * v.max_image_width * 2


def image_transient_phases(spec: ModelSpec, backend: str) -> dict[str, int]:
    """Peak device bytes of each phase of `ExLlamaV2VisionTower.process` on the largest image, the
    hidden state and what persists through the whole call included (not the weights). Phases:
      conv       the image, the patch convolution's output and its contiguous copy
      attention  residual + norm + q, k, v, then per backend: matmul keeps two (heads, N, N) fp16 weight
                 tensors alive at the softmax (and Qwen2.5's windowed layers a persistent (N, N) fp16
                 block-diagonal mask, built through 1 + 4 + 2 bytes per element); flash-attn, xformers and a
                 memory-efficient SDPA keep the output and an fp32 log-sum-exp
      mlp        residual + norm + the intermediate activations (gated: gate, act, up; quick-GELU: three
                 temporaries) + the down projection and the residual sum
    The text model's RoPE tables on this device are counted separately (VisionCosts.rope_bytes)."""
    if backend not in exl2.BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(exl2.BACKENDS)}, got {backend!r}")
    v, arch = spec.vision, spec.rules.vision
    assert v is not None and arch is not None
    n, d, inter = v.max_image_patches, v.hidden_size, v.intermediate_size
    heads, q = v.num_attention_heads, v.num_attention_heads * v.head_dim
    kv = v.num_key_value_heads * v.head_dim
    x = n * d * 2
    rope = 2 * n * v.head_dim * 2 if v.model_type != "siglip_vision_model" else 0  # cos, sin on the device
    persist = x + rope
    conv_copy = 0 if arch.vt.vision_conv3d else x  # Conv2d output is flattened with a contiguous copy
    phases = {"conv": image_input_bytes(spec) + x + conv_copy + rope}
    pre = persist + x + n * q * 2 + 2 * n * kv * 2  # + post_norm, q, k, v
    out = n * q * 2
    weights = heads * n * n * 2
    windowed = bool(v.window_size and v.fullatt_block_indexes is not None)
    if backend in ("matmul",):
        mask = n * n * 2 if windowed else 0
        build = pre + weights + 7 * n * n if windowed else 0  # bool == result, fp32 where(), fp16 copy
        phases["attention"] = max(pre + 2 * weights + mask, pre + weights + 2 * out + mask, build)
    elif backend == "sdpa":
        mask = n * n * 2 if windowed else 0
        phases["attention"] = pre + 2 * out + heads * n * 4 + mask
    else:  # flash_attn, xformers: output (a view after reshape) + fp32 log-sum-exp
        phases["attention"] = pre + out + heads * n * 4
    a = n * inter * 2
    if arch.vt.mlp_gate:  # gate, silu(gate), up stay alive into the down projection and the residual sum
        held = 3 * a + 2 * x
    elif arch.vt.mlp_act_func == "quickgelu":  # up * sigmoid(1.702 * up): three at the sigmoid
        held = max(3 * a, 2 * a + 2 * x)
    else:  # up, gelu(up), then down and the residual sum
        held = 2 * a + 2 * x
    phases["mlp"] = persist + x + held
    return phases


def image_transient_bytes(spec: ModelSpec, backend: str) -> int:
    return max(image_transient_phases(spec, backend).values())


def vision_costs(
    spec: ModelSpec,
    *,
    backend: str = "flash_attn",
    max_seq_len: int | None = None,
    max_input_len: int = 2048,
    max_batch_size: int = 1,
) -> VisionCosts:
    """Everything the vision tower of `spec` costs, as exllamav2 loads it next to the text model.
    `max_seq_len` is the text model's config.max_seq_len (it sizes the duplicated RoPE tables and SigLIP's
    pre-load footprint); default the model's own."""
    v = spec.vision
    if v is None or spec.rules.vision is None:
        raise ValueError(f"{spec.name} has no vision tower exllamav2 0.3.2 can load")
    seq = spec.max_position_embeddings if max_seq_len is None else max_seq_len
    modules = vision_module_costs(spec, max_input_len, max_batch_size, seq)
    return VisionCosts(
        model_type=v.model_type,
        device=VISION_DEVICE,
        weights_bytes=weights_bytes(spec),
        footprint_bytes=sum(c.weight_bytes for c in modules),
        scratch_fixed_bytes=memory.fixed_scratch_bytes(modules),
        scratch_bytes=max((c.scratch_bytes for c in modules), default=0),
        rope_bytes=memory.rope_bytes(spec, seq),
        image_transient_bytes=image_transient_bytes(spec, backend),
        backend=backend,
        max_image=(v.max_image_height, v.max_image_width),
        patches=v.max_image_patches,
        image_tokens=image_tokens(spec),
        modules=tuple(modules),
    )


def vision_tensors_present(spec: ModelSpec) -> bool:
    """Whether the checkpoint carries the tower (an EXL2 quant made without it loads the text model only)."""
    return bool(_tower_tensors(spec))
