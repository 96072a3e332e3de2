"""Probe, child side: the import checks of ONE library, run in its own process (stdlib only, Python >= 3.8).

Each check prints its result after every stage (a marker line with JSON), so a later hang or crash keeps
what was learnt. Per-library `details` keys are documented in exlx_autocfg/facts.py.
"""

import json
import os
import re
import sys
import time

try:  # imported as exlx_autocfg.probe.exlx_probe_common
    from .exlx_probe_common import (
        RESULT_MARKER,
        _condense,
        _read_text,
        exc_line,
        import_name,
        load_targets,
    )
except ImportError:  # run as a script: probe/ is sys.path[0]
    from exlx_probe_common import (  # type: ignore[no-redef]
        RESULT_MARKER,
        _condense,
        _read_text,
        exc_line,
        import_name,
        load_targets,
    )


class _Reporter(object):
    """Emits the child's result after every stage, so a later hang or crash keeps what was learnt."""

    def __init__(self, library):
        self.result = {"status": "ok", "error": None, "details": {}}
        self.library = library
        self.start = time.time()

    def emit(self, final=False):
        self.result["seconds"] = round(time.time() - self.start, 3)
        self.result["final"] = final
        line = "\n" + RESULT_MARKER + json.dumps(self.result, default=str) + "\n"
        try:
            os.write(1, line.encode("utf-8"))
        except OSError:
            pass

    def fail(self, exc):
        self.result["status"] = "error"
        self.result["error"] = exc_line(exc)


class _WarningCapture(object):
    """Collects Python warnings and WARNING+ log records (xformers logs its "built for" message)."""

    def __init__(self):
        import logging
        import warnings

        self.messages = []
        self._warnings = warnings.catch_warnings(record=True)
        self._records = self._warnings.__enter__()
        warnings.simplefilter("always")
        capture = self

        class Handler(logging.Handler):
            def emit(self, record):
                try:
                    capture.messages.append(record.getMessage())
                except Exception:
                    pass

        self._handler = Handler(level=logging.WARNING)
        logging.getLogger().addHandler(self._handler)

    def collected(self):
        out = []
        for w in self._records:
            out.append("%s: %s" % (w.category.__name__, str(w.message).strip()))
        out.extend(m.strip() for m in self.messages)
        seen = set()
        unique = []
        for m in out:
            if m and m not in seen:
                seen.add(m)
                unique.append(m)
        return unique


def resolve_path(dotted):
    """Import a dotted path; attributes after the deepest importable module are looked up with getattr."""
    import importlib

    parts = dotted.split(".")
    module = None
    index = len(parts)
    while index > 0:
        name = ".".join(parts[:index])
        try:
            module = importlib.import_module(name)
            break
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a dependency is missing, not our path component
                raise
            index -= 1
    if module is None:
        raise ModuleNotFoundError("No module named %r" % parts[0])
    obj = module
    for attr in parts[index:]:
        if not hasattr(obj, attr):
            raise ImportError("cannot import name %r from %r" % (attr, getattr(obj, "__name__", str(obj))))
        obj = getattr(obj, attr)
    return obj


