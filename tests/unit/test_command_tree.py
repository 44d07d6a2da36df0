"""The operator's surface: every command, option and help text, compared with a
recorded tree. A change to it is deliberate: regenerate the record with
`python -m tests.unit.test_command_tree` and review the diff."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from intake_cli.faces import cli

RECORD = Path(__file__).with_name("command_tree.json")


def _describe(command: Any) -> dict[str, Any]:
    node: dict[str, Any] = {
        "help": (command.help or "").strip(),
        "params": [
            {
                "name": p.name,
                "opts": sorted([*p.opts, *p.secondary_opts]),
                "required": p.required,
                "default": repr(p.default),
                "help": getattr(p, "help", None),
            }
            for p in command.params
        ],
    }
    # typer ships its own click; a group is whatever has subcommands.
    if hasattr(command, "commands"):
        node["commands"] = {name: _describe(sub) for name, sub in sorted(command.commands.items())}
    return node


def command_tree() -> dict[str, Any]:
    return _describe(typer.main.get_command(cli.app))


def test_the_command_tree_is_unchanged():
    assert command_tree() == json.loads(RECORD.read_text())


if __name__ == "__main__":
    RECORD.write_text(json.dumps(command_tree(), indent=1, sort_keys=True) + "\n")
    sys.stdout.write(f"wrote {RECORD}\n")
