"""The shape of the code: the import graph of the ``agi_app`` packages.

Layers, bottom up: the protocols (``agi``, ``ami``) and the leaf modules
(``errors``, ``times``, ``validation``...), the store, the services
(``calls``, ``live``, ``events``, ``ivr``), the HTTP and WebSocket sides
(``web``, ``ws``), and ``app`` on top that wires them.  A lower package
never imports a higher one -- not even inside a function -- so the graph of
packages has no cycle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import agi_app

ROOT = Path(agi_app.__file__).parent
#: modules that import lazily on purpose (the command line starts fast)
LAZY = {"agi_app.cli", "agi_app.demo", "agi_app.client"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def imports() -> list[tuple[str, str, bool, bool]]:
    """Every import of an ``agi_app`` module: ``(importer, imported,
    type_checking_only, inside_a_function)``."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        importer = _module(path)
        tree = ast.parse(path.read_text())
        checking: set[int] = set()
        nested: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                checking.update(id(n) for n in ast.walk(node))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                nested.update(id(n) for n in ast.walk(node) if n is not node)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "agi_app":
                    targets = [f"agi_app.{alias.name}" for alias in node.names]
                elif node.module.startswith("agi_app."):
                    targets = [node.module]
                else:
                    continue
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("agi_app.")]
            else:
                continue
            for target in targets:
                found.append((importer, target, id(node) in checking, id(node) in nested))
    return found


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for importer, imported, checking, _nested in imports():
        a, b = _package(importer), _package(imported)
        if a != b and not checking:
            graph[a].add(b)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def test_the_packages_import_each_other_without_a_cycle():
    graph = package_graph()
    assert graph["agi_app.app"], "the walk found no imports at all"
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_calls_never_import_ivr():
    bad = [(a, b) for a, b, _c, _n in imports()
           if _package(a) == "agi_app.calls" and _package(b) == "agi_app.ivr"]  # fmt: skip
    assert bad == []


def test_the_store_imports_no_service_or_web_layer():
    allowed = {"agi_app.calls.statuses", "agi_app.events.store"}
    above = ("agi_app.calls", "agi_app.ivr", "agi_app.live", "agi_app.web", "agi_app.ws",
             "agi_app.events", "agi_app.app")  # fmt: skip
    bad = [(a, b) for a, b, _c, _n in imports()
           if _package(a) == "agi_app.store" and b.startswith(above) and b not in allowed]
    assert bad == []


def test_no_import_hides_inside_a_function():
    hidden = [(a, b) for a, b, checking, nested in imports()
              if nested and not checking and a not in LAZY]  # fmt: skip
    assert hidden == []


def test_test_files_have_unique_names():
    """pytest imports test files by their base name (no packages under
    tests/): two test_x.py in different folders break a run of the whole
    suite."""
    tests = ROOT.parent / "tests"
    names = [p.name for p in tests.rglob("test_*.py")]
    assert len(names) > 50, "the walk found no tests"
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
