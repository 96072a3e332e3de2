#!/usr/bin/env python3
"""End-to-end validation on a real GPU: the probe, the memory model, the loader and exllamav2's backends.

One run, five isolated steps (a failure in one is recorded and the others still run):
  1. probe     `exlx-autocfg detect --json` here: NVML and torch agree on each GPU (name, CC, memory), the
               NVML->CUDA index mapping matches torch's UUIDs, library facts match what is installed.
  2. build     JIT-build exllamav2's extension for the present architecture only; build time, first error.
  3. memory    write a random-weight FP16 Llama-style model, plan for it with this machine's facts, load it
               with the loader per cache mode at the planned max_seq_len and at a fixed length, and compare
               what CUDA holds (allocator and NVML) with the plan's per-part bytes.
  4. backends  the same inputs through exllamav2's SDPA path and matmul path vs a float32 causal reference
               (the 0.2.9-0.3.2 SDPA causal-mask defect shows here, or is shown absent).
  5. report    everything as JSON under --out / $OUT, a short table printed last.

`--dry-run` runs what a CPU can: step 1, step 3's model writing and planning (tiny model, what-if H200) and
step 4 on CPU tensors, with only `exllamav2_ext` stood in for. Exit status: 0 when the run completed (failures
are in the JSON), 2 on usage errors.  See docs/gpu-validation.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# The repository gives the dev-only `tools` package. An installed exlx_autocfg (device_run.sh puts one on
# PYTHONPATH) still wins, being earlier on the path: a bare checkout lacks the `exlx_autocfg.probe` /
# `exlx_autocfg.profiles` packages that setuptools maps from probe/ and profiles/.
sys.path.append(str(REPO))

import exlx_autocfg  # noqa: E402
from tools.testmodel import (  # noqa: E402
    SHAPES,
    read_shape,
    reference_attention,
    reference_logits,
    write_test_model,
)

GIB = 1024**3
CACHE_MODES = ("FP16", "Q8", "Q6", "Q4")
STEPS = ("probe", "build", "memory", "backends")
# exllamav2 releases whose SDPA branch drops the causal mask (compat-facts.md section 6.6, commit 2e630aef).
SDPA_DEFECT_RANGE = ("0.2.9", "0.3.2")
PROMPT = ("The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
          "How vexingly quick daft zebras jump! Sphinx of black quartz, judge my vow. 0123456789")


# ---- results -----------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class StepResult:
    name: str
    status: str = "not-run"  # ok | fail (a check disagreed) | error (raised) | skipped
    seconds: float = 0.0
    summary: str = ""
    error: str | None = None  # the first useful error line
    checks: list[Check] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, bool(ok), detail))
        return bool(ok)


class Skip(Exception):
    """A step (or part of one) that cannot run here; the message says why."""


def first_error_line(exc: BaseException) -> str:
    """`Type: first non-empty line` of an exception, the line a person needs first."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = next((ln for ln in lines if re.search(r"\berror\b", ln, re.I)), lines[0] if lines else "")
    return f"{type(exc).__name__}: {useful}"[:500]


def first_compiler_error(log: str) -> str | None:
    """The first line of a build log that a compiler or ninja marked as an error."""
    patterns = (r"^.*\berror\b\s*[:(].*$", r"^.*fatal error.*$", r"^FAILED: .*$", r"^.*Error building.*$")
    for pattern in patterns:
        m = re.search(pattern, log, re.M | re.I)
        if m:
            return m.group(0).strip()[:500]
    return None


@dataclass
class Context:
    """What steps hand to later steps; each field may stay None when the step that fills it failed."""

    args: argparse.Namespace
    out: Path
    work: Path
    deadline: float
    facts: Any = None
    nvml_used_before_cuda: int | None = None
    ext_ready: bool = False
    model_dir: Path | None = None

    def left(self) -> float:
        return self.deadline - time.monotonic()


def run_step(name: str, fn: Callable[[Context, StepResult], None], ctx: Context) -> StepResult:
    result = StepResult(name)
    t0 = time.monotonic()
    try:
        fn(ctx, result)
        if result.status == "not-run":
            result.status = "ok" if all(c.ok for c in result.checks) else "fail"
    except Skip as exc:
        result.status, result.summary = "skipped", str(exc)
    except Exception as exc:  # isolation: record, go on with the next step
        result.status, result.error = "error", first_error_line(exc)
        result.data["traceback_tail"] = traceback.format_exc().splitlines()[-6:]
    result.seconds = round(time.monotonic() - t0, 2)
    if result.status == "fail" and not result.summary:
        result.summary = "; ".join(f"{c.name}: {c.detail}" for c in result.checks if not c.ok)
    return result


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


