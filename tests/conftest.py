from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `tests.support` importable from every test module

# The probe caches import results per interpreter and PYTHONPATH; tests make many throwaway PYTHONPATHs,
# so they cache into a directory of their own (inherited by child processes), not the user's cache dir.
os.environ.setdefault("EXLX_CACHE_DIR", tempfile.mkdtemp(prefix="exlx-test-cache-"))

# The real huggingface_hub client runs against tests/support/fake_hub.py on 127.0.0.1, never anything else.
# The client reads these when it is imported, so they are set before anything imports it: a dead local
# endpoint unless a test points HF_ENDPOINT at its fake Hub, no telemetry (the client would fetch its agent
# registry from the endpoint), a throwaway HF_HOME, and no token or offline switch from the developer's shell.
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="exlx-test-hf-")
for _var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE",
             "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH"):
    os.environ.pop(_var, None)


@pytest.fixture
def no_hang():
    """A test that blocks (on a FIFO, say) fails after 20 s instead of hanging the suite."""
    import signal

    def alarm(signum, frame):
        raise TimeoutError("blocked: the command hung (a special file opened?)")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture
def no_exllama_switches(monkeypatch):
    """No EXLLAMA_NO_* in the environment, and the test process's own put back afterwards (prepare() and
    the loader set them in os.environ)."""
    from exlx_autocfg.exl2 import ENV

    for var in ENV.values():
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def exl2():
    """The real exllamav2 wheel, imported once with its compiled extension replaced by the stand-in."""
    from tests.support.standin import import_exllamav2

    return import_exllamav2()
