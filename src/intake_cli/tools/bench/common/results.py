"""What a benchmark hands back: its targets in one shape, its JSON under
benchmarks/results, and the same figures as markdown."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import typer

T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """One bar a benchmark is judged by, as every benchmark prints and saves it.

    `measured` and `threshold` are numbers so that runs compare across files
    (a chart draws `threshold` as a line); `shown` is the measurement as a
    person reads it ("6,564/s", "92.0%", "3 of 3 rows"); `detail` holds the
    figures the verdict rests on besides them (the client count, the best
    run). A bar that is not one comparison (every unit committed *and* within
    60 s) is the comparison, missed `unless` the rest holds.
    """

    what: str
    measured: float | None
    threshold: float | None
    met: bool
    shown: str
    # How far a miss fell from the threshold, as a share of it: 0.12 is 12 %.
    short_by: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def at_least(
        cls, what: str, measured: float | None, threshold: float, shown: str, **detail: Any
    ) -> Target:
        met = measured is not None and measured >= threshold
        short = None if met or measured is None or not threshold else 1 - measured / threshold
        return cls(what, measured, threshold, met, shown, _share(short), detail)

    @classmethod
    def at_most(
        cls,
        what: str,
        measured: float | None,
        threshold: float,
        shown: str,
        *,
        below: bool = False,
        **detail: Any,
    ) -> Target:
        """measured <= threshold, or < with `below`."""
        met = measured is not None and (measured < threshold if below else measured <= threshold)
        short = None if met or measured is None or not threshold else measured / threshold - 1
        return cls(what, measured, threshold, met, shown, _share(short), detail)

    def unless(self, holds: bool, why: str) -> Target:
        """This bar, missed where `holds` is false for a reason its figure does not show."""
        return self if holds else replace(self, met=False, shown=f"{self.shown} ({why})")

    def as_json(self) -> dict[str, Any]:
        document = asdict(self)
        if isinstance(self.measured, float):
            document["measured"] = round(self.measured, 4)
        return document


def measured_in_rounds(workdir: Path, rounds: int, measure: Callable[[Path], T]) -> list[T]:
    """`measure` run `rounds` times, each round in a directory of its own under
    `workdir` (a single round in `workdir` itself, as before rounds existed)."""
    found = []
    for n in range(1, rounds + 1):
        if rounds > 1:
            say(f"round {n} of {rounds}")
        where = workdir / f"round-{n}" if rounds > 1 else workdir
        where.mkdir(mode=0o755, exist_ok=True)
        found.append(measure(where))
    return found


def median_of_rounds(rounds: Sequence[Sequence[Target]]) -> list[Target]:
    """Each bar judged on the median of the rounds that measured it.

    A machine whose speed drifts by a fifth between minutes moves one
    round's ratio as much as a change of code does; the middle round (the
    higher of the two middle ones for an even count) is kept whole, its
    verdict and detail with it, and every round's figure is shown beside it.
    Bars are matched by name, in the order the first round gave them.
    """
    if len(rounds) == 1:
        return list(rounds[0])
    by_name: dict[str, list[Target]] = {}
    for round_targets in rounds:
        for target in round_targets:
            by_name.setdefault(target.what, []).append(target)
    merged = []
    for same in by_name.values():
        measured = [t for t in same if t.measured is not None]
        if not measured:
            merged.append(same[0])
            continue
        ordered = sorted(measured, key=lambda t: t.measured or 0.0)
        middle = ordered[len(ordered) // 2]
        merged.append(
            replace(
                middle,
                shown=f"{middle.shown}; median of {len(same)} rounds: "
                + ", ".join(t.shown.split(" ", 1)[0].rstrip(",;") for t in same),
                detail={**middle.detail, "rounds": [t.measured for t in same]},
            )
        )
    return merged


def judged_on_median_round(
    documents: Sequence[dict[str, Any]], rounds: Sequence[Sequence[Target]]
) -> dict[str, Any]:
    """The last round's document, each bar judged on its median round (`rounds`:
    each document's bars), the earlier rounds kept beside it as they were."""
    if len(documents) == 1:
        return documents[0]
    return {
        **documents[-1],
        "targets": targets_json(median_of_rounds(rounds)),
        "earlier_rounds": list(documents[:-1]),
    }


def _share(value: float | None) -> float | None:
    return round(value, 4) if value is not None and value > 0 else None


def targets_json(targets: Iterable[Target]) -> list[dict[str, Any]]:
    return [t.as_json() for t in targets]


def verdict(target: dict[str, Any]) -> str:
    if target["met"]:
        return "yes"
    return f"NO, {target['short_by']:.1%} short" if target["short_by"] else "NO"


def targets_markdown(targets: Sequence[dict[str, Any]], columns: Sequence[str] = ()) -> str:
    """The targets as saved, as a table; `columns` are `detail` keys shown beside them."""
    extra = "".join(f" {c} |" for c in columns)
    lines = [
        f"| target |{extra} measured | met |",
        "|---|" + "---:|" * len(columns) + "---:|---|",
    ]
    for t in targets:
        cells = "".join(f" {t['detail'].get(c, '-')} |" for c in columns)
        lines.append(f"| {t['what']} |{cells} {t['shown']} | {verdict(t)} |")
    return "\n".join(lines)


def times(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}x"


def share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not ordered:
        return 0.0
    return float(ordered[max(0, math.ceil(fraction * len(ordered)) - 1)])


def machine(conn: psycopg.Connection | None = None, **extra: Any) -> dict[str, Any]:
    """The machine a document was measured on, with the server's version when given DB1."""
    found: dict[str, Any] = {
        # The cores this process may use (nproc), which everything it starts
        # shares, rather than what the host has.
        "cores": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "load_avg": list(os.getloadavg()),
    }
    if conn is not None:
        row = conn.execute("show server_version").fetchone()
        found["postgresql"] = row[0] if row else None
    return {**found, **extra}


def stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def save(document: dict[str, Any], directory: Path, kind: str) -> Path:
    """Write the results as JSON under a name that says when and on how many cores."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kind}-{stamp()}-{document['machine']['cores']}cores.json"
    path.write_text(dumps(document) + "\n", encoding="utf-8")
    return path


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True)


def say(message: str) -> None:
    """Progress, on stderr: stdout is the report, which --json makes parseable."""
    typer.echo(message, err=True)


def publish(
    document: dict[str, Any],
    kind: str,
    output: Path | None,
    as_json: bool,
    markdown: Callable[[], str],
) -> Path | None:
    """Save the document under `output` (if given), then print it: JSON or markdown."""
    saved = None
    if output is not None:
        saved = save(document, output, kind)
        say(f"saved {saved}")
    typer.echo(dumps(document) if as_json else markdown())
    return saved