def _has_causal_lower_right():
    """Whether `from torch.nn.attention.bias import causal_lower_right` (exllamav2's SDPA check) resolves.
    Read from the module's source: importing it pulls in torch._dynamo, +2 s for one name."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("torch.nn.attention.bias")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        if spec is None:
            return False
        try:  # no source to read (a frozen or compiled build): import it after all
            from torch.nn.attention.bias import causal_lower_right  # noqa: F401
        except Exception:
            return False
        return True
    text = _read_text(spec.origin, limit=10 ** 7) or ""
    return re.search(r"^def causal_lower_right\b", text, re.MULTILINE) is not None


def child_torch(rep, targets):
    capture = _WarningCapture()
    import torch

    d = rep.result["details"]
    d["version"] = getattr(torch, "__version__", None)
    d["cuda_version"] = getattr(torch.version, "cuda", None)
    d["hip_version"] = getattr(torch.version, "hip", None)
    try:
        d["cxx11_abi"] = bool(torch._C._GLIBCXX_USE_CXX11_ABI)
    except Exception:
        d["cxx11_abi"] = None
    d["has_causal_lower_right"] = _has_causal_lower_right()
    rep.emit()
    d["cuda_available"] = bool(torch.cuda.is_available())
    d["device_count"] = int(torch.cuda.device_count()) if d["cuda_available"] else 0
    try:
        d["arch_list"] = list(torch.cuda.get_arch_list())
    except Exception:
        d["arch_list"] = []
    devices = []
    for i in range(d["device_count"]):
        p = torch.cuda.get_device_properties(i)
        dev = {"index": i, "name": p.name, "capability": "%d.%d" % (p.major, p.minor),
               "total_memory": int(p.total_memory),
               "multi_processor_count": getattr(p, "multi_processor_count", None)}
        uuid = getattr(p, "uuid", None)
        if uuid is not None:
            dev["uuid"] = str(uuid)
        if hasattr(p, "pci_bus_id") and hasattr(p, "pci_device_id"):
            domain = getattr(p, "pci_domain_id", 0)
            dev["pci_bus_id"] = "%08X:%02X:%02X.0" % (domain, p.pci_bus_id, p.pci_device_id)
        gcn = getattr(p, "gcnArchName", None)
        if gcn and d["hip_version"]:
            dev["gcn_arch"] = gcn
        devices.append(dev)
    d["devices"] = devices
    try:
        d["cudnn_version"] = torch.backends.cudnn.version() if d["cuda_available"] else None
    except Exception:
        d["cudnn_version"] = None
    d["warnings"] = [_condense(m) for m in capture.collected()][:10]


def _xformers_built_for(d):
    """cpp_lib.json, written at build time: what the compiled ops were built for (read without importing)."""
    import importlib.util

    spec = importlib.util.find_spec("xformers")
    if spec is None or not spec.submodule_search_locations:
        return
    for base in spec.submodule_search_locations:
        path = os.path.join(base, "cpp_lib.json")
        if not os.path.exists(path):
            continue
        try:
            with open(path, "r", encoding="utf-8") as fh:
                version = (json.load(fh) or {}).get("version") or {}
        except (OSError, ValueError) as exc:
            d["built_for_error"] = exc_line(exc)
            return
        cuda = version.get("cuda")
        if isinstance(cuda, int):
            cuda = "%d.%d" % (cuda // 100, cuda % 100)
        d["built_for"] = {"torch": version.get("torch"), "cuda": cuda, "python": version.get("python"),
                          "hip": version.get("hip")}
        if version.get("flash"):
            d["built_for"]["flash"] = version.get("flash")
        return


def _root_cause(exc):
    """The innermost exception of a `raise ... from ...` chain (the dlopen error behind a wrapper)."""
    seen = 0
    while seen < 10:
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            return exc
        exc = inner
        seen += 1
    return exc


def child_xformers(rep, targets):
    d = rep.result["details"]
    paths = targets.get("xformers_import_paths", [])
    d["import_paths"] = {p: False for p in paths}
    d["import_path_errors"] = {}
    _xformers_built_for(d)
    rep.emit()
    capture = _WarningCapture()
    try:
        import xformers
    finally:
        d["warnings"] = [_condense(m) for m in capture.collected()][:10]
    d["module_version"] = getattr(xformers, "__version__", None)
    d["has_cpp_library"] = bool(getattr(xformers, "_has_cpp_library", False))
    load_exc = getattr(getattr(xformers, "_cpp_lib", None), "_cpp_library_load_exception", None)
    d["cpp_load_error"] = exc_line(_root_cause(load_exc)) if load_exc is not None else None
    rep.emit()
    d["flash_version_error"] = None
    for path in paths:
        try:
            resolve_path(path)
            d["import_paths"][path] = True
        except Exception as exc:
            line = exc_line(exc)
            d["import_path_errors"][path] = line
            if "Flash-Attention" in line or "flash_attn" in line.lower() and "version" in line.lower():
                d["flash_version_error"] = line
    try:
        from xformers.ops.fmha import flash

        d["flash_version"] = getattr(flash, "FLASH_VERSION", None)
    except Exception:
        pass
    d["warnings"] = [_condense(m) for m in capture.collected()][:10]
    built_for = [w for w in d["warnings"] if "built for" in w]
    d["built_for_warning"] = built_for[0] if built_for else None
    if not d["import_paths"].get("xformers.ops.memory_efficient_attention", True):
        rep.result["status"] = "error"
        rep.result["error"] = d["import_path_errors"].get("xformers.ops.memory_efficient_attention")


def child_flash_attn(rep, targets):
    import inspect

    d = rep.result["details"]
    d["cuda_module_error"] = None
    capture = _WarningCapture()
    import flash_attn

    d["module_version"] = getattr(flash_attn, "__version__", None)
    features = {"window_size": False, "softcap": False, "kvcache": False, "paged": False}
    try:
        from flash_attn import flash_attn_func

        params = inspect.signature(flash_attn_func).parameters
        features["window_size"] = "window_size" in params
        features["softcap"] = "softcap" in params
    except Exception as exc:
        d["func_error"] = exc_line(exc)
    try:
        from flash_attn import flash_attn_with_kvcache

        features["kvcache"] = True
        features["paged"] = "block_table" in inspect.signature(flash_attn_with_kvcache).parameters
    except Exception:
        pass
    d["features"] = features
    try:
        import flash_attn_2_cuda  # noqa: F401
    except Exception as exc:
        d["cuda_module_error"] = exc_line(exc)
    d["warnings"] = [_condense(m) for m in capture.collected()][:10]


def child_load_extension(rep, targets, library, path):
    """Load an existing compiled extension (prebuilt wheel or JIT cache) after torch, as the library would."""
    import importlib.util

    d = rep.result["details"]
    if not path.endswith(".py"):
        import torch  # noqa: F401 - a compiled extension links against torch's libraries

    ext_name = targets["jit_extensions"][library]
    spec = importlib.util.spec_from_file_location(ext_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    d["ext_loaded"] = True


def child_generic(rep, targets, library):
    import importlib

    capture = _WarningCapture()
    module = importlib.import_module(import_name(targets, library))
    rep.result["details"]["module_version"] = getattr(module, "__version__", None)
    rep.result["details"]["warnings"] = [_condense(m) for m in capture.collected()][:10]


def run_child(library, targets_path, ext_path):
    targets = load_targets(targets_path)
    rep = _Reporter(library)
    try:
        if ext_path:
            child_load_extension(rep, targets, library, ext_path)
        elif library == "torch":
            child_torch(rep, targets)
        elif library == "xformers":
            child_xformers(rep, targets)
        elif library == "flash-attn":
            child_flash_attn(rep, targets)
        else:
            child_generic(rep, targets, library)
    except BaseException as exc:  # SystemExit from a library counts as a failed import too
        rep.fail(exc)
    rep.emit(final=True)
    sys.stdout.flush()
    os._exit(0)
