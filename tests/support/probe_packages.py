"""Installed-looking packages (a module plus a .dist-info) whose import misbehaves, for the probe tests.

`make_package(site, "hangpkg", "1.0", BEHAVIOURS["hang"])` writes `site/hangpkg/__init__.py` and
`site/hangpkg-1.0.dist-info/METADATA`, so the probe sees it as installed and imports it in a child.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

BEHAVIOURS = {
    # Sleeps forever, after starting a grandchild that sleeps too (the probe must kill the whole group).
    "hang": (
        "import os, subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "pidfile = os.environ.get('EXLX_TEST_PIDFILE')\n"
        "if pidfile:\n"
        "    open(pidfile, 'w').write(str(p.pid))\n"
        "time.sleep(300)\n"
    ),
    "segfault": "import ctypes\nctypes.string_at(0)\n",
    "exit": "import os\nos._exit(3)\n",
    "sysexit": "raise SystemExit(4)\n",
    # Pages of warning noise, then the error that matters (what a torch/flash-attn ABI break looks like).
    "noisy": (
        "import sys, warnings\n"
        "for i in range(300):\n"
        "    print('UserWarning: noise line %d' % i, file=sys.stderr)\n"
        "warnings.warn('this is deprecated', DeprecationWarning)\n"
        "raise ImportError('/site/noisy/_C.so: undefined symbol: _ZN3c104cuda9SetDeviceEi')\n"
    ),
    "ok": "__version__ = '1.0'\n",
    # Proves the metadata pass does not import: importing writes a marker file.
    "marker": (
        "import os\n"
        "open(os.environ['EXLX_TEST_MARKER'], 'w').write('imported')\n"
    ),
}


def make_package(site: Path, dist: str, version: str, body: str, module: str | None = None) -> Path:
    """A package `module` (default: `dist` with - -> _) with a dist-info for `dist`==`version`."""
    module = module or dist.replace("-", "_")
    pkg = site / module
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(body)
    info = site / f"{re.sub(r'[-_.]+', '_', dist)}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(module + "\n")
    return pkg


def find_python(version: str) -> Path | None:
    """A real interpreter of `version` ("3.8", "2.7") if this machine has one (pyenv or PATH)."""
    candidates = sorted(Path.home().glob(f".pyenv/versions/{version}*/bin/python{version}"))
    if shutil.which(f"python{version}"):
        candidates.append(Path(shutil.which(f"python{version}") or ""))
    for candidate in candidates:
        try:
            proc = subprocess.run([str(candidate), "-c", "pass"], capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        if proc.returncode == 0:
            return candidate
    return None
