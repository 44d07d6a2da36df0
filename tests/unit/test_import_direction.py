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
