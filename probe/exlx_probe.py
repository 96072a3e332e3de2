#!/usr/bin/env python3
"""exlx-autocfg probe: facts about the GPU stack of THIS interpreter, as one JSON document on stdout.

Stdlib only, Python >= 3.8 syntax (it runs inside whatever venv or conda env will run the model):

    python exlx_probe.py [--timeout 60] [--no-import] [--libraries torch,xformers] [--targets FILE]
                         [--cache FILE [--refresh]]

1. Package metadata for each target library (version, local build tag such as +cu121 / +rocm6.1 /
   +cu128.torch2.9.0, location), read without importing anything.
2. Unless --no-import: each library's import checks run in its OWN child process (this script with
   --child NAME), all children at once, each in a new process group that is killed when the deadline
   passes. A hang, a segfault, os._exit or pages of warnings become facts with the first useful line.
   On Linux the libraries that import torch anyway (torch, xformers, flash-attn, ...) are checked in
   children forked from one process that imported torch once (--zygote), so torch's import is paid
   once, not once per library; if torch itself does not import, they get plain children instead.
3. With --cache FILE, the import results are reused while their fingerprint holds: this script, the
   interpreter and sys.path, each package's dist-info and module file, the environment variables that
   steer imports, and the GPU driver version. A timeout is never cached. --refresh ignores the cache.
4. exllamav2/exllamav3 are never imported (that would start a JIT build of their CUDA extension): the
   probe looks for the compiled extension module, the torch extension JIT cache, nvcc, ninja and a
   compiler instead, and only loads an extension .so that already exists.

The probe always prints exactly one JSON document and exits 0 (barring a bug in the probe itself).
Keys of each library's `details` are documented in exlx_autocfg/facts.py.

Modules beside this one (imported as siblings when run as a script, relatively inside the package):
exlx_probe_metadata (what is installed, no imports), exlx_probe_checks (one library's import checks, in
a child), exlx_probe_procs (children, the torch zygote, the deadline), exlx_probe_cache (fingerprint),
exlx_probe_common (error lines, build tags, targets).
"""

import json
import os
import sys
import time

MIN_PYTHON = (3, 8)

if __name__ == "__main__" and sys.version_info < MIN_PYTHON:  # before importing 3.8+ code
    sys.stderr.write("exlx_probe needs Python >= 3.8; this is %d.%d.%d\n" % tuple(sys.version_info[:3]))
    sys.exit(3)

try:  # imported as exlx_autocfg.probe.exlx_probe_cache
    from .exlx_probe_cache import (
        fingerprint,
        load_cache,
        save_cache,
    )
except ImportError:  # run as a script: probe/ is sys.path[0]
    from exlx_probe_cache import (  # type: ignore[no-redef]
        fingerprint,
        load_cache,
        save_cache,
    )
try:  # imported as exlx_autocfg.probe.exlx_probe_checks
    from .exlx_probe_checks import (
        run_child,
    )
except ImportError:  # run as a script: probe/ is sys.path[0]
    from exlx_probe_checks import (  # type: ignore[no-redef]
        run_child,
    )
try:  # imported as exlx_autocfg.probe.exlx_probe_common
    from .exlx_probe_common import (
        DEFAULT_TARGETS,
        PROBE_SCRIPT,
        SCHEMA,
        exc_line,
        load_targets,
    )
except ImportError:  # run as a script: probe/ is sys.path[0]
    from exlx_probe_common import (  # type: ignore[no-redef]
        DEFAULT_TARGETS,
        PROBE_SCRIPT,
        SCHEMA,
        exc_line,
        load_targets,
    )
try:  # imported as exlx_autocfg.probe.exlx_probe_metadata
    from .exlx_probe_metadata import (
        jit_extension_facts,
        metadata_facts,
        torch_static_versions,
    )
except ImportError:  # run as a script: probe/ is sys.path[0]
    from exlx_probe_metadata import (  # type: ignore[no-redef]
        jit_extension_facts,
        metadata_facts,
        torch_static_versions,
    )
try:  # imported as exlx_autocfg.probe.exlx_probe_procs
    from .exlx_probe_procs import (
        _Child,
        _Zygote,
        _zygote_possible,
        interpret_child,
        run_zygote,
    )
except ImportError:  # run as a script: probe/ is sys.path[0]
    from exlx_probe_procs import (  # type: ignore[no-redef]
        _Child,
        _Zygote,
        _zygote_possible,
        interpret_child,
        run_zygote,
    )


def python_facts():
    import platform

    return {
        "executable": sys.executable,
        "version": "%d.%d.%d" % tuple(sys.version_info[:3]),
        "implementation": platform.python_implementation(),
        "platform": "%s-%s" % (sys.platform, platform.machine()),
    }


def apply_import_result(lib, result):
    """Fold one child's outcome (fresh or cached) into the library's facts."""
    status, error = result["status"], result["error"]
    lib["import_seconds"] = result.get("seconds")
    lib["details"].update(result.get("details") or {})
    if lib["details"].get("ext") in ("prebuilt", "jit-cached"):
        # For JIT libraries the "import" is loading their existing extension, never the package.
        lib["details"]["ext_error"] = error
        if status != "ok" and lib["details"]["ext"] == "prebuilt":
            lib["details"]["ext"] = "prebuilt-broken"
    lib["import_status"] = status
    lib["import_error"] = error


def _child_cmd(name, ext_path, targets_path):
    cmd = [sys.executable, PROBE_SCRIPT, "--child", name, "--targets", targets_path]
    return cmd + (["--ext-path", ext_path] if ext_path else [])


