"""The package's imports point one way: no module imports one that imports it back,
and no package does (``engines`` never imports ``chat`` while ``chat`` imports
``engines``). Every import counts, also those under TYPE_CHECKING or inside a function:
a circle that only type checkers see today is one a later edit makes real."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import llamahost

ROOT = Path(llamahost.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if "migrations" in parts:  # alembic loads these by path, not by import
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # ``from pkg import mod`` imports the module pkg.mod, not just pkg.
            names = [f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in MODULES else origin for alias in node.names]
        else:
            continue
        for name in names:
            target = _resolve(name) if name.startswith("llamahost") else None
            if target is not None and target != module:
                targets.add(target)
    return targets


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


MODULE_GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _package(module: str) -> str:
    """``llamahost.chat.service`` -> ``llamahost.chat``; a top-level module is its own unit."""
    parts = module.split(".")
    if len(parts) > 2 or MODULES[module].name == "__init__.py":
        return ".".join(parts[:2])
    return module


def test_no_module_imports_one_that_imports_it_back():
    assert _cycles(MODULE_GRAPH) == []


def test_no_package_imports_one_that_imports_it_back():
    graph: dict[str, set[str]] = defaultdict(set)
    for module, targets in MODULE_GRAPH.items():
        for target in targets:
            if _package(module) != _package(target):
                graph[_package(module)].add(_package(target))
    assert _cycles(graph) == []


def test_the_checker_sees_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", sorted({_package(m) for m in MODULES} - {"llamahost", "llamahost.__main__"}))
def test_each_package_imports_on_its_own(package):
    # A fresh interpreter each: an import that only works after another package happened
    # to be imported first is an order dependency this catches.
    subprocess.run([sys.executable, "-c", f"import {package}"], check=True, timeout=120)
