"""The reference pages say what the program does: every command and option of the
CLI is in docs/commands.md, every key the configuration loader accepts is in
docs/configuration.md, and neither page names one that does not exist."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer

from intake_cli.faces import cli
from intake_cli.platform import config
from intake_cli.platform.errors import ConfigError

DOCS = Path(__file__).resolve().parents[2] / "docs"

# A command's heading is its path and nothing else: ### `intake dlq replay`
_COMMAND_HEADING = re.compile(r"^#{2,4} `(intake(?: [a-z][a-z0-9-]*)*)`\s*$", re.MULTILINE)


def _cli_commands() -> dict[str, list[str]]:
    """Every command path of the CLI, the root included, with its long options."""
    found: dict[str, list[str]] = {}

    def walk(command: Any, path: str) -> None:
        found[path] = [
            opt
            for param in command.params
            for opt in [*param.opts, *param.secondary_opts]
            if opt.startswith("--")
        ]
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(cli.app), "intake")
    return found


def _sections(text: str) -> dict[str, str]:
    """Each documented command's text, up to the next command heading; the page's
    opening (before the first one) belongs to the root, `intake`."""
    marks = list(_COMMAND_HEADING.finditer(text))
    sections = {"intake": text[: marks[0].start()] if marks else text}
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        path = mark.group(1)
        assert path not in sections or path == "intake", f"{path} has two headings"
        sections[path] = text[mark.end() : following.start() if following else len(text)]
    return sections


def test_every_command_is_documented_and_every_documented_command_exists():
    commands = set(_cli_commands())
    documented = set(_sections((DOCS / "commands.md").read_text()))
    undocumented = sorted(commands - documented)
    assert undocumented == [], "commands without a heading in docs/commands.md"
    invented = sorted(documented - commands)
    assert invented == [], "docs/commands.md documents commands that do not exist"


def test_every_option_is_named_where_its_command_is_documented():
    sections = _sections((DOCS / "commands.md").read_text())
    missing = []
    for path, options in _cli_commands().items():
        # A group may describe what all its subcommands take (`intake bench`'s
        # --output and --json), so a command's text includes its groups'.
        words = path.split()
        text = "".join(sections.get(" ".join(words[:n]), "") for n in range(1, len(words) + 1))
        missing += [
            f"{path} {opt}"
            for opt in options
            if not re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text)
        ]
    assert missing == [], "options docs/commands.md does not name under their command"


_PROBE = "zz_not_a_key"


def _accepted_keys() -> set[str]:
    """Every key the loader accepts, asked of the loader itself: an unknown key in
    each section is refused with the list of the keys that section knows."""
    document = {
        _PROBE: 1,
        "db1": {_PROBE: 1},
        "db2": {_PROBE: 1},
        "embedded": {_PROBE: 1},
        "gateway": {_PROBE: 1},
        "pools": [{_PROBE: 1}],
    }
    with pytest.raises(ConfigError) as refused:
        config.parse(document, Path("intake.yaml"))
    known: dict[str, set[str]] = {}
    for problem in refused.value.problems:
        if match := re.fullmatch(rf"(?:(.+)\.)?{_PROBE}: unknown key \(known: (.+)\)", problem):
            known[match.group(1) or ""] = set(match.group(2).split(", "))
    sections = {"": "", "db1": "db1.", "db2": "db2.", "embedded": "embedded."}
    sections |= {"gateway": "gateway.", "pools[0]": "pools[]."}
    assert set(known) == set(sections), f"the loader's refusals changed shape: {known}"
    return {sections[section] + key for section, keys in known.items() for key in keys}


def test_every_configuration_key_is_documented_and_exists():
    text = (DOCS / "configuration.md").read_text()
    accepted = _accepted_keys()
    unnamed = sorted(key for key in accepted if f"`{key}`" not in text)
    assert unnamed == [], "keys docs/configuration.md does not name"
    # The keys the tables define: the code spans of a row's first cell, in lower
    # case (the environment variables' table is in upper case).
    defined = {
        key
        for row in re.findall(r"^\| (`[^|]+`) \|", text, re.MULTILINE)
        for key in re.findall(r"`([a-z0-9_]+(?:(?:\.|\[\]\.)[a-z0-9_]+)?)`", row)
    }
    assert sorted(defined - accepted) == [], "docs/configuration.md defines keys the loader refuses"