def run_probe(timeout, no_import, libraries, targets_path, cache_path=None, refresh=False):
    started = time.time()
    deadline = started + max(timeout - 0.5, 0.5)  # leave time to print
    targets = load_targets(targets_path)
    names = libraries or targets.get("libraries", [])
    doc = {"schema": SCHEMA, "probe": "exlx_probe", "python": python_facts(), "libraries": {},
           "env": {k: os.environ[k] for k in targets.get("env_vars", []) if k in os.environ},
           "problems": [], "no_import": bool(no_import)}
    libs = doc["libraries"]
    for name in names:
        try:
            libs[name] = metadata_facts(name, targets)
        except Exception as exc:  # a broken dist-info must not take the probe down
            libs[name] = {"name": name, "installed": False, "details": {"metadata_error": exc_line(exc)}}
            doc["problems"].append("%s: unreadable package metadata (%s)" % (name, exc_line(exc)))

    cache = load_cache(cache_path) if cache_path and not no_import else {}
    nvcc_known = dict(cache.get("nvcc") or {})
    torch_meta = libs.get("torch") or metadata_facts("torch", targets)  # needed even when not a target
    torch_static = torch_static_versions(torch_meta.get("location"))
    jobs = []  # (library, ext_path)
    for name in names:
        lib = libs[name]
        ext_name = targets["jit_extensions"].get(name)
        if ext_name and lib.get("installed"):
            details, load_path = jit_extension_facts(name, ext_name, torch_static, no_import, nvcc_known)
            lib["details"].update(details)
            if load_path and not no_import:
                jobs.append((name, load_path))
        elif lib.get("installed") and not no_import:
            jobs.append((name, None))

    key = fingerprint(libs, targets_path, targets) if cache_path and not no_import else None
    for lib in libs.values():
        lib.pop("_dist_path", None)
    cached = cache.get("results") if key and not refresh and cache.get("fingerprint") == key else None
    if cached is not None and all(name in cached for name, _ in jobs):
        for name, _ in jobs:
            apply_import_result(libs[name], cached[name])
        doc["cache"] = {"hit": True, "created": cache.get("created"), "path": cache_path}
        doc["seconds"] = round(time.time() - started, 3)
        return doc

    children = []
    results = {}
    torch_jobs = [j for j in jobs if j[0] in targets["torch_dependent"]]
    zygote = None
    if libs.get("torch", torch_meta).get("installed") and len(torch_jobs) >= 2 and _zygote_possible():
        try:
            zygote = _Zygote(torch_jobs, targets_path)
            jobs = [j for j in jobs if j not in torch_jobs]
        except OSError:
            zygote = None
    for name, ext_path in jobs:
        try:
            children.append(_Child(name, _child_cmd(name, ext_path, targets_path)))
        except OSError as exc:
            results[name] = {"status": "error", "error": "could not start the import check: %s" % exc_line(exc)}
    if zygote is not None:
        zygote.wait(deadline)
    for child in children:
        child.wait(deadline)
    for child in children:
        status, error, details = interpret_child(child, max(deadline - child.start, 0))
        results[child.library] = {"status": status, "error": error, "seconds": child.seconds, "details": details}
    if zygote is not None:
        forked = zygote.results(deadline)
        if forked is None:  # torch does not import: give every library its own plain child after all
            retry = [_Child(name, _child_cmd(name, ext_path, targets_path)) for name, ext_path in torch_jobs]
            for child in retry:
                child.wait(deadline)
            forked = {}
            for child in retry:
                status, error, details = interpret_child(child, max(deadline - child.start, 0))
                forked[child.library] = {"status": status, "error": error, "seconds": child.seconds,
                                         "details": details}
        results.update(forked)
    for name, result in results.items():
        apply_import_result(libs[name], result)
    if key:
        doc["cache"] = {"hit": False, "path": cache_path}
        # A timeout may be load on the machine, not a fact about the package: never cache one.
        if all(r["status"] != "timeout" for r in results.values()):
            save_cache(cache_path, {"schema": SCHEMA, "fingerprint": key, "results": results, "nvcc": nvcc_known,
                                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    doc["seconds"] = round(time.time() - started, 3)
    return doc


def parse_args(argv):
    import argparse

    ap = argparse.ArgumentParser(description="Print facts about this interpreter's GPU stack as JSON.")
    ap.add_argument("--timeout", type=float, default=60.0, help="overall deadline in seconds")
    ap.add_argument("--no-import", action="store_true", help="package metadata only, no import checks")
    ap.add_argument("--libraries", default="", help="comma-separated subset of the targets")
    ap.add_argument("--targets", default=DEFAULT_TARGETS, help="probe_targets.json")
    ap.add_argument("--cache", default=None, help="reuse import results while nothing they depend on changed")
    ap.add_argument("--refresh", action="store_true", help="ignore the cache (still update it)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--zygote", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--outdir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ext-path", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None):
    if sys.version_info < MIN_PYTHON:  # the facts would be wrong (no importlib.metadata): refuse clearly
        sys.stderr.write("exlx_probe needs Python >= 3.8; this is %d.%d.%d\n" % tuple(sys.version_info[:3]))
        return 3
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.child:
        run_child(args.child, args.targets, args.ext_path)
        return 0
    if args.zygote:
        run_zygote([tuple(j) for j in json.loads(args.zygote)], args.targets, args.outdir)
        return 0
    libraries = [x.strip() for x in args.libraries.split(",") if x.strip()]
    try:
        doc = run_probe(args.timeout, args.no_import, libraries, args.targets, args.cache, args.refresh)
    except Exception as exc:  # still one JSON document: the caller reports the problem
        doc = {"schema": SCHEMA, "probe": "exlx_probe", "python": python_facts(), "libraries": {},
               "env": {}, "problems": ["the probe failed: %s" % exc_line(exc)]}
    sys.stdout.write(json.dumps(doc, indent=None, default=str) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
