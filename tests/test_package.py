"""The package's layout: no import circles, and `core/` depends on nothing above it.

Edges are read from the source with `ast`, every import counted: at module level, inside
functions and under `if TYPE_CHECKING:`, since each of these is a dependency a reader follows.
"""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "initlab"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str) -> set[str]:
    """The initlab modules that module `name` imports."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = ".".join(p for p in (base if node.level else "", node.module or "") if p)
            if node.module:  # `from . import x` names this module's own package: not an edge
                found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names}  # `from pkg import submodule`
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports(name) for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_planted_circle():
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(planted) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_relative_and_function_level_imports():
    assert "initlab.methods.gradinit.config" in GRAPH["initlab.methods.gradinit.batches"]  # TYPE_CHECKING
    assert "initlab.methods.gradinit.distributed" in GRAPH["initlab.methods.gradinit.api"]  # in a function
    assert "initlab.registry" in GRAPH["initlab.methods.fixup"]


def test_no_import_circles():
    assert cycles(GRAPH) == []


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("initlab.core")))
def test_core_imports_only_core(name):
    above = sorted(m for m in GRAPH[name] if not m.startswith("initlab.core"))
    assert not above, f"{name} reaches up to {above}: shared machinery must not depend on its users"
