from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `tests.support` importable from every test module

# The probe caches import results per interpreter and PYTHONPATH; tests make many throwaway PYTHONPATHs,
# so they cache into a directory of their own (inherited by child processes), not the user's cache dir.
os.environ.setdefault("EXLX_CACHE_DIR", tempfile.mkdtemp(prefix="exlx-test-cache-"))
