"""The package's layout: no import cycles between its modules, at module level or inside
functions (an import inside a function hides a cycle from Python, not from a reader)."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "onnxscale"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imported_modules(path: Path, modules: set[str], package: Path = PACKAGE) -> set[str]:
    """The package's modules ``path`` imports anywhere, except under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    here = module_name(path, package).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # a submodule, or a name the module defines
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in modules else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in modules}


def import_graph() -> nx.DiGraph:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(paths)
    for name, path in paths.items():
        graph.add_edges_from((name, target) for target in imported_modules(path, set(paths))
                             if target != name)
    return graph


def test_the_import_graph_is_complete():
    """The walk sees real imports (a parser that saw nothing would pass the cycle test)."""
    graph = import_graph()
    assert ("onnxscale.scaling.pipeline", "onnxscale.scaling.width.widen") in graph.edges
    assert ("onnxscale.graph", "onnxscale.shapes") in graph.edges
    assert graph.number_of_edges() > 100


def test_no_import_cycles():
    cycles = sorted(nx.simple_cycles(import_graph()), key=len)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + c[:1]) for c in cycles[:5])


def test_a_cycle_is_caught(tmp_path):
    """The cycle test fails on a cycle hidden inside a function."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import f\n")
    (package / "b.py").write_text("def f():\n    from . import a\n    return a\n")
    names = {"pkg", "pkg.a", "pkg.b"}
    b_imports = imported_modules(package / "b.py", names, package)
    assert b_imports == {"pkg.a"}
    assert imported_modules(package / "a.py", names, package) == {"pkg.b"}
    graph = nx.DiGraph([("pkg.a", "pkg.b")] + [("pkg.b", name) for name in b_imports])
    assert list(nx.simple_cycles(graph))
