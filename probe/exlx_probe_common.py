"""Shared helpers of the probe (stdlib only, Python >= 3.8): error lines, build tags, targets, files."""

import json
import os
import re

SCHEMA = 1
RESULT_MARKER = "@@EXLX-PROBE-RESULT@@"
HERE = os.path.dirname(os.path.abspath(__file__))
# The targets are rules data: they live in profiles/ beside the other rules (a sibling of probe/ both in the
# repository and in the installed package, exlx_autocfg/probe -> exlx_autocfg/profiles).
DEFAULT_TARGETS = os.path.normpath(os.path.join(HERE, os.pardir, "profiles", "probe_targets.json"))
PROBE_SCRIPT = os.path.join(HERE, "exlx_probe.py")  # children run this script with --child / --zygote


def probe_files_key():
    """Stat keys of every probe source file (part of the cache fingerprint)."""
    return [_stat_key(os.path.join(HERE, name)) for name in sorted(_listdir(HERE)) if name.endswith(".py")]


_NOISE = re.compile(
    r"(warn(ing)?\b|warnings\.warn|^\s*@|^\s*from |^\s*import |deprecat|^\s*\^+\s*$|^\s*~+\s*$|^Traceback)",
    re.IGNORECASE,
)


_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)|OSError|KeyboardInterrupt)\b.*")


def first_useful_line(text, limit=400):
    """The line that explains a failure: a fatal error, the exception line of the LAST traceback, or the
    first line that is not warning noise."""
    if not text:
        return None
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "Fatal Python error" in ln or "Segmentation fault" in ln:
            return ln.strip()[:limit]
    if any(ln.startswith("Traceback") for ln in lines):
        tail = lines[max(i for i, ln in enumerate(lines) if ln.startswith("Traceback")):]
        for ln in reversed(tail):
            if _EXC_LINE.match(ln.strip()):
                return ln.strip()[:limit]
    for ln in lines:
        if not _NOISE.search(ln) and not ln.startswith(" "):
            return ln.strip()[:limit]
    return lines[0].strip()[:limit] if lines else None


def exc_line(exc):
    message = first_useful_line(str(exc)) or ""
    name = type(exc).__name__
    return "%s: %s" % (name, message) if message else name


def parse_local_tag(version):
    """('2.3.0+cu121') -> ('cu121', {'cuda': '12.1'}); also rocm6.1, cu128.torch2.9.0, cpu,
    cu12torch2.9cxx11abiTRUE (flash-attn wheels: CUDA major only)."""
    if not version or "+" not in version:
        return None, {}
    tag = version.split("+", 1)[1]
    build = {}
    low = tag.lower()
    m = re.search(r"(?:^|[^a-z])cu(\d+)", low) or re.match(r"cu(\d+)", low)
    if m:
        digits = m.group(1)
        if len(digits) == 2 and int(digits) < 50:  # flash-attn wheels: cu12 = CUDA 12.x
            build["cuda"] = digits
        else:  # cu92 = 9.2, cu121 = 12.1
            build["cuda"] = "%s.%s" % (digits[:-1], digits[-1])
    m = re.search(r"rocm(\d+(?:\.\d+)*)", low)
    if m:
        build["rocm"] = m.group(1)
    m = re.search(r"torch(\d+(?:\.\d+)*)", low)
    if m:
        build["torch"] = m.group(1)
    m = re.search(r"cxx11abi(true|false)", low)
    if m:
        build["cxx11_abi"] = m.group(1)
    if re.search(r"(?:^|[^a-z])cpu(?:$|[^a-z])", low):
        build["device"] = "cpu"
    return tag, build


def load_targets(path):
    """The target list; keys a custom file leaves out (tests pass small ones) come from the shipped
    probe_targets.json: distribution names, import names, JIT extensions, torch-dependent libraries."""
    with open(path, "r", encoding="utf-8") as fh:
        data = json.load(fh)
    if os.path.abspath(path) != DEFAULT_TARGETS:
        with open(DEFAULT_TARGETS, "r", encoding="utf-8") as fh:
            shipped = json.load(fh)
        for key in ("distributions", "import_names", "jit_extensions", "torch_dependent"):
            data.setdefault(key, shipped.get(key))
    for key in ("distributions", "import_names", "jit_extensions"):
        data[key] = data.get(key) or {}
    data["torch_dependent"] = data.get("torch_dependent") or []
    return data


def import_name(targets, library):
    return targets["import_names"].get(library, library.replace("-", "_"))


def _condense(message):
    """A multi-line warning as one line: its lines joined, indentation dropped."""
    return " ".join(message.split())


def _write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def _read_json(path):
    try:
        with open(path, "r", encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def _stat_key(path):
    try:
        st = os.stat(path)
    except OSError:
        return "%s:missing" % path
    return "%s:%d:%d" % (path, st.st_mtime_ns, st.st_size)


def _read_text(path, limit=4096):
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            return fh.read(limit)
    except OSError:
        return None


def _listdir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []
