"""The layer contract, read from the source with `ast` (every import, module level and lazy).

The pure core (the planner, the memory model, the model readers, the vocabulary and the facts types) never
reaches an edge: no CLI, emitters, profile files or loader, no probing, no typer / rich / ruamel, no GPU
stack. Stages import only stages below them. exllamav2's switch names are spelled in one module, and no
decision reads reason text.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "exlx_autocfg"

UI = {"typer", "rich", "ruamel", "click"}
GPU_STACK = {"torch", "exllamav2", "xformers", "flash_attn", "pynvml"}
EDGES = {
    "exlx_autocfg.cli",
    "exlx_autocfg.emitters",
    "exlx_autocfg.checks",
    "exlx_autocfg.profile",
    "exlx_autocfg.facts.detect",
    "exlx_autocfg.facts.probe_runner",
    "exlx_autocfg.facts.gpuinfo",
    "exlx_autocfg.probe",
}
CORE_VOCABULARY = ["exl2", "settings", "findings", "versions", "data", "serde", "errors", "xformers_releases"]

# module prefix -> what it must never import (a name matches a prefix at a dot boundary)
CONTRACT: dict[str, set[str]] = {
    "exlx_autocfg.planner": EDGES | UI | GPU_STACK,
    "exlx_autocfg.model": EDGES | UI | GPU_STACK | {"exlx_autocfg.planner"},
    "exlx_autocfg.facts.types": EDGES | UI | GPU_STACK | {"exlx_autocfg.planner", "exlx_autocfg.model"},
    "exlx_autocfg.facts.derived": EDGES | UI | GPU_STACK | {"exlx_autocfg.planner", "exlx_autocfg.model"},
    "exlx_autocfg.facts.what_if": EDGES | UI | GPU_STACK | {"exlx_autocfg.planner", "exlx_autocfg.model"},
    **{
        f"exlx_autocfg.{m}": EDGES | UI | GPU_STACK | {"exlx_autocfg.planner", "exlx_autocfg.model"}
        for m in CORE_VOCABULARY
    },
    "exlx_autocfg.emitters": {
        "exlx_autocfg.cli",
        "exlx_autocfg.checks",
        "exlx_autocfg.profile.loader",
        "exlx_autocfg.facts.detect",
        "typer",
        "rich",
    }
    | GPU_STACK,
    "exlx_autocfg.checks": {
        "exlx_autocfg.cli",
        "exlx_autocfg.emitters",
        "exlx_autocfg.profile",
        "typer",
        "rich",
    }
    | GPU_STACK,
    "exlx_autocfg.profile.format": {"exlx_autocfg.cli", "exlx_autocfg.emitters", "exlx_autocfg.checks"}
    | UI
    | GPU_STACK,
    "exlx_autocfg.profile.staleness": {"exlx_autocfg.cli", "exlx_autocfg.emitters", "exlx_autocfg.checks"}
    | UI
    | GPU_STACK,
    "exlx_autocfg": {"tools", "tests", "bench"},  # nothing shipped imports the dev tools
}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return out


def matches(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_module_respects_the_layer_contract(path):
    name = module_name(path)
    forbidden = set().union(*(banned for prefix, banned in CONTRACT.items() if matches(name, prefix)))
    bad = [
        f"{name}:{line} imports {target}"
        for line, target in imports(path)
        if any(matches(target, b) for b in forbidden) and not matches(target, name)
    ]
    assert not bad, "\n".join(bad)


def test_the_contract_covers_the_core():
    names = {module_name(p) for p in MODULES}
    assert {n for n in names if matches(n, "exlx_autocfg.planner")} >= {
        "exlx_autocfg.planner.core",
        "exlx_autocfg.planner.memory",
        "exlx_autocfg.planner.fit",
        "exlx_autocfg.planner.backends",
        "exlx_autocfg.planner.split",
        "exlx_autocfg.planner.decisions",
        "exlx_autocfg.planner.assemble",
        "exlx_autocfg.planner.request",
        "exlx_autocfg.planner.solver",
    }
    # a violation is caught: the checker sees lazy imports inside functions too
    fake = ROOT / "exlx_autocfg" / "planner" / "core.py"
    assert "exlx_autocfg.model.load" in {t for _, t in imports(fake)}


def _string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_exllamav2_switch_names_are_spelled_in_one_module():
    spelled = [
        f"{module_name(p)}:{line}"
        for p in MODULES
        if p.name != "exl2.py"
        for line, text in _string_constants(p)
        if re.search(r"EXLLAMA_NO_[A-Z]", text)  # a name; "EXLLAMA_NO_*" in prose names none
    ]
    assert spelled == []


TEXT_ATTRS = {"message", "why", "reason", "choice"}
TEXT_TESTS = {"startswith", "endswith", "removeprefix", "removesuffix", "partition", "find", "index", "count"}


def test_no_decision_reads_reason_text():
    """Reasons, findings and verdicts are compared by code; their prose is only rendered."""
    offenders = []
    for p in MODULES:
        tree = ast.parse(p.read_text(), str(p))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in TEXT_TESTS
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr in TEXT_ATTRS
            ):
                offenders.append(f"{module_name(p)}:{node.lineno} .{node.func.value.attr}.{node.func.attr}()")
            if isinstance(node, ast.Compare) and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops):
                for side in node.comparators:
                    if isinstance(side, ast.Attribute) and side.attr in TEXT_ATTRS:
                        offenders.append(f"{module_name(p)}:{node.lineno} `in` .{side.attr}")
    assert offenders == []
