"""Imports run one way (docs/design.md, "Layers"): the graph of imports between the modules of bench/
and baselines/ has no cycle, and baselines/ never imports bench/.

Every ``import`` and ``from ... import`` counts, at module level or inside a function (a function-local
import that only dodges a cycle still is one), relative ones resolved; ``from bench import x`` is an
edge to ``bench.x`` when x is a submodule, else to the package ``bench``. Read with ``ast``: nothing
is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "baselines")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _target(name: str) -> str | None:
    """The project module ``name`` names, or the closest enclosing one (``bench.data.X`` -> ``bench.data``
    when X is no module); None outside the project."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _edges(module: str, path: Path, text: str | None = None) -> set[str]:
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8") if text is None else text, str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from bench import x`: the submodule bench.x when there is one, else the package itself
            names = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in MODULES else stem for alias in node.names]
        else:
            continue
        for name in names:
            target = _target(name)
            if target is not None and target != module:
                out.add(target)
    return out


GRAPH = {module: _edges(module, path) for module, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One cycle through the component's first module, as the modules in import order."""
    members, start = set(component), component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    cycle = [v]
                    while cycle[-1] != start:
                        cycle.append(parents[cycle[-1]])
                    return [start, *reversed(cycle[:-1]), start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    return component


def test_the_graph_is_read():
    assert {"bench.cli", "bench.spec", "bench.data", "bench.data.registry", "baselines.registry"} <= set(GRAPH)
    assert "bench.errors" in GRAPH["bench.spec"] and "baselines.constraints" in GRAPH["bench.spec"]


def test_imports_have_no_cycle():
    cycles = _cycles(GRAPH)
    assert not cycles, "import cycles (function-local imports count):\n" + "\n".join(
        f"  {' -> '.join(_path(GRAPH, c))}   (all of: {', '.join(c)})" for c in cycles)


def test_baselines_never_import_bench():
    wrong = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() if m.startswith("baselines")
                   for t in targets if t.split(".")[0] == "bench")
    assert not wrong, "baselines/ imports bench/: " + ", ".join(wrong)


def test_every_form_of_import_is_an_edge():
    text = ("import os\nfrom . import base\nfrom .. import errors\nfrom ..data import REGISTRY\n"
            "def f():\n    import bench.metrics\n    from bench import paths, __version__\n"
            "    from baselines.registry import get_builder\n")
    assert _edges("bench.data.x", ROOT / "bench/data/x.py", text) == {
        "bench.data.base", "bench.errors", "bench.data", "bench.metrics", "bench.paths", "bench",
        "baselines.registry"}
