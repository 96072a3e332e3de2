"""Probe, metadata side: what is installed, read without importing anything (stdlib only, Python >= 3.8).

Distributions are found by scanning sys.path for dist-info/egg-info the way importlib.metadata does,
without importing importlib.metadata (~50 ms of a 0.3 s budget). exllamav2/exllamav3 get their
extension facts here: the compiled module, torch's JIT cache, nvcc, ninja, a compiler.
"""

import os
import re
import shutil
import subprocess
import sys

try:  # imported as exlx_autocfg.probe.exlx_probe_common
    from .exlx_probe_common import (
        _stat_key,
        exc_line,
        parse_local_tag,
    )
except ImportError:  # run as a script: probe/ is sys.path[0]
    from exlx_probe_common import (  # type: ignore[no-redef]
        _stat_key,
        exc_line,
        parse_local_tag,
    )


_LISTINGS = {}


def _listing(entry):
    """Directory names of one sys.path entry, read once (the probe looks for several packages)."""
    if entry not in _LISTINGS:
        try:
            _LISTINGS[entry] = os.listdir(entry or os.curdir)
        except OSError:
            _LISTINGS[entry] = []
    return _LISTINGS[entry]


def _normalize(name):
    return re.sub(r"[-_.]+", "_", name).lower()


def _read_headers(path):
    """Name and Version from a METADATA / PKG-INFO file (the headers come first)."""
    out = {}
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    break
                key, sep, value = line.partition(":")
                if sep and key in ("Name", "Version"):
                    out[key] = value.strip()
    except OSError:
        pass
    return out


def _find_distribution(names):
    """(name, version, location, dist-info path) of the first installed distribution among `names`,
    searching sys.path in order the way importlib.metadata does, without importing it (it costs ~50 ms
    of a 0.3 s budget)."""
    wanted = [_normalize(n) for n in names]
    for want in wanted:
        for entry in sys.path:
            for item in _listing(entry):
                low = item.lower()
                if not (low.endswith(".dist-info") or low.endswith(".egg-info")):
                    continue
                stem = low.rsplit(".", 1)[0]
                if _normalize(stem.split("-", 1)[0]) != want:
                    continue
                path = os.path.join(entry or os.curdir, item)
                meta = os.path.join(path, "METADATA" if low.endswith(".dist-info") else "PKG-INFO")
                if not os.path.isfile(meta) and os.path.isfile(path):
                    meta = path  # an egg-info file, not a directory
                headers = _read_headers(meta)
                version = headers.get("Version") or (stem.split("-", 1)[1] if "-" in stem else None)
                if version:
                    return headers.get("Name") or names[0], version, os.path.abspath(entry or os.curdir), path
    return None


def metadata_facts(library, targets):
    names = targets["distributions"].get(library, [library])
    found = _find_distribution(names)
    facts = {"name": library, "installed": False, "version": None, "local_tag": None, "build": {},
             "location": None, "import_status": "not-tried", "import_error": None, "import_seconds": None,
             "details": {}}
    if found is None:
        return facts
    dist_name, version, location, dist_path = found
    tag, build = parse_local_tag(version)
    facts.update({"installed": True, "version": version, "local_tag": tag, "build": build, "location": location})
    facts["_dist_path"] = dist_path  # for the cache key; not in the output
    if _normalize(dist_name) != _normalize(library):
        facts["details"]["distribution"] = dist_name
    return facts


def torch_static_versions(torch_location):
    """torch/version.py read as text (no import): cuda and hip versions torch was built with."""
    out = {}
    if not torch_location:
        return out
    path = os.path.join(torch_location, "torch", "version.py")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return out
    for key in ("cuda", "hip"):
        m = re.search(r"^%s\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]" % key, text, re.MULTILINE)
        out[key] = m.group(1) if m else None
    return out


def _run_version(cmd, timeout=10.0):
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                              universal_newlines=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout


def nvcc_facts(with_version, known=None):
    """Where torch's cpp_extension would find nvcc: CUDA_HOME/CUDA_PATH, then PATH, then /usr/local/cuda."""
    exe = "nvcc.exe" if os.name == "nt" else "nvcc"
    nvcc = None
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "bin", exe)):
        nvcc = os.path.join(home, "bin", exe)
    if nvcc is None:
        nvcc = shutil.which("nvcc")
    if nvcc is None and os.path.exists("/usr/local/cuda/bin/nvcc"):
        nvcc = "/usr/local/cuda/bin/nvcc"
    version = None
    if nvcc and with_version:
        key = _stat_key(nvcc)
        if known is not None and key in known:
            return nvcc, known[key]
        text = _run_version([nvcc, "--version"]) or ""
        m = re.search(r"release (\d+\.\d+)", text)
        version = m.group(1) if m else None
        if known is not None:
            known[key] = version
    return nvcc, version


def jit_extension_facts(library, ext_name, torch_facts, no_import, nvcc_known=None):
    """What `import <library>` would do about its compiled extension, decided without importing it."""
    import importlib.util

    details = {}
    spec = None
    try:
        spec = importlib.util.find_spec(ext_name)
    except (ImportError, ValueError) as exc:
        details["ext_error"] = exc_line(exc)
    torch_cuda = torch_facts.get("cuda")
    torch_hip = torch_facts.get("hip")
    if torch_hip:
        accel = "rocm" + torch_hip.replace(".", "")
    elif torch_cuda:
        accel = "cu" + torch_cuda.replace(".", "")
    else:
        accel = "cpu"
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        cache_dir = os.path.join(root, ext_name)
    else:
        cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = "py%d%d%s_%s" % (sys.version_info[0], sys.version_info[1], getattr(sys, "abiflags", ""), accel)
        cache_dir = os.path.join(os.path.realpath(os.path.join(cache_home, "torch_extensions")), folder, ext_name)
    suffix = ".pyd" if os.name == "nt" else ".so"
    cached_so = os.path.join(cache_dir, ext_name + suffix)
    nvcc, nvcc_version = nvcc_facts(with_version=not no_import, known=nvcc_known)
    ninja = shutil.which("ninja")
    beside = os.path.join(os.path.dirname(sys.executable), "ninja.exe" if os.name == "nt" else "ninja")
    compiler = shutil.which(os.environ.get("CXX") or ("cl" if os.name == "nt" else "c++"))
    details["jit"] = {
        "nvcc": nvcc,
        "nvcc_version": nvcc_version,
        "ninja": ninja or (beside if os.path.exists(beside) else None),
        "ninja_on_path": bool(ninja),
        "compiler": compiler,
        "cache_dir": cache_dir,
        "torch_cuda_version": torch_cuda,
        "torch_hip_version": torch_hip,
    }
    load_path = None
    if spec is not None and spec.origin and spec.origin not in ("built-in", "namespace"):
        details["ext"] = "prebuilt"
        details["ext_path"] = spec.origin
        load_path = spec.origin
    elif os.path.exists(cached_so):
        details["ext"] = "jit-cached"
        details["ext_path"] = cached_so
        load_path = cached_so
    else:
        details["ext"] = "jit-needed"
    details.setdefault("ext_error", None)
    return details, load_path
