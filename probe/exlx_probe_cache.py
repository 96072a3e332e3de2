"""Probe cache: reuse import results while nothing they depend on changed (stdlib only, Python >= 3.8)."""

import json
import os
import sys

try:  # imported as exlx_autocfg.probe.exlx_probe_common
    from .exlx_probe_common import (
        SCHEMA,
        _listdir,
        _read_text,
        _stat_key,
        import_name,
        probe_files_key,
    )
except ImportError:  # run as a script: probe/ is sys.path[0]
    from exlx_probe_common import (  # type: ignore[no-redef]
        SCHEMA,
        _listdir,
        _read_text,
        _stat_key,
        import_name,
        probe_files_key,
    )


def fingerprint(libs, targets_path, targets):
    """What the import results depend on: this probe, the interpreter and its path, the packages' dist-info
    and module files, the environment that steers imports, and the GPU driver."""
    import hashlib

    env_keys = set(targets.get("env_vars", [])) | {
        "PATH", "PYTHONPATH", "LD_LIBRARY_PATH", "LD_PRELOAD", "CUDA_HOME", "CUDA_PATH",
        "PYTORCH_NVML_BASED_CUDA_CHECK"}
    parts = {
        "probe": probe_files_key(),
        "targets": _stat_key(targets_path),
        "python": [sys.executable, sys.version, sys.path],
        "env": sorted((k, os.environ[k]) for k in env_keys if k in os.environ),
        "driver": [_read_text("/proc/driver/nvidia/version"), _read_text("/sys/module/amdgpu/version"),
                   sorted(n for n in _listdir("/dev") if n.startswith(("nvidia", "kfd", "dri")))],
        "libs": {},
    }
    import importlib.util

    for name, lib in sorted(libs.items()):
        if not lib.get("installed"):
            parts["libs"][name] = None
            continue
        origin = None
        try:
            spec = importlib.util.find_spec(import_name(targets, name))
            origin = spec.origin if spec is not None else None
        except (ImportError, ValueError):
            pass
        parts["libs"][name] = [lib.get("version"), lib.get("location"), _stat_key(lib.get("_dist_path") or ""),
                               _stat_key(origin) if origin else None,
                               _stat_key(lib["details"]["ext_path"]) if lib["details"].get("ext_path") else None]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def load_cache(path):
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) and data.get("schema") == SCHEMA else {}
    except (OSError, ValueError):
        return {}


def save_cache(path, data):
    """Atomic: a reader sees the old file or the new one, never half of one."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = "%s.%d.tmp" % (path, os.getpid())
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache dir only costs speed
