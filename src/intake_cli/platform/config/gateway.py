"""The gateway section: the buyers' door, its token checks, batching and rate limits."""

from __future__ import annotations

from typing import Any

from intake_cli.platform.config.environment import _interpolate
from intake_cli.platform.config.problems import _Problems, _show
from intake_cli.platform.config.settings import GatewaySettings
from intake_cli.platform.config.urls import _jwks_url
from intake_cli.platform.config.validate import _integer, _mapping, _string

_GATEWAY_INTEGERS = {
    "max_batch": (1, 1000),
    "per_ip_burst": (1, 1_000_000),
    "per_buyer_burst": (1, 1_000_000),
    "max_body_bytes": (64, 1 << 20),
}
_GATEWAY_NUMBERS = {
    "max_wait_ms": 1000.0,
    "per_ip_rate": 1_000_000.0,
    "per_buyer_rate": 1_000_000.0,
    "client_timeout_s": 3600.0,
}


def _gateway(problems: _Problems, raw: Any) -> GatewaySettings:
    allowed = {"jwt_audience", "jwks_url", *_GATEWAY_INTEGERS, *_GATEWAY_NUMBERS}
    data = _mapping(problems, "gateway", raw, allowed)
    values: dict[str, Any] = {}
    if "jwt_audience" in data:
        values["jwt_audience"] = _string(problems, "gateway.jwt_audience", data["jwt_audience"])
    if data.get("jwks_url") is not None:
        # Checked after ${NAME} is filled in: the URL actually fetched is the one judged.
        values["jwks_url"] = _jwks_url(
            problems,
            "gateway.jwks_url",
            _interpolate(problems, "gateway.jwks_url", data["jwks_url"]),
        )
    for key, (low, high) in _GATEWAY_INTEGERS.items():
        if key in data:
            values[key] = _integer(problems, f"gateway.{key}", data[key], low, high)
    for key, ceiling in _GATEWAY_NUMBERS.items():
        if key in data:
            number = data[key]
            if (
                isinstance(number, bool)
                or not isinstance(number, int | float)
                or not (0 < number <= ceiling)
            ):
                problems.add(
                    f"gateway.{key}",
                    f"expected a number above 0 and at most {ceiling:g}, got {_show(number)}",
                )
                values[key] = None
            else:
                values[key] = float(number)
    if any(value is None for value in values.values()):
        return GatewaySettings()
    return GatewaySettings(**values)
