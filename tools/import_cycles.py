#!/usr/bin/env python3
"""Fail when the modules of a package import each other in a cycle (``make lint``).

    python tools/import_cycles.py [PACKAGE_DIR ...]      (default: metatrain)

Every import statement counts, wherever it stands: at the top of a module, inside a function
(a lazy import only hides a cycle until the function runs), or under ``TYPE_CHECKING`` (a
cycle the type checker needs is still one in the design). ``from pkg import name`` is an
edge to the module ``pkg.name`` where that is a module of the package, else to ``pkg``.
A package is not an edge of its submodules (Python runs it first, but every module of a
package would then be in a cycle with any ``__init__`` that imports one of them).

Prints each cycle as a chain of imports with their lines; exit code 1 if there is one, 0
otherwise. Reads the source only: nothing is imported.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Edge", "module_names", "import_edges", "find_cycles", "main"]


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` at ``line`` of ``path``."""

    source: str
    target: str
    path: Path
    line: int


def module_names(package_dir: Path) -> dict[str, Path]:
    """Every module of the package at ``package_dir`` (dotted name -> file), packages
    named by their ``__init__.py``."""
    root = package_dir.resolve()
    names: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if "__pycache__" in parts:
            continue
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _candidates(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool
) -> list[list[str]]:
    """For each name an import statement in ``module`` binds, the dotted names it may refer
    to, most specific first: ``import a.b`` -> ``a.b``, ``a``; ``from p import n`` ->
    ``p.n`` (a submodule), ``p``."""
    if isinstance(node, ast.Import):
        out = []
        for alias in node.names:
            parts = alias.name.split(".")
            out.append([".".join(parts[:i]) for i in range(len(parts), 0, -1)])
        return out
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        prefix = ".".join([*base, *([node.module] if node.module else [])])
    else:
        prefix = node.module or ""
    return [[f"{prefix}.{alias.name}", prefix] for alias in node.names]


def import_edges(modules: dict[str, Path]) -> list[Edge]:
    """The imports among ``modules`` (as ``module_names`` gives them)."""
    edges: list[Edge] = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for candidates in _candidates(node, module, is_package):
                target = next((name for name in candidates if name in modules), None)
                if target is not None:
                    edges.append(Edge(module, target, path, node.lineno))
    return edges


def find_cycles(edges: Sequence[Edge]) -> list[list[Edge]]:
    """One cycle (as the chain of edges that closes it) per strongly connected group of
    modules (modules that all reach each other), or per module that imports itself."""
    graph: dict[str, list[Edge]] = {}
    for edge in edges:
        graph.setdefault(edge.source, []).append(edge)
        graph.setdefault(edge.target, [])
    cycles: list[list[Edge]] = []
    for component in _components(graph):
        if len(component) > 1:
            cycles.append(_cycle_through(sorted(component)[0], component, graph))
        else:
            (node,) = component
            loop = [e for e in graph[node] if e.target == node]
            if loop:
                cycles.append(loop[:1])
    return cycles


def _components(graph: dict[str, list[Edge]]) -> list[set[str]]:
    """Tarjan's strongly connected components (iterative: no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[set[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, int]] = [(start, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = [e.target for e in graph[node]]
            if i < len(targets):
                work.append((node, i + 1))
                target = targets[i]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                found.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def _cycle_through(start: str, component: set[str], graph: dict[str, list[Edge]]) -> list[Edge]:
    """The shortest chain of imports from ``start`` back to itself within ``component``."""
    paths: dict[str, list[Edge]] = {start: []}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for edge in graph[node]:
                if edge.target not in component:
                    continue
                if edge.target == start:
                    return [*paths[node], edge]
                if edge.target not in paths:
                    paths[edge.target] = [*paths[node], edge]
                    following.append(edge.target)
        frontier = following
    raise AssertionError(f"{start} is in no cycle of its component")


def describe(cycle: Sequence[Edge], root: Path) -> str:
    """``a -> b -> a`` and where each import is."""
    chain = " -> ".join([cycle[0].source, *(e.target for e in cycle)])
    lines = [f"import cycle: {chain}"]
    for edge in cycle:
        where = edge.path.relative_to(root) if edge.path.is_relative_to(root) else edge.path
        lines.append(f"  {where}:{edge.line}: {edge.source} imports {edge.target}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packages", nargs="*", default=["metatrain"], metavar="PACKAGE_DIR")
    args = parser.parse_args(argv)
    status = 0
    for package in args.packages:
        package_dir = Path(package)
        if not (package_dir / "__init__.py").is_file():
            print(f"{package}: not a package (no __init__.py)", file=sys.stderr)
            return 2
        modules = module_names(package_dir)
        cycles = find_cycles(import_edges(modules))
        root = package_dir.resolve().parent
        for cycle in cycles:
            print(describe(cycle, root))
            status = 1
        if cycles:
            print(f"{package}: {len(cycles)} group(s) of modules importing each other")
        if not cycles:
            print(f"{package}: {len(modules)} modules, no import cycle")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
