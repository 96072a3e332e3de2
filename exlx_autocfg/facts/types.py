"""The facts document: what `detect` found on this machine, typed and JSON round-trippable.

Facts are gathered at the edges (NVML/ROCm in the CLI's process, `probe/exlx_probe.py` in the interpreter
that will run the model) and are the only input the planner and the checks read about the machine.
What-if planning (`--gpu`, `--assume`) builds the same document from the tables in `profiles/`.

Library `details` keys (set by the probe; absent when unknown). The libraries dict is keyed by the
target name (torch, xformers, flash-attn, exllamav2, exllamav3, mslk, triton); docs/facts-schema.md has
the full schema with examples.
- every imported library: module_version (`__version__` as imported), warnings ([str], each condensed to
  one line, at most 10); distribution (when the dist name differs, e.g. pytorch-triton)
- torch: version, cuda_version ("12.1"|None), hip_version, cuda_available (bool), device_count (int),
  devices ([{index, name, capability "8.6", total_memory, multi_processor_count, uuid?, pci_bus_id?,
  gcn_arch? (ROCm)}]), arch_list (["sm_80", ...]), has_causal_lower_right (bool), cudnn_version (int|None),
  cxx11_abi (bool|None)
- xformers: import_paths ({dotted path: bool}), import_path_errors ({path: first error line}),
  has_cpp_library (bool), cpp_load_error (str|None: the innermost load error, e.g. the dlopen message),
  built_for ({torch, cuda "12.1", python, hip, flash?} from cpp_lib.json, read without importing),
  built_for_warning (str|None: xformers' "can't load C++/CUDA extensions ... built for ..." warning),
  flash_version_error (str|None), flash_version (str|None: FLASH_VERSION of its flash op), warnings
- flash-attn: features ({window_size, softcap, kvcache, paged} bools), cuda_module_error (str|None),
  func_error (str|None)
- exllamav2 / exllamav3 (never imported: that would JIT-compile): ext ("prebuilt" | "prebuilt-broken" |
  "jit-cached" | "jit-needed"), ext_path (str|None), ext_error (str|None), ext_loaded (bool, when loaded),
  jit ({nvcc, nvcc_version, ninja, ninja_on_path, compiler, cache_dir, torch_cuda_version,
  torch_hip_version})
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from exlx_autocfg.errors import FactsError
from exlx_autocfg.serde import from_data, schema_problem, to_data
from exlx_autocfg.versions import cc_of

FACTS_SCHEMA = 1

Vendor = Literal["nvidia", "amd"]
ImportStatus = Literal["ok", "error", "timeout", "crashed", "not-tried"]


@dataclass
class GPU:
    index: int  # NVML index (PCI bus order), or the reader's own order when there is no NVML
    name: str
    vendor: Vendor
    memory_total: int  # bytes
    memory_free: int | None = None  # bytes; None for what-if GPUs
    memory_used: int | None = None  # bytes
    compute_capability: str | None = None  # "8.6"; None where unknown (most AMD readers)
    architecture: str | None = None  # "ampere", "turing", "gfx1100"...
    uuid: str | None = None
    pci_bus_id: str | None = None
    cuda_index: int | None = None  # the index CUDA/torch uses, after CUDA_DEVICE_ORDER / CUDA_VISIBLE_DEVICES
    mig_mode: bool | None = None
    source: str = "nvml"  # nvml | amdsmi | rocm-smi | amd-smi | torch | table

    @property
    def cc(self) -> tuple[int, int] | None:
        return cc_of(self.compute_capability)


@dataclass
class DeviceOrder:
    """How NVML's numbering (PCI bus order) maps to the one CUDA will use for this process."""

    cuda_device_order: str | None = None  # the CUDA_DEVICE_ORDER env value (None means FASTEST_FIRST)
    cuda_visible_devices: str | None = None  # the CUDA_VISIBLE_DEVICES env value
    hip_visible_devices: str | None = None
    pci_order_matches_cuda: bool | None = None  # None when it cannot be known without CUDA
    note: str | None = None


@dataclass
class GPUReport:
    gpus: list[GPU] = field(default_factory=list)
    source: str | None = None  # which reader produced `gpus`
    driver_version: str | None = None
    cuda_driver_version: str | None = None  # "12.4": the newest CUDA the driver supports
    rocm_version: str | None = None
    device_order: DeviceOrder = field(default_factory=DeviceOrder)
    problems: list[str] = field(default_factory=list)  # "NVML library not found", ...


@dataclass
class LibraryFacts:
    name: str  # distribution name: torch, xformers, flash-attn, exllamav2, exllamav3, mslk, triton
    installed: bool
    version: str | None = None  # from package metadata, without importing
    local_tag: str | None = None  # "cu121", "rocm6.1", "cu128.torch2.9.0"
    build: dict[str, str] = field(default_factory=dict)  # parsed tag: cuda "12.1", rocm "6.1", torch "2.9.0"
    location: str | None = None
    import_status: ImportStatus = "not-tried"
    import_error: str | None = None  # the first useful error line
    import_seconds: float | None = None
    details: dict[str, Any] = field(default_factory=dict)  # per-library keys, see the module docstring


@dataclass
class PythonFacts:
    executable: str
    version: str  # "3.11.7"
    implementation: str = "CPython"
    platform: str = ""  # sys.platform + machine, "linux-x86_64"


@dataclass
class Facts:
    python: PythonFacts
    gpu: GPUReport = field(default_factory=GPUReport)
    libraries: dict[str, LibraryFacts] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # the variables that change behaviour, as set
    problems: list[str] = field(default_factory=list)
    what_if: bool = False  # True when any part comes from --gpu/--assume instead of this machine
    created: str = ""  # ISO 8601 UTC
    tool_version: str = ""
    probe_seconds: float | None = None
    probe_cached: str | None = None  # import results reused from the probe cache: when they were taken (UTC)
    schema: int = FACTS_SCHEMA

    def lib(self, name: str) -> LibraryFacts:
        """The facts for one library; a not-installed entry when the probe did not report it."""
        return self.libraries.get(name) or LibraryFacts(name=name, installed=False)

    def version_of(self, name: str) -> str | None:
        lib = self.libraries.get(name)
        return lib.version if lib and lib.installed else None

    def to_dict(self) -> dict[str, Any]:
        return to_data(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Facts:
        """Facts from a document `to_dict` (or `detect --json`) wrote. Raises FactsError (one line) for
        another schema (missing, a string, a version this tool does not read) or a field of the wrong
        type."""
        if not isinstance(data, dict):
            raise FactsError(f"not a facts document: the top level is a {type(data).__name__}, not an object")
        if "schema" not in data:
            raise FactsError(f"not a facts document: no schema (this tool reads schema {FACTS_SCHEMA})")
        problem = schema_problem(data["schema"], FACTS_SCHEMA)
        if problem:
            raise FactsError(f"facts schema: {problem}",
                             hint="re-create it with `exlx-autocfg detect --json`")
        try:
            return from_data(cls, data)
        except (TypeError, ValueError) as exc:
            text = " ".join(str(exc).split()).removeprefix("Facts.")
            raise FactsError(f"facts document: {text}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> Facts:
        """Facts from JSON text; FactsError when it is not JSON or not a facts document (`from_dict`)."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
            raise FactsError(f"not a facts document: not JSON{where}") from None
        return cls.from_dict(data)