# ---- helpers at the hardware edge --------------------------------------------------------------------


def nvml_used_bytes() -> dict[str, int] | None:
    """NVML memory used per GPU UUID, or None without NVML. Never creates a CUDA context."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        used = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            key = uuid.decode() if isinstance(uuid, bytes) else uuid
            used[key] = pynvml.nvmlDeviceGetMemoryInfo(handle).used
        return used
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def norm_uuid(uuid: Any) -> str:
    """'GPU-3c3a...' (NVML) and torch's uuid object both as '3c3a...'."""
    raw = getattr(uuid, "bytes", None)
    if isinstance(raw, bytes | bytearray) and len(raw) == 16:
        import uuid as uuid_mod

        return str(uuid_mod.UUID(bytes=bytes(raw)))
    text = str(uuid).lower()
    return text[4:] if text.startswith("gpu-") else text


def torch_gpus() -> list[dict[str, Any]]:
    import torch

    gpus = []
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(i)
        gpus.append({"cuda_index": i, "name": props.name, "capability": f"{props.major}.{props.minor}",
                     "total_memory": props.total_memory, "uuid": norm_uuid(getattr(props, "uuid", ""))})
    return gpus


def dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text.split("+")[0])[:3])


def install_ext_standin() -> None:
    """Dry run only: exllamav2 imports its compiled extension at import time; CPU code never calls it."""
    if "exllamav2_ext" not in sys.modules:
        module = types.ModuleType("exllamav2_ext")
        module.STANDIN = True  # type: ignore[attr-defined]
        sys.modules["exllamav2_ext"] = module


def what_if_h200(facts: Any) -> Any:
    """Dry run: this CPU machine's facts with one H200 as the GPU, so the planner has a target."""
    from exlx_autocfg.facts.types import GPU

    facts = dataclasses.replace(facts, what_if=True)
    facts.gpu = dataclasses.replace(facts.gpu, gpus=[GPU(
        index=0, name="NVIDIA H200", vendor="nvidia", memory_total=143771 * 2**20,
        memory_free=143771 * 2**20 - 512 * 2**20, memory_used=512 * 2**20, compute_capability="9.0",
        architecture="hopper", cuda_index=0, source="table")])
    return facts


# ---- step 1: probe -----------------------------------------------------------------------------------


def step_probe(ctx: Context, r: StepResult) -> None:
    from exlx_autocfg.facts.types import Facts

    code = "import sys; from exlx_autocfg.cli import main; sys.argv[0] = 'exlx-autocfg'; main()"
    cmd = [sys.executable, "-c", code, "detect", "--json"]
    t0 = time.monotonic()
    # cwd: the work folder, so that a checkout in the current directory cannot shadow the installed package.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=min(180, max(30, ctx.left())),
                          cwd=ctx.work,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
                              os.environ.get("PYTHONPATH"), str(REPO)]))})
    r.data["detect_seconds"] = round(time.monotonic() - t0, 2)
    r.data["detect_exit"] = proc.returncode
    if proc.returncode != 0:
        raise RuntimeError(f"detect --json exited {proc.returncode}: "
                           f"{(proc.stderr.strip().splitlines() or ['(no stderr)'])[-1]}")
    facts = Facts.from_json(proc.stdout)
    ctx.facts = facts
    write_json_atomic(ctx.out / "facts.json", facts.to_dict())

    # GPUs: NVML (facts) vs torch, matched through the CUDA index the facts claim.
    seen = torch_gpus()
    r.data["torch_gpus"] = seen
    visible = [g for g in facts.gpu.gpus if g.cuda_index is not None]
    r.check("gpu count", len(visible) == len(seen),
            f"facts list {len(visible)} GPU(s) with a CUDA index, torch sees {len(seen)}")
    by_cuda = {g.cuda_index: g for g in visible}
    for tg in seen:
        g = by_cuda.get(tg["cuda_index"])
        label = f"cuda:{tg['cuda_index']}"
        if g is None:
            r.check(f"{label} mapped", False, "no NVML GPU claims this CUDA index")
            continue
        if tg["uuid"] and g.uuid:
            r.check(f"{label} uuid", norm_uuid(g.uuid) == tg["uuid"],
                    f"NVML index {g.index} {g.uuid} vs torch {tg['uuid']}")
        r.check(f"{label} name", g.name == tg["name"], f"{g.name!r} vs {tg['name']!r}")
        r.check(f"{label} cc", g.compute_capability == tg["capability"],
                f"{g.compute_capability} vs {tg['capability']}")
        rel = abs(g.memory_total - tg["total_memory"]) / max(tg["total_memory"], 1)
        # NVML's total counts memory the driver keeps for itself; torch's does not (a few hundred MiB).
        r.check(f"{label} memory", rel < 0.02,
                f"NVML {g.memory_total / GIB:.2f} GiB vs torch {tg['total_memory'] / GIB:.2f} GiB "
                f"({rel:.2%})")

    # Libraries: what the probe says vs package metadata and torch in this interpreter.
    for name, lib in sorted(facts.libraries.items()):
        actual = dist_version(name)
        agree = lib.installed == (actual is not None) and (actual is None or lib.version == actual)
        r.check(f"lib {name}", agree,
                f"facts {lib.version if lib.installed else 'absent'} vs installed {actual or 'absent'}")
    torch_facts = facts.lib("torch").details
    if "cuda_available" in torch_facts:
        import torch

        r.check("torch cuda_available", torch_facts["cuda_available"] == torch.cuda.is_available(),
                f"facts {torch_facts['cuda_available']} vs {torch.cuda.is_available()}")
    gpus = ", ".join(f"{g.name} cc {g.compute_capability} {g.memory_total / GIB:.1f} GiB"
                     for g in facts.gpu.gpus)
    r.summary = f"{gpus or 'no GPU'}; {len(facts.libraries)} libraries; detect {r.data['detect_seconds']} s"


