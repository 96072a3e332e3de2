"""`exllamav2-ext` on real broken extensions: a shared object that references a torch C++ symbol this torch
does not export, compiled here with the system C compiler, placed (a) as a prebuilt `exllamav2_ext` on
PYTHONPATH (exllamav2#427) and (b) in torch's JIT extension cache (the stale cache after a torch upgrade).
The real probe loads each one with dlopen, exactly as `import exllamav2_ext` would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from exlx_autocfg.checks import run_checks
from exlx_autocfg.facts.detect import facts_from_probe
from exlx_autocfg.facts.probe_runner import run_probe
from exlx_autocfg.facts.types import GPUReport

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("cc") is None and shutil.which("gcc") is None, reason="needs a C compiler"
    ),
]

# The symbol from exllamav2#427 / #522: c10::cuda::SetDevice(int), absent from a CPU (or another) torch.
MISSING = "_ZN3c104cuda9SetDeviceEi"


def _compile_ext(target: Path) -> Path:
    src = target.parent / "ext.c"
    src.write_text(f"extern void {MISSING}(int);\nvoid PyInit_exllamav2_ext(void) {{ {MISSING}(0); }}\n")
    cc = shutil.which("cc") or shutil.which("gcc")
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(target), str(src)], check=True, capture_output=True)
    return target


def _facts(env: dict[str, str]):
    doc = run_probe(libraries=["exllamav2"], env=env, timeout=60)
    return facts_from_probe(doc, GPUReport(), env=env)


@pytest.fixture(scope="module")
def broken_ext_facts(tmp_path_factory):
    prebuilt_dir = tmp_path_factory.mktemp("prebuilt")
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    _compile_ext(prebuilt_dir / f"exllamav2_ext{suffix}")
    cache_root = tmp_path_factory.mktemp("torch_extensions")
    (cache_root / "exllamav2_ext").mkdir()
    _compile_ext(cache_root / "exllamav2_ext" / "exllamav2_ext.so")

    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TORCH_EXTENSIONS_DIR")}
    prebuilt_env = {**base, "PYTHONPATH": str(prebuilt_dir)}
    cached_env = {**base, "TORCH_EXTENSIONS_DIR": str(cache_root)}
    with ThreadPoolExecutor(2) as pool:  # two independent probes: use both cores
        prebuilt, cached = pool.map(_facts, [prebuilt_env, cached_env])
    return prebuilt, cached, cache_root


def test_prebuilt_extension_for_another_torch_fails(broken_ext_facts):
    facts, _, _ = broken_ext_facts
    assert facts.lib("exllamav2").details["ext"] == "prebuilt-broken"
    v = run_checks(facts, skip=["exllamav2-import"]).verdict("exllamav2-ext")
    assert v.status == "fail" and "does not load" in v.reason and MISSING in v.reason
    # No prebuilt wheel exists for this torch: back to the JIT wheel, pinned to the installed version.
    assert "pip install --force-reinstall --no-deps exllamav2==0.3.2" in v.fix


def test_prebuilt_extension_fix_names_the_wheel_for_a_cuda_torch(broken_ext_facts):
    facts, _, _ = broken_ext_facts
    facts = facts.from_dict(facts.to_dict())
    torch = facts.libraries["torch"] = facts.lib("torch")
    torch.installed, torch.version, torch.import_status = True, "2.9.1+cu128", "ok"
    torch.details["cuda_version"] = "12.8"
    facts.python.version = "3.12.3"
    v = run_checks(facts, skip=["exllamav2-import"]).verdict("exllamav2-ext")
    assert v.status == "fail"
    assert "exllamav2-0.3.2+cu128.torch2.9.0-cp312-cp312-linux_x86_64.whl" in v.fix
    assert "releases/download/v0.3.2/" in v.fix


def test_stale_jit_cache_fails_with_its_path(broken_ext_facts):
    _, facts, cache_root = broken_ext_facts
    assert facts.lib("exllamav2").details["ext"] == "jit-cached"
    v = run_checks(facts, skip=["exllamav2-import"]).verdict("exllamav2-ext")
    assert v.status == "fail" and MISSING in v.reason
    assert v.fix.startswith(f"delete the stale JIT cache at {cache_root / 'exllamav2_ext'}")
