"""Real xformers releases installed side by side (`pip install --no-deps --target DIR`), cached.

The cache lives in $EXLX_TEST_CACHE (default ~/.cache/exlx-autocfg-tests) so CI downloads each release
once per machine. Put `xformers_site(version)` in front of a child's PYTHONPATH to run against it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

CACHE = Path(os.environ.get("EXLX_TEST_CACHE", Path.home() / ".cache" / "exlx-autocfg-tests"))


def xformers_site(version: str) -> Path:
    """A directory holding the real xformers `version` (and nothing else), installed on first use."""
    return _target_install(f"xformers=={version}", CACHE / f"xformers-{version}")


def _target_install(requirement: str, target: Path) -> Path:
    marker = target / ".complete"
    if marker.exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:  # pytest-xdist or parallel CI jobs share the cache
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return target
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary=:all:",
               "--target", str(tmp), requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"could not install {requirement}: {proc.stderr.strip()[-500:]}")
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        marker.touch()
    return target


def child_env(*front: Path, **extra: str) -> dict[str, str]:
    """os.environ with `front` directories in front of PYTHONPATH, for a child interpreter."""
    env = dict(os.environ)
    parts = [str(p) for p in front]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.update(extra)
    return env