# ---- step 2: build -----------------------------------------------------------------------------------


def tool_version(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
    return lines[-1].strip() if lines else None


def run_in_own_group(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[str, int | None]:
    """(output, exit code or None on timeout). On timeout the whole group goes, ninja and nvcc too: an
    orphaned build would hold the CPUs and torch's build lock for the rest of the run."""
    import signal

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return out, proc.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return out or "", None


def step_build(ctx: Context, r: StepResult) -> None:
    if ctx.args.dry_run:
        raise Skip("dry run: the extension build needs nvcc and a GPU")
    import torch

    r.data["exllamav2"] = dist_version("exllamav2")
    if r.data["exllamav2"] is None:
        raise RuntimeError("exllamav2 is not installed (carry its wheel in .whl/)")
    if not torch.cuda.is_available():
        raise Skip("torch sees no CUDA device")
    major, minor = torch.cuda.get_device_capability(0)
    arch = f"{major}.{minor}"
    # This process too: exllamav2 would otherwise set "9.0+PTX" when it imports here, and ninja would
    # rebuild every object because the command lines changed.
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    env = dict(os.environ)
    r.data.update(arch=arch, torch=torch.__version__, torch_cuda=torch.version.cuda,
                  nvcc=tool_version(["nvcc", "--version"]), ninja=tool_version(["ninja", "--version"]),
                  cxx=tool_version(["c++", "--version"]),
                  extensions_dir=env.get("TORCH_EXTENSIONS_DIR"))
    code = ("import time; t = time.monotonic(); import exllamav2.ext as e; "
            "print('EXT', e.exllamav2_ext.__file__); print('SECONDS', time.monotonic() - t)")
    with contextlib.suppress(Exception):  # a private helper: only to say whether a build was cached
        from torch.utils.cpp_extension import _get_build_directory

        build_dir = Path(_get_build_directory("exllamav2_ext", False))
        r.data["build_dir"] = str(build_dir)
        r.data["cached_before"] = any(build_dir.glob("exllamav2_ext*.so"))
    budget = min(ctx.args.build_timeout, max(30.0, ctx.left() - 90))
    t0 = time.monotonic()
    log, rc = run_in_own_group([sys.executable, "-c", code], env, budget)
    r.data["seconds"] = round(time.monotonic() - t0, 1)
    (ctx.out / "build.log").write_text(log[-200_000:])
    if rc is None:
        raise RuntimeError(f"build did not finish within {budget:.0f} s "
                           f"(first error: {first_compiler_error(log) or 'none seen'})")
    if rc != 0:
        r.data["first_error"] = first_compiler_error(log)
        raise RuntimeError(r.data["first_error"] or (log.strip().splitlines() or ["no output"])[-1])
    m = re.search(r"^EXT (.*)$", log, re.M)
    r.data["ext_path"] = m.group(1) if m else None
    ctx.ext_ready = r.check("extension imports", bool(m), r.data["ext_path"] or "no path printed")
    r.summary = f"exllamav2_ext for sm_{arch.replace('.', '')} in {r.data['seconds']} s"


# ---- step 3: memory ----------------------------------------------------------------------------------


def plan_for(facts: Any, spec: Any, **request: Any) -> Any:
    """The planner's answer for one request (kept in one place: the request names are the planner's)."""
    from exlx_autocfg.planner.core import plan

    return plan(facts, spec, **request)


def plan_memory_row(p: Any) -> dict[str, Any]:
    mem = p.memory[0] if p.memory else None
    return {
        "backend": p.settings.backend, "cache_mode": p.settings.cache_mode,
        "max_seq_len": p.settings.max_seq_len, "chunk_size": p.settings.max_input_len,
        "weights": mem.weights_bytes if mem else None, "cache": mem.cache_bytes if mem else None,
        "scratch": mem.scratch_bytes if mem else None, "reserve": mem.reserve_bytes if mem else None,
        "total": mem.total_bytes if mem else None, "budget": mem.budget_bytes if mem else None,
        "parts": dict(mem.parts) if mem else {},
    }


def storage_bytes(tensors: list[Any], seen: set[int]) -> int:
    total = 0
    for t in tensors:
        if t is None or not getattr(t, "is_cuda", False):
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


def live_cuda_tensors() -> list[Any]:
    import torch

    found = []
    for obj in gc.get_objects():
        with contextlib.suppress(Exception):
            if isinstance(obj, torch.Tensor) and obj.is_cuda:
                found.append(obj)
    return found


def measure_parts(model: Any, cache: Any) -> dict[str, int]:
    """Bytes CUDA holds for the cache, exllamav2's device context (scratch, RoPE) and the rest (weights)."""
    seen: set[int] = set()
    cache_tensors = list(cache.all_tensors()) if cache is not None else []
    for pair in getattr(cache, "temp_tensors", {}).values():
        cache_tensors += list(pair)
    parts = {"cache": storage_bytes(cache_tensors, seen)}
    ctx_tensors: list[Any] = []
    for dc in getattr(model, "device_context", []) or []:
        if dc is None:
            continue
        ctx_tensors.append(dc.scratch)
        for attr in ("sin", "cos", "local_sin", "local_cos"):
            value = getattr(dc, attr, None)
            ctx_tensors += value if isinstance(value, list | tuple) else [value]
    parts["scratch"] = storage_bytes(ctx_tensors, seen)
    parts["weights"] = storage_bytes(live_cuda_tensors(), seen)
    return parts


def load_and_measure(ctx: Context, plan: Any, label: str, *, prefill: bool = True) -> dict[str, Any]:
    import torch

    from exlx_autocfg.profile import loader
    from exlx_autocfg.profile.format import profile_from_plan

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base_alloc = torch.cuda.memory_allocated()
    base_nvml = nvml_used_bytes() or {}
    t0 = time.monotonic()
    # The plan becomes the profile the loader applies, exactly as `exlx-autocfg profile` would write it.
    profile = profile_from_plan(plan, ctx.facts)
    loaded = loader.load(str(ctx.model_dir), profile, facts=ctx.facts, save=False, on_stale="warn",
                         generator=prefill)
    torch.cuda.synchronize()
    row: dict[str, Any] = {"label": label, "load_seconds": round(time.monotonic() - t0, 2),
                           "backend": loaded.prepared.backend, "loader_notes": loaded.prepared.notes}
    model, cache = loaded.model, loaded.cache
    row["after_load_allocated"] = torch.cuda.memory_allocated() - base_alloc
    row["parts"] = measure_parts(model, cache)
    # One prefill of a full chunk at the END of the context: the worst-case attention and MLP transients
    # (keys span the whole cache) that the plan's scratch must cover. The cache content does not matter.
    if prefill:
        seq = plan.settings.max_seq_len
        chunk = min(plan.settings.max_input_len, seq)
        ids = torch.randint(3, read_shape(ctx.model_dir).vocab_size, (1, chunk))
        cache.current_seq_len = seq - chunk
        torch.cuda.reset_peak_memory_stats()
        model.forward(ids, cache, preprocess_only=True)
        torch.cuda.synchronize()
        row["prefill_tokens"], row["prefill_past_len"] = chunk, seq - chunk
        row["peak_allocated"] = torch.cuda.max_memory_allocated() - base_alloc
    row["peak_reserved"] = torch.cuda.max_memory_reserved()
    used = nvml_used_bytes() or {}
    before = ctx.nvml_used_before_cuda or 0
    if used:
        row["nvml_used"] = sum(used.values()) - before  # this process, CUDA context included
        row["nvml_used_since_load"] = sum(used.values()) - sum(base_nvml.values())
    with contextlib.suppress(Exception):
        model.unload()
    del model, cache, loaded
    gc.collect()
    torch.cuda.empty_cache()
    return row


def compare(predicted: dict[str, Any], measured: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of part, predicted, measured, error % (measured relative to predicted)."""
    parts = measured.get("parts", {})
    pairs = [
        ("weights", predicted.get("weights"), parts.get("weights")),
        ("cache", predicted.get("cache"), parts.get("cache")),
        # The plan's scratch covers the context buffer, RoPE tables and the prefill transients.
        ("scratch", predicted.get("scratch"),
         None if "peak_allocated" not in measured else
         measured["peak_allocated"] - parts.get("weights", 0) - parts.get("cache", 0)),
        ("allocated peak", _sum(predicted, "weights", "cache", "scratch"), measured.get("peak_allocated")),
        ("NVML total", predicted.get("total"), measured.get("nvml_used")),
    ]
    rows = []
    for part, pred, meas in pairs:
        err = None if not pred or meas is None else round((meas - pred) / pred * 100, 2)
        rows.append({"part": part, "predicted": pred, "measured": meas, "error_pct": err})
    return rows


def _sum(d: dict[str, Any], *keys: str) -> int | None:
    values = [d.get(k) for k in keys]
    return None if any(v is None for v in values) else sum(values)


def step_memory(ctx: Context, r: StepResult) -> None:
    from exlx_autocfg.model.load import load_model_spec

    size = "tiny" if ctx.args.dry_run else ctx.args.model_size
    model_dir = ctx.work / f"testmodel-{size}"
    t0 = time.monotonic()
    if not model_dir.exists():
        import torch

        device = "cuda" if not ctx.args.dry_run and torch.cuda.is_available() else "cpu"
        write_test_model(model_dir, SHAPES[size], seed=0, device=device)
        if device == "cuda":
            torch.cuda.empty_cache()
    ctx.model_dir = model_dir
    r.data["model"] = {"size": size, "dir": str(model_dir), "params": SHAPES[size].parameter_count(),
                       "write_seconds": round(time.monotonic() - t0, 2),
                       "bytes": sum(f.stat().st_size for f in model_dir.iterdir())}
    spec = load_model_spec(str(model_dir))
    if ctx.facts is None:
        raise RuntimeError("no facts to plan with (step probe failed)")
    facts = what_if_h200(ctx.facts) if ctx.args.dry_run else ctx.facts
    plans: dict[str, Any] = {}
    r.data["plans"] = {}
    for mode in ctx.args.cache_modes:
        # `cache` forces the mode; without `context` the planner targets the model's full context.
        for label, request in (("planned", {"cache": mode}),
                               ("fixed", {"cache": mode, "context": ctx.args.fixed_len})):
            key = f"{mode}/{label}"
            try:
                plans[key] = plan_for(facts, spec, **request)
                r.data["plans"][key] = plan_memory_row(plans[key])
                s = plans[key].settings
                r.check(f"plan {key}", s.cache_mode == mode and s.max_seq_len > 0,
                        f"{s.cache_mode} at {s.max_seq_len}")
            except Exception as exc:
                r.data["plans"][key] = {"error": first_error_line(exc)}
                r.check(f"plan {key}", False, first_error_line(exc))
    write_json_atomic(ctx.out / "plans.json", {k: p.to_dict() for k, p in plans.items()})
    if ctx.args.dry_run:
        r.summary = (f"wrote {size} model ({r.data['model']['params'] / 1e6:.1f} M params); "
                     f"{len(plans)} plans (what-if H200); loads skipped in dry run")
        return
    prefill = ctx.ext_ready
    if not prefill:
        # Loading FP16 weights and allocating caches never calls the extension, so the static parts are
        # still measured; the prefill (and the generator, which sets up kernels) needs the real build.
        install_ext_standin()
        r.check("prefill", False, "skipped: exllamav2_ext is not built (step build); static parts only")
    r.data["loads"] = {}
    for key, p in plans.items():
        if ctx.left() < 45:
            r.data["loads"][key] = {"error": "skipped: deadline"}
            r.check(f"load {key}", False, "skipped: deadline")
            continue
        try:
            measured = load_and_measure(ctx, p, key, prefill=prefill)
            measured["rows"] = compare(r.data["plans"][key], measured)
            r.data["loads"][key] = measured
            r.check(f"load {key}", True, f"{measured['load_seconds']} s")
        except Exception as exc:
            r.data["loads"][key] = {"error": first_error_line(exc)}
            r.check(f"load {key}", False, first_error_line(exc))
        # After the except block: a failed load's traceback no longer holds the half-loaded model.
        gc.collect()
    worst = [abs(row["error_pct"]) for m in r.data["loads"].values() for row in m.get("rows", [])
             if row["error_pct"] is not None and row["part"] in ("weights", "cache")]
    r.summary = (f"{len(r.data['loads'])} loads of the {size} model; "
                 f"worst weights/cache error {max(worst):.2f} %" if worst else "no load measured")


# ---- step 4: backends --------------------------------------------------------------------------------


def classify(err_causal: float, err_noncausal: float, gap: float) -> str:
    """Which reference an output matches: far closer to one than the references are to each other."""
    if err_causal <= 0.1 * gap and err_causal < err_noncausal:
        return "causal"
    if err_noncausal <= 0.1 * gap and err_noncausal < err_causal:
        return "NON-CAUSAL"
    return "matches neither"


@contextlib.contextmanager
def sdpa_branch_reachable(attn_mod: Any, notes: dict[str, Any]):
    """Make `_attn_torch`'s SDPA branch reachable while measuring it.

    exllamav2 sets `has_lower_right_sdpa` once at import, and not at all when EXLLAMA_NO_SDPA was set then
    (the loader sets it for a matmul plan in step memory). The branch itself is what is under test."""
    saved = attn_mod.has_lower_right_sdpa
    notes["sdpa_flag_at_import"] = bool(saved)
    if not saved:
        from torch.nn.attention.bias import causal_lower_right  # noqa: F401  (torch >= 2.3; else no SDPA)

        attn_mod.has_lower_right_sdpa = True
    try:
        yield
    finally:
        attn_mod.has_lower_right_sdpa = saved


def attention_level(ctx: Context, exllamav2: Any, model_dir: Path, device: str) -> list[dict[str, Any]]:
    """exllamav2's own `_attn_torch` (SDPA branch and matmul branch) on random FP16 q/k/v."""
    import torch
    from exllamav2 import ExLlamaV2, ExLlamaV2Config
    from exllamav2 import attn as attn_mod
    from exllamav2.attn_params import Params

    config = ExLlamaV2Config(str(model_dir))
    config.prepare()
    model = ExLlamaV2(config, lazy_load=True)  # builds modules, reads no weights, touches no GPU
    attn = next(m for m in model.modules if isinstance(m, attn_mod.ExLlamaV2Attention))
    gen = torch.Generator().manual_seed(1)
    rows = []
    notes: dict[str, Any] = {}
    with sdpa_branch_reachable(attn_mod, notes):
        rows = _attention_rows(attn, config, Params, gen, device)
    for row in rows:
        row.update(notes)
    return rows


def _attention_rows(attn: Any, config: Any, Params: Any, gen: Any, device: str) -> list[dict[str, Any]]:
    import torch

    rows = []
    for q_len in (16, 128):
        heads, kv_heads, dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        q = torch.randn(1, q_len, heads, dim, generator=gen).half().to(device)
        k = torch.randn(1, q_len, kv_heads, dim, generator=gen).half().to(device)
        v = torch.randn(1, q_len, kv_heads, dim, generator=gen).half().to(device)
        ref_c = reference_attention(q, k, v, causal=True, scale=attn.scaling)
        ref_n = reference_attention(q, k, v, causal=False, scale=attn.scaling)
        gap = (ref_c - ref_n).abs().max().item()
        for path, no_sdpa in (("sdpa", False), ("matmul", True)):
            config.no_sdpa = no_sdpa
            out = attn._attn_torch(1, q_len, q, k, v, Params(1, q_len, 0, None, None), config, causal=True)
            e_c = (out.float() - ref_c).abs().max().item()
            e_n = (out.float() - ref_n).abs().max().item()
            rows.append({"level": "attention", "device": device, "path": path, "q_len": q_len,
                         "err_vs_causal": e_c, "err_vs_noncausal": e_n, "reference_gap": gap,
                         "verdict": classify(e_c, e_n, gap)})
    return rows


def model_level(ctx: Context, model_dir: Path) -> list[dict[str, Any]]:
    """Whole-model logits through exllamav2 (SDPA, then matmul) vs float32 references of the same weights."""
    import torch
    from exllamav2 import ExLlamaV2, ExLlamaV2Config, ExLlamaV2Tokenizer

    config = ExLlamaV2Config(str(model_dir))
    config.max_seq_len = 512
    model = ExLlamaV2(config)
    model.load()
    try:
        tokenizer = ExLlamaV2Tokenizer(config)
        ids = tokenizer.encode(PROMPT, add_bos=True)[:, :128]
        ref_c = reference_logits(model_dir, ids, causal=True, device="cuda")
        ref_n = reference_logits(model_dir, ids, causal=False, device="cuda")
        gap = (ref_c - ref_n).abs().max().item()
        rows = []
        notes: dict[str, Any] = {}
        for path, no_sdpa in (("sdpa", False), ("matmul", True)):
            config.no_sdpa = no_sdpa  # read per call by `_attn_torch`
            with sdpa_branch_reachable(sys.modules["exllamav2.attn"], notes):
                logits = model.forward(ids).float().to(ref_c.device)[..., : ref_c.shape[-1]]
            e_c = (logits - ref_c).abs().max().item()
            e_n = (logits - ref_n).abs().max().item()
            rows.append({"level": "model", "device": "cuda", "path": path, "q_len": int(ids.shape[1]),
                         "err_vs_causal": e_c, "err_vs_noncausal": e_n, "reference_gap": gap,
                         "argmax_agree_causal": (logits.argmax(-1) == ref_c.argmax(-1)).float().mean().item(),
                         "verdict": classify(e_c, e_n, gap), **notes})
        return rows
    finally:
        model.unload()
        del model
        gc.collect()
        torch.cuda.empty_cache()


def step_backends(ctx: Context, r: StepResult) -> None:
    import torch

    standin = ctx.args.dry_run or not ctx.ext_ready
    if standin:
        # `_attn_torch` never calls the extension, so the attention-level check still runs without a
        # build; the model-level check needs the real one.
        install_ext_standin()
    r.data["ext"] = "stand-in" if standin else "built"

    exllamav2 = importlib.import_module("exllamav2")
    version = dist_version("exllamav2") or "?"
    r.data["exllamav2"] = version
    r.data["torch"] = torch.__version__
    model_dir = ctx.model_dir if ctx.model_dir and ctx.model_dir.exists() else None
    if model_dir is None:
        model_dir = ctx.work / "testmodel-tiny"
        if not model_dir.exists():
            write_test_model(model_dir, "tiny")
    device = "cuda" if not ctx.args.dry_run and torch.cuda.is_available() else "cpu"
    rows = attention_level(ctx, exllamav2, model_dir, device)
    if not ctx.args.dry_run and standin:
        r.check("model-level run", False, "skipped: exllamav2_ext is not built (step build)")
    elif not ctx.args.dry_run:
        try:
            rows += model_level(ctx, model_dir)
        except Exception as exc:
            r.check("model-level run", False, first_error_line(exc))
    r.data["rows"] = rows
    in_defect_range = (version_tuple(SDPA_DEFECT_RANGE[0]) <= version_tuple(version)
                       <= version_tuple(SDPA_DEFECT_RANGE[1]))
    expected_sdpa = "NON-CAUSAL" if in_defect_range else "causal"
    for row in rows:
        name = f"{row['level']} {row['path']} q_len={row['q_len']}"
        if row["path"] == "matmul":
            r.check(name, row["verdict"] == "causal", row["verdict"])
        else:
            r.check(name, row["verdict"] == expected_sdpa,
                    f"{row['verdict']} (expected {expected_sdpa} for exllamav2 {version})")
    sdpa = {row["verdict"] for row in rows if row["path"] == "sdpa"}
    r.data["sdpa_defect_shown"] = sdpa == {"NON-CAUSAL"}
    r.summary = (f"exllamav2 {version} on {device}: sdpa {'/'.join(sorted(sdpa))}, matmul "
                 f"{'/'.join(sorted({row['verdict'] for row in rows if row['path'] == 'matmul'}))}")


# ---- step 5: report ----------------------------------------------------------------------------------


def fmt_bytes(n: Any) -> str:
    return "-" if n is None else f"{n / GIB:.3f} GiB" if abs(n) >= GIB / 10 else f"{n / 2**20:.1f} MiB"


def render_table(results: dict[str, StepResult]) -> str:
    lines = [f"{'step':<9} {'status':<8} {'seconds':>8}  summary"]
    for name, res in results.items():
        text = res.summary or res.error or ""
        if res.error and res.summary:
            text += f" [{res.error}]"
        lines.append(f"{name:<9} {res.status:<8} {res.seconds:>8.1f}  {text}")
    memory = results.get("memory")
    loads = memory.data.get("loads", {}) if memory else {}
    if loads:
        lines += ["", f"{'mode/length':<14} {'max_seq_len':>11} {'part':<15} {'predicted':>12} "
                      f"{'measured':>12} {'error %':>8}"]
        for key, m in loads.items():
            plan_len = memory.data["plans"].get(key, {}).get("max_seq_len", "-")
            if "error" in m:
                lines.append(f"{key:<14} {plan_len!s:>11} {m['error']}")
                continue
            for row in m["rows"]:
                err = "-" if row["error_pct"] is None else f"{row['error_pct']:+.2f}"
                lines.append(f"{key:<14} {plan_len!s:>11} {row['part']:<15} "
                             f"{fmt_bytes(row['predicted']):>12} {fmt_bytes(row['measured']):>12} {err:>8}")
    backends = results.get("backends")
    if backends and backends.data.get("rows"):
        lines += ["", f"{'level':<10} {'device':<6} {'path':<7} {'q_len':>5} {'err causal':>11} "
                      f"{'err non-causal':>14}  verdict"]
        for row in backends.data["rows"]:
            lines.append(f"{row['level']:<10} {row['device']:<6} {row['path']:<7} {row['q_len']:>5} "
                         f"{row['err_vs_causal']:>11.4f} {row['err_vs_noncausal']:>14.4f}  {row['verdict']}")
    return "\n".join(lines)


def document(ctx: Context, results: dict[str, StepResult], started: str) -> dict[str, Any]:
    return {
        "tool": "bench/gpu_validate.py", "dry_run": ctx.args.dry_run, "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "torch": dist_version("torch"), "exllamav2": dist_version("exllamav2"),
                    "cpus": os.cpu_count(),
                    "exlx_autocfg": str(Path(exlx_autocfg.__file__).parent)},
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(ctx.args).items()
                    if k != "out"},
        "steps": {name: dataclasses.asdict(res) for name, res in results.items()},
    }


# ---- main --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU only: probe, tiny model + plans, CPU backends")
    ap.add_argument("--out", help="results folder (default: $OUT)")
    ap.add_argument("--work", help="where the test model is written (default: a temp folder)")
    ap.add_argument("--model-size", choices=sorted(SHAPES), default="1b", help="GPU run model size")
    ap.add_argument("--fixed-len", type=int, default=4096, help="the fixed max_seq_len loaded per cache mode")
    ap.add_argument("--cache-modes", default=",".join(CACHE_MODES), help="comma-separated, of FP16,Q8,Q6,Q4")
    ap.add_argument("--steps", default=",".join(STEPS), help="comma-separated subset of " + ",".join(STEPS))
    ap.add_argument("--deadline", type=float, default=400.0, help="seconds for the whole run (GPU run)")
    ap.add_argument("--build-timeout", type=float, default=300.0, help="seconds for the extension build")
    args = ap.parse_args(argv)
    args.cache_modes = tuple(m.strip().upper() for m in args.cache_modes.split(",") if m.strip())
    args.steps = tuple(s.strip() for s in args.steps.split(",") if s.strip())
    bad = [m for m in args.cache_modes if m not in CACHE_MODES] + [s for s in args.steps if s not in STEPS]
    if bad:
        ap.error(f"unknown cache mode or step: {', '.join(bad)}")
    if args.fixed_len <= 0 or args.deadline <= 0:
        ap.error("--fixed-len and --deadline must be positive")
    args.out = args.out or os.environ.get("OUT")
    if not args.out:
        ap.error("no results folder: pass --out DIR or set $OUT")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # argparse has printed the one-line usage error
        return int(exc.code or 0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="exlx-validate-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(args=args, out=out, work=work, deadline=time.monotonic() + args.deadline)
    # Before anything creates a CUDA context: what the GPUs already hold, so the process's share is known.
    used = nvml_used_bytes()
    ctx.nvml_used_before_cuda = sum(used.values()) if used else None
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    steps = {"probe": step_probe, "build": step_build, "memory": step_memory, "backends": step_backends}
    results: dict[str, StepResult] = {}
    for name, fn in steps.items():
        if name not in args.steps:
            results[name] = StepResult(name, status="skipped", summary="not selected (--steps)")
            continue
        print(f"[gpu_validate] {name} ...", flush=True)
        results[name] = run_step(name, fn, ctx)
        print(f"[gpu_validate] {name}: {results[name].status} in {results[name].seconds} s "
              f"{results[name].error or ''}", flush=True)
        write_json_atomic(out / "validate.json", document(ctx, results, started))
    try:
        table = render_table(results)
    except Exception as exc:  # the JSON is already written; a rendering bug must not lose the run
        table = f"(table could not be rendered: {first_error_line(exc)}; see validate.json)"
    (out / "table.txt").write_text(table + "\n")
    write_json_atomic(out / "validate.json", document(ctx, results, started))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print(table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
