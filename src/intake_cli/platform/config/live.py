"""Settings that `intake config set` and the admin API change in a running event,
checked by the file's own rules so that every face answers with the same message."""

from __future__ import annotations

import re
from typing import Any

from intake_cli.platform.config.names import check_rpc_name
from intake_cli.platform.config.pools import INTEGER_BOUNDS, SECONDS_BOUNDS
from intake_cli.platform.config.problems import _Problems, _show
from intake_cli.platform.config.urls import _webhook_url
from intake_cli.platform.config.validate import _integer, _seconds
from intake_cli.platform.errors import ConfigError

# What `intake config set` may change in a running event (inventory and
# secrets are not live settings).
LIVE_SETTINGS = (
    *INTEGER_BOUNDS,
    *SECONDS_BOUNDS,
    "validation_webhook_url",
    "commit_rpc_name",
)


# Numbers on the command line as a person writes them: int() and float() also
# take "١٢", "1_0", "nan", "inf" and 5,000 digits.
_PLAIN_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
_PLAIN_DECIMAL = re.compile(r"[+-]?(?:[0-9]{1,18}(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")


def live_setting(key: str, text: str) -> Any:
    """Parse and check `key=text` from the command line by the file's own rules."""
    value: Any = text
    if key in INTEGER_BOUNDS and _PLAIN_INTEGER.fullmatch(text):
        value = int(text)
    elif key in SECONDS_BOUNDS and _PLAIN_DECIMAL.fullmatch(text):
        value = float(text)
    return live_value(key, value)


def live_value(key: str, value: Any) -> Any:
    """Check a typed live setting (the admin API's JSON, or a parsed argument) by the
    file's own rules: the same messages whichever face it came through."""
    problems = _Problems()
    checked: Any = None
    if key not in LIVE_SETTINGS:
        problems.add(key, f"not a live setting (live: {', '.join(sorted(LIVE_SETTINGS))})")
    elif key in INTEGER_BOUNDS:
        checked = _integer(problems, key, value, *INTEGER_BOUNDS[key])
    elif key in SECONDS_BOUNDS:
        checked = _seconds(problems, key, value, SECONDS_BOUNDS[key])
    elif key == "validation_webhook_url":
        checked = _webhook_url(problems, key, value)
    elif not isinstance(value, str):
        problems.add(key, f"expected a function name, got {_show(value)}")
    elif (reason := check_rpc_name(value)) is not None:
        problems.add(key, reason)
    else:
        checked = value
    if problems.items:
        raise ConfigError(problems.items)
    return checked
