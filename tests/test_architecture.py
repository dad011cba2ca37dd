"""The house's rules, checked on the source: arrows only downward (experiments -> observers ->
ingredients), and no file-level import cycle, imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = {"ingredients": 1, "observers": 2, "experiments": 3}


def module_name(file: Path) -> str:
    parts = file.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(file): file
        for package in FLOORS
        for file in sorted((ROOT / package).rglob("*.py"))
    }


def imported(file: Path, known: dict[str, Path]) -> set[str]:
    """The project modules a file imports anywhere in it (top level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    known = project_modules()
    return {name: imported(file, known) - {name} for name, file in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while (member := stack.pop()) != node:
                group.append(member)
            if group:
                found.append(sorted([node, *group]))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_files():
    assert cycles(import_graph()) == []


def test_imports_point_only_downward():
    upward = [
        f"{name} imports {other}"
        for name, others in import_graph().items()
        for other in others
        if FLOORS[other.split(".")[0]] > FLOORS[name.split(".")[0]]
    ]
    assert upward == []


def test_no_module_is_imported_through_a_string():
    """import_module/__import__ would hide an arrow from this test and from a reader. (The
    one module that imports by name imports the user's own code: `model.name=pkg.mod:fn`.)"""
    for name, file in project_modules().items():
        if name == "ingredients.imports":
            continue
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Call):
                called = ast.unparse(node.func)
                assert called not in ("__import__", "importlib.import_module"), (name, called)


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set()}, []),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert cycles(graph) == expected
