"""The probe against real packages: two xformers releases on either side of the import-path move, the real
exllamav2 0.3.2 wheel (pure Python: JIT build needed), and exllamav2_ext variants (prebuilt, broken,
JIT-cached). All probes of this module run in parallel, once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from exlx_autocfg.data import probe_script
from exlx_autocfg.facts.detect import facts_from_probe
from exlx_autocfg.facts.types import Facts, GPUReport
from tests.support.envs import child_env, xformers_site
from tests.support.standin import STANDIN_SITE

MASK_ATTN_BIAS = "xformers.ops.fmha.attn_bias.LowerTriangularFromBottomRightMask"
MASK_FMHA = "xformers.ops.fmha.LowerTriangularFromBottomRightMask"


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """name -> probe document; the probes run side by side to keep the module under ~10 s."""
    tmp = tmp_path_factory.mktemp("probe_real")
    broken = tmp / "broken_ext"
    broken.mkdir()
    (broken / "exllamav2_ext.py").write_text(
        "raise ImportError('/venv/exllamav2_ext.cpython-311-x86_64-linux-gnu.so: undefined symbol: "
        "_ZN3c104cuda20CUDACachingAllocator9allocatorE')\n"
    )
    jit_root = tmp / "torch_extensions"
    (jit_root / "exllamav2_ext").mkdir(parents=True)
    (jit_root / "exllamav2_ext" / "exllamav2_ext.so").write_bytes(b"not an ELF file")
    runs = {
        # torch + xformers: checked in children forked after one `import torch` (the default path);
        # xformers alone (0.0.35 below): a plain child. Both must report the same kind of facts.
        "xf26": (["--libraries", "torch,xformers"], child_env(xformers_site("0.0.26.post1"))),
        "xf35": (["--libraries", "xformers"], child_env(xformers_site("0.0.35"))),
        "exl2": (["--no-import"], child_env()),
        "exl2-prebuilt": (["--libraries", "exllamav2"], child_env(STANDIN_SITE)),
        "exl2-broken": (["--libraries", "exllamav2"], child_env(broken)),
        "exl2-cached": (["--no-import"], child_env(TORCH_EXTENSIONS_DIR=str(jit_root))),
    }
    procs = {
        name: subprocess.Popen([sys.executable, str(probe_script()), "--timeout", "90", *args], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, (args, env) in runs.items()
    }
    docs = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        docs[name] = json.loads(out)
    return docs


def test_xformers_0026_both_mask_paths_resolve(probes: dict[str, dict]) -> None:
    lib = probes["xf26"]["libraries"]["xformers"]
    assert lib["version"] == "0.0.26.post1" and lib["import_status"] == "ok"
    paths = lib["details"]["import_paths"]
    assert paths[MASK_ATTN_BIAS] and paths[MASK_FMHA]
    assert paths["xformers.ops.fmha.BlockDiagonalMask"]
    assert paths["xformers.ops.memory_efficient_attention"]


def test_forked_checks_keep_their_own_facts(probes: dict[str, dict]) -> None:
    torch = probes["xf26"]["libraries"]["torch"]
    assert torch["import_status"] == "ok" and torch["details"]["version"] == "2.13.0+cpu"
    assert torch["details"]["has_causal_lower_right"] is True
    xformers = probes["xf26"]["libraries"]["xformers"]
    assert xformers["import_seconds"] >= 0 and "built_for_warning" in xformers["details"]


def test_xformers_0035_only_attn_bias_path(probes: dict[str, dict]) -> None:
    d = probes["xf35"]["libraries"]["xformers"]["details"]
    assert d["import_paths"][MASK_ATTN_BIAS] is True
    assert d["import_paths"][MASK_FMHA] is False
    assert "cannot import name 'LowerTriangularFromBottomRightMask'" in d["import_path_errors"][MASK_FMHA]
    assert d["built_for"]["torch"] == "2.10.0+cu128" and d["built_for"]["cuda"] == "12.8"


def test_xformers_built_for_warning_is_a_fact(probes: dict[str, dict]) -> None:
    d = probes["xf26"]["libraries"]["xformers"]["details"]
    assert d["has_cpp_library"] is False
    assert d["cpp_load_error"]  # the dlopen error behind xFormersInvalidLibException
    assert d["built_for"] == {"torch": "2.3.0+cu121", "cuda": "12.1", "python": "3.11.9", "hip": None,
                              "flash": "v2.5.6"}
    warning = d["built_for_warning"]
    assert "xFormers was built for: PyTorch 2.3.0+cu121 with CUDA 1201 (you have 2.13.0+cpu)" in warning
    facts = facts_from_probe(probes["xf26"], GPUReport(), env={})
    assert any("xformers 0.0.26.post1: C++/CUDA ops did not load" in p for p in facts.problems)
    assert Facts.from_json(facts.to_json()) == facts


def test_exllamav2_wheel_needs_jit_build(probes: dict[str, dict]) -> None:
    lib = probes["exl2"]["libraries"]["exllamav2"]
    assert lib["version"] == "0.3.2"
    assert lib["import_status"] == "not-tried" and lib["import_seconds"] is None
    d = lib["details"]
    assert d["ext"] == "jit-needed"
    assert d["jit"]["torch_cuda_version"] is None  # CPU torch, read from torch/version.py
    assert d["jit"]["cache_dir"].endswith("_cpu/exllamav2_ext")
    facts = facts_from_probe(probes["exl2"], GPUReport(), env={})
    assert any("exllamav2 0.3.2: JIT build needed" in p for p in facts.problems)
    assert any("has no CUDA/HIP, so the extension cannot be built" in p for p in facts.problems)


def test_exllamav2_prebuilt_extension_loads(probes: dict[str, dict]) -> None:
    lib = probes["exl2-prebuilt"]["libraries"]["exllamav2"]
    assert lib["details"]["ext"] == "prebuilt"
    assert lib["details"]["ext_path"] == str(Path(STANDIN_SITE) / "exllamav2_ext.py")
    assert lib["import_status"] == "ok" and lib["details"]["ext_loaded"] is True


def test_exllamav2_prebuilt_extension_with_undefined_symbol(probes: dict[str, dict]) -> None:
    lib = probes["exl2-broken"]["libraries"]["exllamav2"]
    assert lib["details"]["ext"] == "prebuilt-broken"
    assert lib["import_status"] == "error"
    assert "undefined symbol" in lib["details"]["ext_error"]
    facts = facts_from_probe(probes["exl2-broken"], GPUReport(), env={})
    assert any("prebuilt extension does not load" in p for p in facts.problems)


def test_exllamav2_jit_cache_is_found(probes: dict[str, dict]) -> None:
    lib = probes["exl2-cached"]["libraries"]["exllamav2"]
    assert lib["details"]["ext"] == "jit-cached"
    assert lib["details"]["ext_path"].endswith("torch_extensions/exllamav2_ext/exllamav2_ext.so")


@pytest.mark.parametrize(("probe", "version"), [("xf26", "0.0.26.post1"), ("xf35", "0.0.35")])
def test_release_table_agrees_with_the_real_wheel(probes: dict[str, dict], probe: str, version: str) -> None:
    """profiles/xformers.toml, written from the xformers tags, against what the probe reads from the real
    wheels: the torch the ops were built for (cpp_lib.json) and which mask import paths resolve."""
    from exlx_autocfg.facts.derived import derived_details, xformers_import_paths
    from exlx_autocfg.xformers_releases import xformers_release

    d = probes[probe]["libraries"]["xformers"]["details"]
    release = xformers_release(version)
    assert release is not None and release.version == version
    assert d["built_for"]["torch"].split("+")[0] == release.built_for_torch
    assert d["import_paths"][MASK_FMHA] is release.mask_in_fmha
    assert d["import_paths"][MASK_ATTN_BIAS] is release.mask_in_attn_bias
    assert d["import_paths"]["xformers.ops.fmha.BlockDiagonalMask"] is release.block_diag_in_fmha
    # What a what-if plan derives from the table is what the probe measures on the real wheel.
    derived = derived_details("xformers", version, "2.13.0")
    assert derived["import_paths"] == xformers_import_paths(release)
    assert all(d["import_paths"][path] is ok for path, ok in derived["import_paths"].items())
    # Whether the ops load on this torch: 0.0.26.post1 pins torch 2.3.0 (the table says no, and the real
    # load fails); 0.0.35 has a stable ABI (the table says yes: its load here fails only for want of the CUDA
    # runtime on this CPU machine, which no table entry claims to know).
    assert derived["has_cpp_library"] is release.loads_on_torch("2.13.0+cpu")
    assert d["has_cpp_library"] is False
    if release.stable_abi:
        assert "libcudart" in d["cpp_load_error"]
    else:
        assert f"PyTorch {release.built_for_torch}" in d["built_for_warning"]
