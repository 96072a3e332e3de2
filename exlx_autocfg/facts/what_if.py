"""The GPU table (`profiles/gpus.toml`) and what-if facts: `--gpu NAME[xN]` and `--assume PKG==VER`.

What-if facts are the same `Facts` document `detect` produces, built from the tables instead of this
machine (`what_if=True`): GPUs from the GPU table, libraries from `--assume` on top of a base stack (the
probed one, or the default stack in `profiles/backends.toml`). Details a probe would have measured
(flash-attn features, xformers import paths and torch ABI, torch's `causal_lower_right`) are derived from
the versions with the rules data, so the planner reads what-if and probed facts the same way.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass

from packaging.utils import canonicalize_name

from exlx_autocfg import exl2
from exlx_autocfg.data import load_data
from exlx_autocfg.errors import OptionError, UsageError
from exlx_autocfg.facts.derived import derived_details
from exlx_autocfg.facts.types import GPU, DeviceOrder, Facts, GPUReport, LibraryFacts, PythonFacts
from exlx_autocfg.findings import Finding, finding
from exlx_autocfg.versions import cc_of, version_of

MIB = 1024 * 1024
MAX_GPUS = 16  # per --gpu value

# Names users type for the libraries the rules know about -> distribution names in the facts.
KNOWN_PACKAGES = ("torch", "exllamav2", "flash-attn", "xformers", "exllamav3", "triton")
_ALIASES = {"flash-attention": "flash-attn", "flash_attn": "flash-attn", "pytorch": "torch"}


@dataclass(frozen=True)
class TableGPU:
    id: str
    name: str
    vendor: str
    architecture: str
    memory_mib: int
    bandwidth_gbs: float
    cc: str | None = None
    gfx: str | None = None
    aliases: tuple[str, ...] = ()

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * MIB

    def to_gpu(self, index: int) -> GPU:
        return GPU(
            index=index,
            name=self.name,
            vendor=self.vendor,  # type: ignore[arg-type]
            memory_total=self.memory_bytes,
            compute_capability=self.cc,
            # AMD has no CUDA compute capability: the gfx target is what the rules read.
            architecture=self.gfx or self.architecture,
            cuda_index=index,
            source="table",
        )


def gpu_table() -> list[TableGPU]:
    rows = load_data("gpus.toml")["gpu"]
    return [TableGPU(**{k: tuple(v) if isinstance(v, list) else v for k, v in row.items()}) for row in rows]


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def ambiguous_names() -> dict[str, list[str]]:
    """Names that fit several rows (`[[ambiguous]]` in gpus.toml), by key -> the candidate ids."""
    return {_key(row["name"]): list(row["candidates"]) for row in load_data("gpus.toml").get("ambiguous", [])}


def _lookup(name: str) -> TableGPU | list[TableGPU] | None:
    """The row `name` names, the candidate rows when it is ambiguous, or None."""
    wanted = _key(name)
    table = gpu_table()
    for row in table:  # the id and the driver name win over aliases ("RTX 2080 Ti" is the 11 GB card)
        if wanted in (_key(row.id), _key(row.name)):
            return row
    for row in table:
        if wanted in {_key(a) for a in row.aliases}:
            return row
    candidates = ambiguous_names().get(wanted)
    if candidates:
        by_id = {row.id: row for row in table}
        return [by_id[c] for c in candidates]
    return None


def _ambiguous(name: str, rows: list[TableGPU]) -> UsageError:
    listed = ", ".join(f"{row.id} ({row.memory_mib / 1024:g} GiB)" for row in rows)
    return UsageError(f"GPU name {name!r} is ambiguous: the table has {listed}",
                      hint=f"name the one you mean: {' or '.join(row.id for row in rows)}")


def find_gpu(name: str) -> TableGPU:
    """The table row for `name` (id, driver name or alias; case and punctuation ignored). A name that
    fits several rows (an A100: 40 or 80 GB) is refused with the candidates, never guessed."""
    found = _lookup(name)
    if isinstance(found, TableGPU):
        return found
    if found:
        raise _ambiguous(name, found)
    table = gpu_table()
    spellings = {row.id: row.id for row in table}
    spellings.update({a: row.id for row in table for a in (row.name, *row.aliases)})
    close = difflib.get_close_matches(name.lower(), [s.lower() for s in spellings], n=6, cutoff=0.5)
    by_lower = {s.lower(): rid for s, rid in spellings.items()}
    ids = list(dict.fromkeys(by_lower[c] for c in close))[:4]
    hint = f"close matches: {', '.join(ids)}" if ids else "run `exlx-autocfg plan --list-gpus` for the table"
    raise UsageError(f"unknown GPU {name!r}", hint=hint)


_COUNT_AFTER = re.compile(r"(.+?)\s*[x×*]\s*(\d+)", flags=re.IGNORECASE)  # 3090x2, RTX 3090 x 4
_COUNT_BEFORE = re.compile(r"(\d+)\s*[x×*]\s*(.+)", flags=re.IGNORECASE)  # 2x3090, 4 x RTX 4090


def parse_gpu_option(text: str) -> list[TableGPU]:
    """`NAME`, `NAMExN` or `NxNAME` (also `NAME x N`, `NAME*N`, `N x NAME`) -> N table rows."""
    if not isinstance(text, str) or not text.strip():
        raise OptionError("gpu", text, "expected a GPU name, e.g. 3090, 'RTX 2080 Ti 22GB' or 3090x2")
    text = text.strip()
    if _lookup(text) is None:
        for pattern, name_group, count_group in ((_COUNT_AFTER, 1, 2), (_COUNT_BEFORE, 2, 1)):
            m = pattern.fullmatch(text)
            if not m:
                continue
            row = _lookup(m.group(name_group))
            if row is None:
                continue  # "RTX 3080" is an unknown name, not "RTX 3" x 080
            if isinstance(row, list):
                raise _ambiguous(m.group(name_group), row)
            count = int(m.group(count_group))
            if not 1 <= count <= MAX_GPUS:
                raise OptionError("gpu", text, f"count must be between 1 and {MAX_GPUS}")
            return [row] * count
    return [find_gpu(text)]


def parse_assume(text: str) -> tuple[str, str | None]:
    """`PKG==VER` -> (distribution name, version); `PKG==none` means "not installed"."""
    m = re.fullmatch(_ASSUME, text) if isinstance(text, str) else None
    if not m:
        raise OptionError("assume", text, "expected PKG==VERSION, e.g. flash-attn==2.7.4 or xformers==none")
    name = canonicalize_name(m.group(1))
    name = _ALIASES.get(name, name)
    if name not in KNOWN_PACKAGES:
        raise OptionError("assume", text, f"unknown package {name!r}; known: {', '.join(KNOWN_PACKAGES)}")
    version = m.group(2)
    if version.lower() == "none":
        return name, None
    if version_of(version) is None:
        raise OptionError("assume", text, f"{version!r} is not a version")
    return name, version


_ASSUME = re.compile(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([A-Za-z0-9_.+\-]+)\s*")


def _library(name: str, version: str, *, rocm: bool) -> LibraryFacts:
    public, _, local = version.partition("+")
    build: dict[str, str] = {}
    if name == "torch":
        if not local:
            local = exl2.backend_rules()["what_if"]["default_build"]["rocm" if rocm else "cuda"]
        m = re.match(r"(cu|rocm)(\d+(?:\.\d+)*)", local)
        if m and m.group(1) == "cu":
            digits = m.group(2)
            build["cuda"] = f"{digits[:-1]}.{digits[-1]}" if "." not in digits else digits
        elif m:
            build["rocm"] = m.group(2)
    return LibraryFacts(
        name=name,
        installed=True,
        version=public,
        local_tag=local or None,
        build=build,
        import_status="ok",
    )


def recommended_libraries(gpus: list[GPU]) -> dict[str, str]:
    """The attention libraries a what-if plan assumes for these GPUs (`what_if.recommended` in the rules):
    the ones a user would install for them, so that `--gpu 3090` plans with flash-attn, not matmul."""
    out: dict[str, str] = {}
    for name, row in exl2.backend_rules()["what_if"].get("recommended", {}).items():
        min_cc = cc_of(row["min_cc"])
        if gpus and all(g.vendor == row["vendor"] and g.cc is not None and g.cc >= min_cc for g in gpus):
            out[name] = row["version"]
    return out


def what_if_gpu_order(gpus: list[GPU]) -> Finding | None:
    """The assumption a what-if rig of different GPUs rests on: the `--gpu` order is both the PCI bus order
    and CUDA's device order (None for identical GPUs, where the order changes nothing)."""
    if len({(g.name, g.memory_total) for g in gpus}) < 2:
        return None
    order = ", ".join(f"#{g.index} {g.name}" for g in gpus)
    return finding(
        "plan.what_if.gpu_order",
        f"what-if rig of different GPUs: taken in the --gpu order ({order}) as both their PCI bus order and "
        "CUDA's device order; the split follows that order, so check the real machine's with `exlx-autocfg "
        "detect` (CUDA numbers the fastest GPU first unless CUDA_DEVICE_ORDER=PCI_BUS_ID)",
        order=[g.name for g in gpus],
    )


