"""The library's layering, read from its source with ``ast`` (nothing is imported):

- no import cycle between its modules: the graph has an edge A -> B for every ``import`` in A, at the top of the
  module or inside a function alike, that makes Python execute B (a ``from P import name`` is an edge to
  ``P.name`` when that is a module, else to ``P``; importing ``a.b.c`` also runs the packages ``a`` and ``a.b``,
  so those are edges too, except to A's own enclosing packages, which always run before A);
- the model floor of ``roofline/`` (GPU specs, cost models, traffic counting, occupancy, the timing model)
  imports nothing, directly or through another module, from the op registry (``kernels.ops``), ``perf`` or the
  CLI (``servekernels``).

The library is every module of the packages below except the test files (``test_*.py``, ``conftest.py``).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.host_only("reads the source's imports: no kernel")

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "roofline", "perf", "servekernels", "engine", "correctness")
MODEL_FLOOR = ("roofline.specs", "roofline.cost", "roofline.counting", "roofline.occupancy", "roofline.timing_model")
ABOVE_THE_FLOOR = ("kernels.ops", "perf", "servekernels")


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if not (path.name.startswith("test_") or path.name == "conftest.py"):
                mods[_name(path)] = path
    return mods


def import_graph(mods: dict[str, Path]) -> dict[str, dict[str, int]]:
    """``{module: {imported library module: line of the first import}}``."""
    graph = {}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:  # `import a.b.name` of a non-module name: its module
                    target = target.rpartition(".")[0]
                if not target:
                    continue  # not the library's
                parts = target.split(".")
                for i in range(1, len(parts) + 1):  # the module and every package Python runs to reach it
                    run = ".".join(parts[:i])
                    if run in mods and run != mod and not mod.startswith(run + "."):
                        edges.setdefault(run, node.lineno)
        graph[mod] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def reachable(graph: dict[str, dict[str, int]], start: str) -> dict[str, list[str]]:
    """Every module ``start`` runs, with one import path to it."""
    paths = {start: [start]}
    todo = [start]
    while todo:
        mod = todo.pop()
        for dep in graph.get(mod, ()):
            if dep not in paths:
                paths[dep] = paths[mod] + [dep]
                todo.append(dep)
    return paths


@pytest.fixture(scope="module")
def graph():
    mods = library_modules()
    assert len(mods) > 100 and "kernels.ops" in mods and "roofline.cost" in mods  # the walk found the library
    return import_graph(mods)


def test_the_graph_sees_function_level_and_relative_imports():
    """The reader itself: a function-level import and a package run on the way are edges."""
    g = import_graph(library_modules())
    assert "kernels.testing.paged" in g["kernels.ops.paged_decode"]  # imported inside build()
    assert "kernels.reference" in g["kernels.testing.judge"]  # a package run to reach kernels.reference._arrays
    assert cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]


def test_no_import_cycle(graph):
    found = cycles(graph)
    lines = []
    for comp in found:
        inside = set(comp)
        lines.append(" <-> ".join(comp) + ":\n" + "\n".join(
            f"    {mod.replace('.', '/')}.py:{line} imports {dep}"
            for mod in comp for dep, line in sorted(graph[mod].items()) if dep in inside))
    assert not found, "import cycles:\n" + "\n".join(lines)


@pytest.mark.parametrize("floor", MODEL_FLOOR)
def test_the_model_floor_imports_nothing_above_it(graph, floor):
    assert floor in graph, f"{floor}: no such module (the model floor moved: update MODEL_FLOOR)"
    bad = {mod: path for mod, path in reachable(graph, floor).items()
           if any(mod == up or mod.startswith(up + ".") for up in ABOVE_THE_FLOOR)}
    assert not bad, f"{floor} imports above the model floor: " + "; ".join(
        " -> ".join(path) for path in bad.values())
