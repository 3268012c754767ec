"""The shape of the package: imports go one way, and no module holds two jobs.

The import graph is read from the source with ``ast``, not by importing: every
``import`` and ``from ... import`` among ``llmframe`` modules, at module level and
inside functions alike (a function-level import is a cycle deferred, not removed).
Imports under ``if TYPE_CHECKING:`` never run and are left out.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "llmframe"
#: About where a module starts to hold two jobs (../shared/STYLE.md).
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in the tree, at any depth, except under ``if TYPE_CHECKING:``."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, known: Mapping[str, Path]) -> set[str]:
    """The ``llmframe`` modules that module ``name`` (at ``path``) imports."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                # Relative to the package holding this module (a package is its own base).
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import sub` imports the submodule when there is one, else names of pkg.
            targets = [
                f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                for alias in node.names
            ]
        for target in targets:
            # `import llmframe.x.y` names a module; fall back to its nearest known parent.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def find_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The cycles of ``graph``, each as ``[a, b, ..., a]``: for every module on a cycle, a
    shortest one through it (a cycle found from two of its modules is listed once)."""
    cycles: dict[frozenset[tuple[str, str]], list[str]] = {}
    for start in sorted(graph):
        cycle = _shortest_cycle(start, graph)
        if cycle is not None:
            first = cycle.index(min(cycle))  # shown from its first module by name
            cycles.setdefault(
                frozenset(itertools.pairwise(cycle)), cycle[first:-1] + cycle[: first + 1]
            )
    return list(cycles.values())


def _shortest_cycle(start: str, graph: Mapping[str, set[str]]) -> list[str] | None:
    """A shortest path from ``start`` back to itself (breadth first), or None."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        next_frontier = []
        for node in frontier:
            for target in sorted(graph.get(node, ())):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    next_frontier.append(target)
        frontier = next_frontier
    return None


# -- the checker itself: these must pass, or the tests below prove nothing --------------


def test_cycle_finder_reports_each_cycle_once_as_a_path() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": set(), "f": {"f"}}
    assert sorted(find_cycles(graph)) == [["a", "b", "c", "a"], ["f", "f"]]
    # One component, two cycles through its hub: both are shown.
    assert find_cycles({"x": {"y", "z"}, "y": {"x"}, "z": {"x"}}) == [
        ["x", "y", "x"],
        ["x", "z", "x"],
    ]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_imports_resolved_at_every_level_but_type_checking(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    module = package / "sub" / "mod.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "import os\n"
        "from . import sibling\n"  # a submodule of pkg.sub
        "from .. import helper, NAME\n"  # a submodule of pkg, and a name in pkg/__init__
        "import pkg.deep.leaf\n"
        "if TYPE_CHECKING:\n"
        "    from ..typed_only import T\n"
        "def later():\n"
        "    from ..lazy import thing\n"
    )
    init = package / "sub" / "__init__.py"
    init.write_text("from .mod import later\nfrom . import sibling\n")
    known = {n: package for n in ("pkg", "pkg.sub", "pkg.sub.mod", "pkg.sub.sibling", "pkg.helper",
                                  "pkg.deep", "pkg.deep.leaf", "pkg.lazy", "pkg.typed_only")}  # fmt: skip
    assert imports_of("pkg.sub.mod", module, known) == {
        "pkg.sub.sibling", "pkg.helper", "pkg", "pkg.deep.leaf", "pkg.lazy",
    }  # fmt: skip
    # In a package's __init__, one dot is the package itself.
    assert imports_of("pkg.sub", init, known) == {"pkg.sub.mod", "pkg.sub.sibling"}


def test_graph_of_llmframe_has_the_edges_it_should() -> None:
    graph = import_graph()
    assert "llmframe._api" in graph and "llmframe.testing._server" in graph
    assert "llmframe._engine" in graph["llmframe._run"]  # `from . import _engine`
    assert "llmframe._tokens" in graph["llmframe.testing._server"]  # `from llmframe import _tokens`
    assert "llmframe._calibrate" in graph["llmframe._api"]
    assert "llmframe._api" not in graph["llmframe._calibrate"]  # the layer under _api: _run
    assert all(name not in targets for name, targets in graph.items())


# -- the package ------------------------------------------------------------------------


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles among llmframe modules:\n" + "\n".join(
        "  " + " -> ".join(cycle) for cycle in cycles
    )


def test_no_module_over_400_lines() -> None:
    sizes = {
        name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()
    }
    over = {name: n for name, n in sorted(sizes.items()) if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: " + ", ".join(
        f"{name} ({n})" for name, n in over.items()
    )
