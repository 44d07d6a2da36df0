"""${NAME} references, filled in from the environment; secrets come only from there."""

from __future__ import annotations

import os
import re
from typing import Any

from intake_cli.platform import signing
from intake_cli.platform.config.problems import _Problems

ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(problems: _Problems, path: str, value: Any) -> Any:
    """Replace ${NAME} and ${NAME:-default} from the environment."""
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        problems.add(path, f"environment variable {name} is not set")
        return ""

    return ENV_REFERENCE.sub(substitute, value)


_FROM_ENVIRONMENT = "write ${VARIABLE_NAME} and export the secret in that variable"


def _secret(problems: _Problems, path: str, raw: Any) -> str | None:
    """A webhook signing secret: `${NAME}` (required) or `${NAME:-}` (optional), nothing else.

    A non-empty default would be a secret written in the file; so would a
    literal that merely looks like a reference (`$hunter2`).
    """
    if raw is None:
        return None
    match = ENV_REFERENCE.fullmatch(raw.strip()) if isinstance(raw, str) else None
    if match is None:
        problems.add(path, f"secrets are read from the environment: {_FROM_ENVIRONMENT}")
        return None
    name, default = match.groups()
    if default:
        problems.add(
            path,
            f"a secret takes no default (${{{name}:-…}} writes it in the file): "
            + _FROM_ENVIRONMENT,
        )
        return None
    value = os.environ.get(name)
    if value is None and default is None:
        problems.add(path, f"environment variable {name} is not set")
        return None
    if not value:
        if default is None:
            # ${NAME} says "required": an empty one would silently stop signing.
            problems.add(
                path,
                f"environment variable {name} is empty: export the secret, or write "
                f"${{{name}:-}} to send unsigned calls when it is unset or empty",
            )
        return None
    try:
        signing.check_secret(value)
    except ValueError as exc:
        # Every signed call would fail: refused now, never quoted.
        problems.add(path, f"the secret in {name} cannot sign: {exc}")
        return None
    return value