def what_if_facts(
    gpus: list[str] | None = None,
    assume: list[str] | None = None,
    base: Facts | None = None,
    *,
    recommended: bool = False,
) -> Facts:
    """Facts for a what-if plan.

    `gpus`: `--gpu` values (replace the GPUs of `base`); `assume`: `--assume PKG==VER` values (replace or
    remove libraries). Libraries neither assumed nor in `base` come from the default stack, but only when
    there is no `base`: with a probed base, what is not installed stays not installed. `recommended` adds
    the attention libraries a user would install for these GPUs (`recommended_libraries`), so that a bare
    `plan --gpu 3090` answers "what will I get" rather than "what does torch alone give".
    """
    if base is None and not gpus:
        raise UsageError("a what-if plan needs --gpu NAME (or facts from this machine)")
    facts = (
        copy.deepcopy(base)
        if base is not None
        else Facts(python=PythonFacts(executable="(what-if)", version="3.11"))
    )
    facts.what_if = True
    if gpus:
        rows = [row for spec in gpus for row in parse_gpu_option(spec)]
        vendors = {row.vendor for row in rows}
        if len(vendors) > 1:
            raise UsageError("--gpu mixes NVIDIA and AMD GPUs; exllamav2 runs on one of CUDA or ROCm")
        facts.gpu = GPUReport(gpus=[row.to_gpu(i) for i, row in enumerate(rows)], source="table")
        order = what_if_gpu_order(facts.gpu.gpus)
        facts.gpu.device_order = DeviceOrder(pci_order_matches_cuda=True if order is None else None,
                                             note=order.message if order else None)
    rocm = any(g.vendor == "amd" for g in facts.gpu.gpus)
    if base is None:
        stack = {"exllamav2": exl2.LATEST, **exl2.backend_rules()["what_if"]["default_stack"]}
        for name, version in stack.items():
            if name != "source":
                facts.libraries[name] = _library(name, version, rocm=rocm)
        for name, version in (recommended_libraries(facts.gpu.gpus) if recommended else {}).items():
            facts.libraries[name] = _library(name, version, rocm=rocm)
    for spec in assume or []:
        name, version = parse_assume(spec)
        if version is None:
            facts.libraries[name] = LibraryFacts(name=name, installed=False)
        else:
            facts.libraries[name] = _library(name, version, rocm=rocm)
    torch_version = facts.version_of("torch")
    if torch_version and rocm:
        facts.libraries["torch"].details.setdefault(
            "hip_version",
            facts.libraries["torch"].build.get("rocm")
            or exl2.backend_rules()["what_if"]["default_build"]["rocm"].removeprefix("rocm"),
        )
    # Derive what a probe would have measured, for the libraries the what-if replaced.
    assumed = {parse_assume(s)[0] for s in assume or []}
    for name, lib in facts.libraries.items():
        if (
            lib.installed
            and lib.version
            and (base is None or name in assumed or lib.import_status == "not-tried")
        ):
            for key, value in derived_details(name, lib.version, torch_version).items():
                lib.details.setdefault(key, value)
    return facts
