"""The options the bench commands share, and how their comma lists are read."""

from __future__ import annotations

from typing import Any

import typer

from intake_cli.platform.errors import UsageError

# Beyond any webhook worth measuring: the bound catches a mistyped list.
MAX_WEBHOOK_DELAY_MS = 60_000


def output_option() -> Any:
    return typer.Option(
        None, "--output", help="Also save the results as JSON in DIR (e.g. benchmarks/results)."
    )


def json_option(instead_of: str = "markdown") -> Any:
    return typer.Option(False, "--json", help=f"Print JSON instead of {instead_of}.")


def parse_numbers(
    option: str, text: str, low: float, high: float, kind: type = int
) -> tuple[Any, ...]:
    """A comma list as ascending distinct numbers, each from low to high."""
    try:
        values = tuple(sorted({kind(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise UsageError(f"{option}: expected numbers separated by commas, got {text!r}") from None
    if not values or not all(low <= v <= high for v in values):
        raise UsageError(f"{option}: each number must be from {low:g} to {high:g}, got {text!r}")
    return values


def webhook_delays_ms(text: str) -> tuple[int, ...]:
    return parse_numbers("--webhook-delay-ms", text, 0, MAX_WEBHOOK_DELAY_MS)
