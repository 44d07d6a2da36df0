"""The package's layers, checked: platform uses nothing above it, the engine
never uses a face or a tool (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "intake_cli"
# What each layer must never import.
FORBIDDEN = {
    "platform": ("engine", "faces", "tools"),
    "engine": ("faces", "tools"),
}


def _imports(path: Path) -> set[str]:
    """Every intake_cli module a file imports, as dotted names below intake_cli."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("intake_cli."):
                found.add(node.module.removeprefix("intake_cli."))
            elif node.module == "intake_cli":
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}: relative import; use intake_cli.<layer>.<module>")
        elif isinstance(node, ast.Import):
            found.update(
                a.name.removeprefix("intake_cli.")
                for a in node.names
                if a.name.startswith("intake_cli.")
            )
    return found


def test_every_module_sits_in_a_layer():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert loose == []


def test_no_layer_imports_upwards():
    wrong = []
    for layer, forbidden in FORBIDDEN.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            for target in _imports(path):
                if target.split(".")[0] in forbidden:
                    wrong.append(f"{path.relative_to(PACKAGE)} imports intake_cli.{target}")
    assert wrong == []


def test_the_check_sees_an_upward_import(tmp_path):
    planted = tmp_path / "bad.py"
    planted.write_text("from intake_cli.faces import cli\nfrom intake_cli import tools\n")
    assert _imports(planted) == {"faces", "tools"}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node Python runs on import: not what sits under `if TYPE_CHECKING:`."""
    found: list[ast.AST] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        found.append(node)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING":
                pending.extend(child.orelse)
            else:
                pending.append(child)
    return found


def _module_graph() -> dict[str, set[str]]:
    """Module -> the intake_cli modules it imports. `from P import name` depends
    on P itself (P's __init__ runs first) and on P.name when that is a module."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("intake_cli.")
            ):
                target = node.module.removeprefix("intake_cli.")
                edges.add(target)
                edges.update(
                    f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules
                )
            elif isinstance(node, ast.Import):
                edges.update(
                    a.name.removeprefix("intake_cli.")
                    for a in node.names
                    if a.name.startswith("intake_cli.")
                )
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    """A cycle means neither module can be read, tested or moved without the other."""
    assert _cycles(_module_graph()) == []


def test_the_check_sees_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
