"""The shape of the code (docs/architecture.md), checked from the imports themselves:
no import circles between modules, no package importing a package above it, and
``scheduler_glue`` and ``builder_jobs`` never importing each other. Type-checking-only
imports count too (they are still a dependency a reader must follow)."""

from __future__ import annotations

import ast
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]
# floor of each package: a module may import its own floor or lower ones
FLOORS = {"api": 4, "builder_jobs": 3, "scheduler_glue": 2, "registry": 2, "core": 1,
          "site_configs": 1}
APART = {("scheduler_glue", "builder_jobs"), ("builder_jobs", "scheduler_glue"),
         ("scheduler_glue", "registry"), ("registry", "scheduler_glue")}


def modules() -> dict[str, Path]:
    found = {}
    for package in FLOORS:
        for path in sorted((TOP / package).rglob("*.py")) if (TOP / package).is_dir() else []:
            name = ".".join(path.relative_to(TOP).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The imgsave modules ``path`` imports (``from a.b import c``: a.b.c if a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n in known}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, known) - {name} for name, path in known.items()}


def test_no_import_circles() -> None:
    edges = graph()
    # Tarjan's strongly connected components
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                circles.append(sorted(part))

    for v in edges:
        if v not in index:
            visit(v)
    assert circles == []


def test_imports_run_down_and_the_node_side_and_the_scheduler_stay_apart() -> None:
    wrong = []
    for module, targets in graph().items():
        here = module.split(".")[0]
        for target in targets:
            there = target.split(".")[0]
            if FLOORS[there] > FLOORS[here] or (here, there) in APART:
                wrong.append(f"{module} -> {target}")
    assert wrong == []
