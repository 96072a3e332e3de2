"""Tensor parallelism against the real exllamav2 0.3.2 wheel on CPU torch (only exllamav2_ext stood in).

The split: the real `TPContext` runs on CPU when given a gpu_split (without one it asks nvidia-smi, faked
here at that boundary). The scratch: the real modules' `scratch_space_tp()`. The cache: the real
`ExLlamaV2Cache_TP`, with exllamav2.cache's torch allocating on the meta device instead of CUDA device N
(the hardware boundary) and recording N. The weights: the real `ExLlamaV2Linear.tp_split` slicing CPU
tensors of the shapes exllamav2's loader builds, and by hand from the safetensors headers (read with the
real stloader.STFile) for whole models. The attention rules: the real dispatch, the real assertion in
`forward_tp_old`, the real `_attn_torch` on a device's head slice, and the installed extension source.
"""

from __future__ import annotations

import inspect
import math
import re
import types
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from exlx_autocfg.errors import DoesNotFitError
from exlx_autocfg.findings import codes_of
from exlx_autocfg.model.load import load_model_spec
from exlx_autocfg.planner import memory
from exlx_autocfg.planner import tensor_parallel as tp
from tests.support.model_dirs import make_model_dir
from tests.support.real_wheel import CACHE_CLASSES
from tests.support.standin import import_exllamav2

MODELS = [
    ("qwen2.5-72b", 4.25),
    ("llama3-70b", 4.0),
    ("llama3-8b", 5.0),
    ("mistral-7b", 4.0),
    ("tiny-llama", 4.0),
]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp-models")
    return {arch: make_model_dir(root, arch, bpw=bpw) for arch, bpw in MODELS}


def _model(exl2, directory, *, seq=8192, chunk=2048, batch=1):
    config = exl2.ExLlamaV2Config(str(directory))
    config.max_seq_len, config.max_input_len, config.max_batch_size = seq, chunk, batch
    return exl2.ExLlamaV2(config)


def _real_split(ctx) -> dict[str, list[tuple[int, int, int]]]:
    return {
        "kv": ctx.kv_split,
        "q": ctx.q_split,
        "intermediate": ctx.id_split,
        "hidden": ctx.rs_split,
        "vocab": ctx.vc_split,
    }


def _ours(split: tp.TPSplit) -> dict[str, list[tuple[int, int, int]]]:
    return {kind: list(split.ranges(kind)) for kind in tp.KINDS}


# ----------------------------------------------------------------------------------------------- split


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(1, 200_000),
    weights=st.lists(
        st.one_of(st.just(0.0), st.floats(0.5, 200_000.0), st.integers(0, 100_000)), min_size=1, max_size=5
    ),
    minimum=st.integers(0, 20),
)
def test_integer_split_is_exllamav2s(total, weights, minimum):
    import_exllamav2()
    from exllamav2.util import integer_split

    try:
        expected = integer_split(total, list(weights), minimum)
    except ZeroDivisionError:
        with pytest.raises(ValueError):
            tp.integer_split(total, weights, minimum)
        return
    assert tp.integer_split(total, weights, minimum) == expected


@pytest.mark.parametrize("arch", [a for a, _ in MODELS])
@pytest.mark.parametrize(
    ("gpu_split", "mode", "tokens"),
    [
        ([24.0, 24.0], "FP16", 8192),
        ([22.5, 11.25], "Q4", 32768),
        ([24.0, 24.0, 24.0, 24.0], "Q6", 65536),
        ([40.0, 10.0, 3.5], "Q8", 4096),
        ([23.4, 23.4], "Q4", 131072),
    ],
)
def test_define_split_is_tpcontexts(exl2, dirs, arch, gpu_split, mode, tokens):
    from exllamav2.tensor_p import TPContext

    spec = load_model_spec(dirs[arch])
    model = _model(exl2, dirs[arch])
    try:
        real = TPContext(model, gpu_split, tokens, getattr(exl2, CACHE_CLASSES[mode]))
    except ZeroDivisionError:  # nothing left after the cache: exllamav2 divides by zero
        with pytest.raises(DoesNotFitError):
            tp.define_tp_split(
                spec, tp.allocation_from_gpu_split(gpu_split), cache_tokens=tokens, cache_mode=mode
            )
        return
    if not {d for d, _, _ in real.rs_split} <= set(real.all_devs):  # load_tp would fail on it (IndexError)
        with pytest.raises(DoesNotFitError, match="hidden columns on GPU"):
            tp.define_tp_split(
                spec, tp.allocation_from_gpu_split(gpu_split), cache_tokens=tokens, cache_mode=mode
            )
        return
    ours = tp.define_tp_split(
        spec, tp.allocation_from_gpu_split(gpu_split), cache_tokens=tokens, cache_mode=mode
    )
    assert _ours(ours) == _real_split(real)
    assert list(ours.devices) == real.all_devs and ours.num_devices == real.num_devices


