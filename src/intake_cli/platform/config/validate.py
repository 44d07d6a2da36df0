"""The small checks every section shares: each adds its problem under the field's path
and answers None, so one pass over the file reports every mistake."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from intake_cli.platform.config.problems import _Problems, _show


def _integer(problems: _Problems, path: str, value: Any, low: int, high: int) -> int | None:
    # YAML booleans are ints in Python; "true" is never a batch size.
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        problems.add(path, f"expected an integer from {low} to {high}, got {_show(value)}")
        return None
    return value


def _seconds(problems: _Problems, path: str, value: Any, high: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= high:
        problems.add(
            path, f"expected a number of seconds above 0 and at most {high:g}, got {_show(value)}"
        )
        return None
    return float(value)


def _string(problems: _Problems, path: str, value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        problems.add(path, f"expected a non-empty string, got {_show(value)}")
        return None
    return value


def _mapping(problems: _Problems, path: str, value: Any, allowed: set[str]) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.add(path, f"expected a mapping, got {_show(value)}")
        return {}
    for key in value:
        if key not in allowed:
            hint = ", ".join(sorted(allowed))
            problems.add(f"{path}.{key}" if path else str(key), f"unknown key (known: {hint})")
    return value


def _path_text(problems: _Problems, path: str, value: Any) -> str | None:
    """A file or directory name: a non-empty string the operating system can take."""
    text = _string(problems, path, value)
    if text is not None and "\x00" in text:
        problems.add(path, "a path cannot hold a NUL character")
        return None
    if text is not None and len(os.fsencode(text)) > 4096:
        problems.add(path, "a path cannot be longer than 4096 bytes")
        return None
    return text


def _instant(problems: _Problems, path: str, value: Any) -> datetime | None:
    """A moment with its time zone: YAML's own timestamp, or ISO 8601 text."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            value = None
    if not isinstance(value, datetime) or value.tzinfo is None:
        problems.add(path, "expected a date and time with its zone, like 2030-05-01T10:00:00Z")
        return None
    return value