def test_split_without_gpu_split_reads_nvidia_smi_free_mib(exl2, dirs, monkeypatch):
    """gpu_split None: TPContext splits by nvidia-smi's memory.free (MiB), faked at that boundary."""
    import exllamav2.tensor_p as tensor_p

    free_bytes = [20_123 * 2**20 + 12345, 23_900 * 2**20]
    monkeypatch.setattr(
        tensor_p, "get_all_gpu_memory", lambda: {i: {"free": b // 2**20} for i, b in enumerate(free_bytes)}
    )
    spec = load_model_spec(dirs["qwen2.5-72b"])
    real = tensor_p.TPContext(_model(exl2, dirs["qwen2.5-72b"]), None, 16384, exl2.ExLlamaV2Cache_Q4)
    ours = tp.define_tp_split(
        spec, tp.allocation_from_free_bytes(free_bytes), cache_tokens=16384, cache_mode="Q4"
    )
    assert _ours(ours) == _real_split(real)
    assert ours.kv == ((0, 0, 4), (1, 4, 8))


def test_expect_cache_tokens_default_is_max_seq_len_times_batch(exl2, dirs):
    from exllamav2.tensor_p import TPContext

    spec = load_model_spec(dirs["llama3-70b"])
    model = _model(exl2, dirs["llama3-70b"], seq=60000, batch=2)
    real = TPContext(model, [30.0, 20.0], 0, None)  # 0 tokens and no base: max_seq_len * max_batch_size, FP16
    ours = tp.define_tp_split(spec, [30.0 * 1024, 20.0 * 1024], cache_tokens=120000, cache_mode="FP16")
    assert _ours(ours) == _real_split(real)


# --------------------------------------------------------------------------------------------- scratch


@pytest.mark.parametrize("arch", ["qwen2.5-72b", "llama3-8b", "tiny-llama"])
@pytest.mark.parametrize(
    ("chunk", "batch", "gpu_split"), [(2048, 1, [24.0, 24.0]), (512, 4, [24.0, 12.0, 12.0])]
)
def test_tp_scratch_is_scratch_space_tp(exl2, dirs, arch, chunk, batch, gpu_split):
    from exllamav2.tensor_p import TPContext

    spec = load_model_spec(dirs[arch])
    model = _model(exl2, dirs[arch], chunk=chunk, batch=batch)
    model.tp_context = TPContext(model, gpu_split, 8192, exl2.ExLlamaV2Cache)
    real = [0] * model.tp_context.num_devices
    try:
        for module in model.modules[1:]:  # model.py load_tp_gen
            for i, s in enumerate(module.scratch_space_tp()):
                real[i] = max(real[i], s)
    except IndexError:  # the hidden split landed on a GPU TPContext does not count (tiny-llama over 3)
        with pytest.raises(DoesNotFitError, match="hidden columns on GPU"):
            tp.define_tp_split(spec, tp.allocation_from_gpu_split(gpu_split), cache_tokens=8192)
        return
    split = tp.define_tp_split(spec, tp.allocation_from_gpu_split(gpu_split), cache_tokens=8192)
    assert tp.tp_scratch_bytes(spec, split, chunk, batch) == real


# ----------------------------------------------------------------------------------------------- cache


class _MetaTorch(types.SimpleNamespace):
    """exllamav2.cache's `torch`, with allocations for a CUDA device index put on meta and recorded."""

    def __init__(self):
        super().__init__(allocated={})

    def __getattr__(self, name):
        return getattr(torch, name)

    def zeros(self, shape, dtype=None, device=None):
        t = torch.zeros(shape, dtype=dtype, device="meta")
        key = device if isinstance(device, int) else str(device)
        self.allocated[key] = self.allocated.get(key, 0) + t.numel() * t.element_size()
        return t


@pytest.mark.parametrize("arch", ["qwen2.5-72b", "llama3-8b", "tiny-llama"])
@pytest.mark.parametrize("mode", list(CACHE_CLASSES))
@pytest.mark.parametrize(
    ("seq", "batch", "gpu_split"), [(32768, 1, [24.0, 24.0]), (4097, 2, [30.0, 10.0, 8.0])]
)
def test_tp_cache_is_exllamav2_cache_tp(exl2, dirs, monkeypatch, arch, mode, seq, batch, gpu_split):
    import exllamav2.cache as cache_mod
    from exllamav2.tensor_p import TPContext

    if arch == "tiny-llama":
        gpu_split = [24.0, 24.0]  # 2 KV heads: uneven splits are degenerate (tested above)
    shim = _MetaTorch()
    monkeypatch.setattr(cache_mod, "torch", shim)
    spec = load_model_spec(dirs[arch])
    model = _model(exl2, dirs[arch])
    model.tp_context = TPContext(model, gpu_split, seq * batch, getattr(exl2, CACHE_CLASSES[mode]))
    cache = exl2.ExLlamaV2Cache_TP(
        model, base=getattr(exl2, CACHE_CLASSES[mode]), batch_size=batch, max_seq_len=seq
    )
    split = tp.define_tp_split(
        spec, tp.allocation_from_gpu_split(gpu_split), cache_tokens=seq * batch, cache_mode=mode
    )
    ours = tp.tp_cache_bytes(spec, split, mode, seq, batch)
    for device, (states, staging) in enumerate(ours):
        assert shim.allocated.get(device, 0) == states + staging, (device, mode)
    assert len(cache.caches) == len(split.kv)


# --------------------------------------------------------------------------------------------- weights


def _exl2_linear_tensors(shapes: dict[str, tuple[int, ...]], key: str) -> dict[str, torch.Tensor]:
    """CPU tensors as exllamav2's loader leaves an EXL2 linear's q_tensors (module.py L118-121 q_perm =
    argsort(q_invperm); ext.py L336-341 perm/invperm to int16 and q_group_map of 2 int16 per input row)."""
    rows = shapes[f"{key}.q_invperm"][0]
    w = {
        "q_weight": torch.empty(shapes[f"{key}.q_weight"], dtype=torch.int32),
        "q_scale": torch.empty(shapes[f"{key}.q_scale"], dtype=torch.int32),
        "q_scale_max": torch.empty(shapes[f"{key}.q_scale_max"], dtype=torch.float16),
        "q_groups": torch.empty(shapes[f"{key}.q_groups"], dtype=torch.int16),
        "q_group_map": torch.empty((2 * rows,), dtype=torch.int16),
        "q_perm": torch.empty((rows,), dtype=torch.int16),
        "q_invperm": torch.empty((rows,), dtype=torch.int16),
    }
    if f"{key}.bias" in shapes:
        w["bias"] = torch.empty(shapes[f"{key}.bias"], dtype=torch.float16)
    return w


def _header_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes as exllamav2's own reader sees them (stloader.STFile: the header only)."""
    from exllamav2.stloader import STFile

    out = {}
    for file in sorted(directory.glob("*.safetensors")):
        for name, entry in STFile.open(str(file)).get_dict().items():
            out[name] = tuple(entry["shape"])
    return out


@pytest.mark.parametrize("arch", ["qwen2.5-72b", "tiny-llama"])
def test_real_linear_tp_split_slices_as_we_count(exl2, dirs, monkeypatch, arch):
    """The real ExLlamaV2Linear.tp_split on CPU tensors: safe_move_tensor (the device copy) records the
    target device and keeps the tensor; the extension's matrix handles are stood in for."""
    import exllamav2.linear as linear_mod
    from exllamav2.ext import exllamav2_ext
    from exllamav2.linear import ExLlamaV2Linear
    from exllamav2.tensor_p import BROADCAST_KV, BROADCAST_Q, BROADCAST_VC, TPContext

    spec = load_model_spec(dirs[arch])
    model = _model(exl2, dirs[arch])
    model.tp_context = TPContext(model, [24.0, 24.0], 8192, exl2.ExLlamaV2Cache)
    split = tp.define_tp_split(spec, [24.0 * 1024] * 2, cache_tokens=8192)
    monkeypatch.setattr(linear_mod, "safe_move_tensor", lambda t, idx: t)
    monkeypatch.setattr(exllamav2_ext, "make_q_matrix_split", lambda *a: 0, raising=False)
    monkeypatch.setattr(exllamav2_ext, "free_q_matrix", lambda *a: None, raising=False)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    ctx = types.SimpleNamespace(
        begin_scratch_alloc=lambda: None, get_scratch_slice=lambda n: torch.empty(n // 2, dtype=torch.half)
    )
    monkeypatch.setattr(model, "get_device_context", lambda idx: ctx)
    shapes = _header_shapes(dirs[arch])
    tensors = {t.name: t for t in spec.tensors}
    cases = [
        ("model.layers.0.self_attn.q_proj", BROADCAST_Q, spec.head_dim, "q"),
        ("model.layers.0.self_attn.k_proj", BROADCAST_KV, spec.head_dim, "kv"),
        ("lm_head", BROADCAST_VC, None, "vocab"),
    ]
    for key, bt, dim, kind in cases:
        lin = model.modules_dict[key]
        assert isinstance(lin, ExLlamaV2Linear)
        lin.q_tensors, lin.q_handle = _exl2_linear_tensors(shapes, key), 1
        lin.tp_split(bt, dim=dim)
        real = [sum(t.numel() * t.element_size() for t in w.values()) for w in lin.q_tensors]
        ours = [
            tp._linear_split_bytes(tensors, key, split.share_range(kind, d, dim or 1))
            for d, _, _ in split.ranges(kind)
        ]
        assert real == ours, key


def _by_hand_weights(spec, shapes, split) -> list[int]:
    """Per device, from linear.py L571-583 (q_weight[:, a:b] int32, q_scale[:, a//8:b//8] int32, bias[a:b]
    fp16; q_scale_max fp16, q_groups int16, q_group_map 2 x int16 per row, q_perm/q_invperm int16 whole),
    rmsnorm.py L211-239 (a fp16 copy per device of its split), attn.py L1578-1586, mlp.py L563-572 and
    model.py L457-460 (which split each module uses)."""
    out = [0] * split.num_devices
    hd = spec.head_dim

    def lin(key, ranges, dim):
        rows = shapes[f"{key}.q_invperm"][0]
        groups = shapes[f"{key}.q_scale_max"][0]
        qrows = shapes[f"{key}.q_weight"][0]
        for d, a, b in ranges:
            a, b = a * dim, b * dim
            out[d] += qrows * (b - a) * 4 + groups * (b // 8 - a // 8) * 4 + groups * 2 + groups * 2 * 2
            out[d] += rows * 2 * 2 + rows * 2 * 2 + ((b - a) * 2 if f"{key}.bias" in shapes else 0)

    def norm(key, ranges):
        for d, _, _ in ranges:
            out[d] += math.prod(shapes[f"{key}.weight"]) * 2

    for layer in range(spec.num_hidden_layers):
        p = f"model.layers.{layer}"
        norm(f"{p}.input_layernorm", split.kv)
        for name, ranges in (
            ("q_proj", split.q),
            ("k_proj", split.kv),
            ("v_proj", split.kv),
            ("o_proj", split.q),
        ):
            lin(f"{p}.self_attn.{name}", ranges, hd)
        norm(f"{p}.post_attention_layernorm", split.hidden)
        for name, ranges in (
            ("gate_proj", split.intermediate),
            ("up_proj", split.intermediate),
            ("down_proj", split.hidden),
        ):
            lin(f"{p}.mlp.{name}", ranges, 1)
    norm("model.norm", split.vocab)
    lin("lm_head", split.vocab, 1)
    return out


@pytest.mark.parametrize("arch", ["qwen2.5-72b", "llama3-70b", "mistral-7b"])
@pytest.mark.parametrize("gpu_split", [[24.0, 24.0], [24.0, 16.0, 8.0]])
def test_tp_device_weights_by_hand(exl2, dirs, arch, gpu_split):
    from exllamav2.tensor_p import TPContext

    spec = load_model_spec(dirs[arch])
    real = TPContext(_model(exl2, dirs[arch]), gpu_split, 16384, exl2.ExLlamaV2Cache_Q4)
    split = tp.define_tp_split(
        spec, tp.allocation_from_gpu_split(gpu_split), cache_tokens=16384, cache_mode="Q4"
    )
    assert _ours(split) == _real_split(real)
    weights = tp.tp_device_weights(spec, split)
    assert weights == _by_hand_weights(spec, _header_shapes(dirs[arch]), split)
    # every device holds its columns plus whole copies of the small tensors: more than its share
    assert sum(weights) > memory.gpu_weight_bytes(memory.module_costs(spec))


# ------------------------------------------------------------------------------------ the rules, real code


def test_supports_tp_is_architecture_pys(exl2, tmp_path):
    from exlx_autocfg.model.architectures import supported_architectures

    arch_dirs = {
        "LlamaForCausalLM": "llama3-8b",
        "MistralForCausalLM": "mistral-7b",
        "MixtralForCausalLM": "tiny-mixtral",
        "YiForCausalLM": "tiny-llama",
        "Qwen2ForCausalLM": "qwen2.5-7b",
        "Qwen3ForCausalLM": "tiny-qwen3",
        "Gemma2ForCausalLM": "tiny-gemma2",
        "CohereForCausalLM": "tiny-cohere",
        "Phi3ForCausalLM": "tiny-phi3",
        "GraniteForCausalLM": "tiny-granite",
    }
    for arch, model_id in arch_dirs.items():
        d = make_model_dir(tmp_path, model_id, bpw=4.0, name=arch, architectures=[arch])
        real = exl2.ExLlamaV2Config(str(d)).arch.lm.supports_tp
        spec = load_model_spec(d)
        assert spec.rules.lm.supports_tp is real, arch
        assert ("tp.architecture" in codes_of(_refusals(spec))) is (not real), arch
    assert set(arch_dirs) <= set(supported_architectures())


def _refusals(spec, **kw):
    args = {
        "gpu_count": 2,
        "backend": "flash_attn",
        "flash_attn_version": "2.7.4.post1",
        "sdpa_enabled": True,
    }
    args.update(kw)
    return tp.tp_refusals(spec, **args)


def test_tpcontext_refuses_what_we_refuse(exl2, tmp_path):
    from exllamav2.tensor_p import TPContext

    yi = make_model_dir(tmp_path, "yi-34b", bpw=4.0, architectures=["YiForCausalLM"])
    with pytest.raises(AssertionError, match="Tensor-parallel is not supported for YiForCausalLM"):
        TPContext(_model(exl2, yi), [24.0, 24.0])
    f = next(x for x in _refusals(load_model_spec(yi)) if x.code == "tp.architecture")
    assert "YiForCausalLM" in f.message
    odd = make_model_dir(tmp_path, "tiny-llama", bpw=4.0, name="odd", intermediate_size=608)
    with pytest.raises(AssertionError, match="divisible by 128"):
        TPContext(_model(exl2, odd), [24.0, 24.0])
    assert "tp.intermediate_size" in codes_of(_refusals(load_model_spec(odd)))
    assert not _refusals(load_model_spec(make_model_dir(tmp_path, "qwen2.5-7b", bpw=4.0)))


def test_moe_and_post_norm_architectures_that_set_supports_tp_are_refused(exl2, tmp_path):
    """Qwen3-MoE and GLM-4 set supports_tp in architecture.py, yet load_tp_gen never splits an
    ExLlamaV2MoEMLP, and the TP forwards pass only the pre-layernorm to the kernels: GLM-4's post norms,
    which the single-GPU forwards apply (or bake into the module's q handle), are skipped."""
    from exllamav2.attn import ExLlamaV2Attention
    from exllamav2.mlp import ExLlamaV2MLP
    from exllamav2.model import ExLlamaV2

    def names(fn):
        return set(fn.__code__.co_names)

    assert "ExLlamaV2MLP" in names(ExLlamaV2.load_tp_gen)
    assert "ExLlamaV2MoEMLP" not in names(ExLlamaV2.load_tp_gen)
    for cls, single, tp_fns in (
        (ExLlamaV2Attention, ExLlamaV2Attention.forward_paged, ("forward_tp", "forward_paged_tp")),
        (ExLlamaV2MLP, ExLlamaV2MLP.forward_torch, ("forward_tp",)),
    ):
        assert "post_layernorm" in names(single), cls
        for fn in tp_fns:
            assert "post_layernorm" not in names(getattr(cls, fn)), (cls, fn)

    moe = make_model_dir(tmp_path, "qwen3-30b-a3b", bpw=4.0)
    glm = make_model_dir(tmp_path, "glm4-32b-0414", bpw=4.0)
    for d, code in ((moe, "tp.moe"), (glm, "tp.post_norms")):
        assert exl2.ExLlamaV2Config(str(d)).arch.lm.supports_tp
        assert code in codes_of(_refusals(load_model_spec(d))), d.name
    attn = next(m for m in _model(exl2, glm).modules if isinstance(m, ExLlamaV2Attention))
    assert attn.post_layernorm is not None  # the norm the TP kernels skip is really built


def test_tp_split_refuses_unquantized_linears(exl2, tmp_path):
    """linear.py tp_split asserts an EXL2 q_handle: an FP16 checkpoint cannot be split."""
    from exllamav2.tensor_p import BROADCAST_Q, TPContext

    d = make_model_dir(tmp_path, "tiny-llama", quant="fp16")
    model = _model(exl2, d)
    model.tp_context = TPContext(model, [24.0, 24.0])
    with pytest.raises(AssertionError, match="Can only split quantized tensor"):
        model.modules_dict["model.layers.0.self_attn.q_proj"].tp_split(BROADCAST_Q, dim=64)
    assert "tp.not_exl2" in codes_of(_refusals(load_model_spec(d)))


def test_qwen3_head_norms_are_skipped_by_the_tp_path(exl2):
    """The TP attention functions never touch q_norm/k_norm (the non-TP ones do), and the extension's TP
    kernels take no head-norm argument: Qwen3 under TP computes without its head norms."""
    from exllamav2.attn import ExLlamaV2Attention

    def names(fn):
        return set(fn.__code__.co_names)

    assert "q_norm" in names(ExLlamaV2Attention.forward_paged) and "q_norm" in names(
        ExLlamaV2Attention.forward_torch
    )
    assert "q_norm" not in names(ExLlamaV2Attention.forward_paged_tp)
    assert "q_norm" not in names(ExLlamaV2Attention.forward_tp)
    src = (Path(inspect.getfile(ExLlamaV2Attention)).parent / "exllamav2_ext" / "ext_qattn.cpp").read_text()
    for fn in ("tp_attn_forward_paged_", "tp_attn_forward_"):
        params = re.search(rf"void {fn}\s*\((.*?)\)\s*\{{", src, re.S).group(1)
        assert "norm" in params and "q_norm" not in params and "k_norm" not in params
    assert "tp.qk_norm" in codes_of(_refusals(load_model_spec_tiny("tiny-qwen3")))


def load_model_spec_tiny(arch, **overrides):
    import tempfile

    return load_model_spec(make_model_dir(Path(tempfile.mkdtemp()), arch, bpw=4.0, **overrides))


def test_tp_kernels_need_flash_attn_with_the_2_6_1_signature(exl2):
    """Both TP kernels import flash_attn_2_cuda and call fwd_kvcache with 20 arguments (q ... num_splits),
    the signature flash-attn has had since 2.6.1 (leftpad_k_)."""
    from exllamav2.attn import ExLlamaV2Attention

    src = (Path(inspect.getfile(ExLlamaV2Attention)).parent / "exllamav2_ext" / "ext_qattn.cpp").read_text()
    assert src.count('py::module_::import("flash_attn_2_cuda").attr("fwd_kvcache")') == 3  # 1 commented
    for call in re.findall(r"fwd_kvcache_func\s*\((.*?)\);", src, re.S):
        args = [a for a in re.sub(r"//[^\n]*", "", call).split(",") if a.strip()]
        assert len(args) == 20
    spec = load_model_spec_tiny("tiny-llama")
    assert "tp.attention.flash_attn_too_old" in codes_of(_refusals(spec, flash_attn_version="2.6.0"))
    assert not _refusals(spec, flash_attn_version="2.6.1")


class _Dispatch(Exception):
    pass


def _tp_attention(exl2, directory):
    from exllamav2.attn import ExLlamaV2Attention
    from exllamav2.tensor_p import TPContext

    model = _model(exl2, directory, seq=256, chunk=16)
    model.tp_context = TPContext(model, [24.0, 24.0], 256)
    attn = next(m for m in model.modules if isinstance(m, ExLlamaV2Attention))
    attn.is_tp = True
    return model, attn


def test_tp_attention_dispatch(exl2, tmp_path, monkeypatch):
    """attn.py forward: TP with a cache goes to forward_tp (flash kernel) only with flash-attn, else to
    forward_tp_old; the paged path always goes to forward_paged_tp (flash kernel)."""
    import exllamav2.attn as attn_mod
    from exllamav2.attn_params import Params

    _, attn = _tp_attention(exl2, make_model_dir(tmp_path, "tiny-llama", bpw=4.0))
    seen = []
    for name in ("forward_tp", "forward_tp_old", "forward_paged_tp"):
        monkeypatch.setattr(attn, name, lambda *a, _n=name, **k: seen.append(_n))
    x = torch.zeros(1, 4, attn.hidden_size, dtype=torch.half)
    for flash in (True, False):
        monkeypatch.setattr(attn_mod, "has_flash_attn", flash)
        attn.forward(x, cache=object(), attn_params=Params(1, 4, 0))
    paged = object.__new__(attn_mod.ExLlamaV2Attention.PagedParams)
    attn.forward(x, cache=object(), attn_params=paged)
    assert seen == ["forward_tp", "forward_tp_old", "forward_paged_tp"]


def test_forward_tp_old_asserts_sdpa(exl2, tmp_path, monkeypatch):
    """Without flash-attn the real forward_tp_old asserts SDPA: with no_sdpa (what the planner sets on
    0.3.2) or a softcapping model the first forward fails; with SDPA on it gets past the assert (to the
    broadcast onto the GPUs, where CPU torch stops)."""
    import exllamav2.attn as attn_mod
    from exllamav2.attn_params import Params

    model, attn = _tp_attention(exl2, make_model_dir(tmp_path, "tiny-llama", bpw=4.0))
    attn.q_handle = 1
    monkeypatch.setattr(attn_mod, "has_flash_attn", False)
    monkeypatch.setattr(attn_mod, "has_lower_right_sdpa", True)
    params = Params(1, 4, 0)
    params.position_offsets_tp, params.past_len_tp = [None, None], [None, None]  # prep_tp moves these to CUDA
    x = torch.zeros(1, 4, attn.hidden_size, dtype=torch.half)
    spec = load_model_spec_tiny("tiny-llama")
    model.config.no_sdpa = True
    with pytest.raises(AssertionError, match="TP attention without flash-attn must use Torch SDPA"):
        attn.forward_tp_old(x, None, params)
    assert "tp.attention.assertion" in codes_of(_refusals(spec, backend="matmul", sdpa_enabled=False))
    model.config.no_sdpa = False
    with pytest.raises(RuntimeError, match="accelerator"):  # past the assert, at the broadcast to GPU 0
        attn.forward_tp_old(x, None, params)
    assert "tp.attention.sdpa_defect" in codes_of(_refusals(spec, backend="sdpa", sdpa_enabled=True))
    assert "tp.attention.sdpa_defect" in codes_of(_refusals(spec, backend="xformers", sdpa_enabled=True))


def test_tp_sdpa_path_on_a_head_slice_is_not_causal(exl2, tmp_path, monkeypatch):
    """forward_tp_old calls _attn_torch per device on that device's heads, causal by default; on 0.3.2 the
    SDPA branch then gets no mask: each device's slice equals bidirectional attention."""
    import exllamav2.attn as attn_mod
    from exllamav2.attn_params import Params

    model, attn = _tp_attention(exl2, make_model_dir(tmp_path, "tiny-llama", bpw=4.0))
    monkeypatch.setattr(attn_mod, "has_lower_right_sdpa", True)
    model.config.no_sdpa = False
    (_, a, b) = model.tp_context.kv_split[0]
    heads_kv, heads_q, q_len, hd = b - a, (b - a) * attn.num_key_value_groups, 16, attn.head_dim
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, q_len, heads_q, hd, generator=g).half()
    k = torch.randn(1, q_len, heads_kv, hd, generator=g).half()
    v = torch.randn(1, q_len, heads_kv, hd, generator=g).half()
    out = attn._attn_torch(1, q_len, q, k, v, Params(1, q_len, 0), model.config).float()

    def ref(causal):
        rep = attn.num_key_value_groups
        qq = q.float().transpose(1, 2)
        kk, vv = (t.float().repeat_interleave(rep, 2).transpose(1, 2) for t in (k, v))
        o = torch.nn.functional.scaled_dot_product_attention(qq, kk, vv, is_causal=causal, scale=attn.scaling)
        return o.transpose(1, 2).reshape(1, q_len, heads_q * hd)

    assert (out - ref(False)).abs().max() < 1e-2
    assert (out - ref(True)).abs().max() > 0.5


# --------------------------------------------------------------------------------------- composition


def test_tp_memory_parts_add_up(dirs):
    spec = load_model_spec(dirs["qwen2.5-72b"])
    split = tp.define_tp_split(spec, [24.0 * 1024] * 2, cache_tokens=32768, cache_mode="Q4")
    devices = tp.tp_memory(spec, split, cache_mode="Q4", max_seq_len=32768, max_input_len=2048)
    assert [d.device for d in devices] == [0, 1]
    mib = 1024**2
    for d in devices:
        assert d.kv_heads == 4 and d.q_heads == 32  # 8 KV and 64 query heads, halved
        # By hand (Qwen2.5-72B: 80 layers, head_dim 128, vocab 152064, hidden 8192):
        # sin + cos, fp16, 32768 x 128 each = 16 MiB, twice: the context's tables + get_sin_cos copies
        assert d.rope_bytes == 2 * 2 * 32768 * 128 * 2 == 32 * mib
        # Q4: 4 KV heads x 128 = 512 values per token per K and per V, half a byte each, plus an fp16 scale
        # per 32 values; 80 layers at 32768 tokens
        assert d.cache_bytes == 80 * 2 * (32768 * 512 // 2 + 32768 * 512 // 32 * 2) == 1440 * mib
        assert d.staging_bytes == 2 * 32768 * 512 * 2 == 64 * mib  # one layer's FP16 K/V pair
        # 8 head rows: the final norm's two hidden-state broadcasts and a rows x (vocab / 2) fp16 output
        assert d.transient_bytes == 2 * 8 * 8192 * 2 + 8 * (152064 // 2) * 2
        assert d.total_bytes == (d.weights_bytes + d.cache_bytes + d.staging_bytes + d.scratch_bytes
                                 + d.rope_bytes + d.transient_bytes)
    assert devices[0].load_peak_extra_bytes > 0 and devices[1].load_peak_extra_bytes == 0


def test_worth_it_judgement():
    g3090 = ("NVIDIA GeForce RTX 3090", 24 * 2**30, "8.6")
    g4090 = ("NVIDIA GeForce RTX 4090", 24 * 2**30, "8.9")
    g3060 = ("NVIDIA GeForce RTX 3060", 12 * 2**30, "8.6")
    assert tp.tp_worth_it([g3090, g3090], fits_one_gpu=False, tp_fits=True).code == "tp.worth_it"
    assert tp.tp_worth_it([g3090, g3090], fits_one_gpu=True, tp_fits=True).code == "tp.not_worth.fits_one_gpu"
    assert tp.tp_worth_it([g3090, g4090], fits_one_gpu=False, tp_fits=True).code == "tp.not_worth.mixed_gpus"
    assert tp.tp_worth_it([g3090, g3060], fits_one_gpu=False, tp_fits=True).code == "tp.not_worth.mixed_gpus"
    assert tp.tp_worth_it([g3090], fits_one_gpu=False, tp_fits=True).code == "tp.not_worth.single_gpu"
    assert (
        tp.tp_worth_it([g3090, g3090], fits_one_gpu=False, tp_fits=False).code == "tp.not_worth.does_not_fit"
    )


def test_single_gpu_and_lora_refusals(dirs):
    spec = load_model_spec(dirs["llama3-8b"])
    assert codes_of(_refusals(spec, gpu_count=1)) == {"tp.single_gpu"}
    assert codes_of(_refusals(spec, lora_count=2)) == {"tp.lora_ignored"}
