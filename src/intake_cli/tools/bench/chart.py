"""The claim and gateway benchmarks as pictures, from the JSON they save: claims/s
by client count, intake against the baselines of the same run; claims/s by
gateway setting against the single claim.

matplotlib is an optional extra (`pip install 'intake-cli[bench]'`): nothing
else in intake needs it, and it is large.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from intake_cli.platform.errors import UsageError
from intake_cli.tools.bench.common.results import stamp

# Baselines in greys and thin lines, intake in colour: the eye should land on
# intake and read the baselines as context.
_STYLES: dict[str, dict[str, Any]] = {
    "select1": {"label": "SELECT 1 (ceiling)", "color": "0.55", "linestyle": ":"},
    "hot_row": {"label": "hot row (transaction)", "color": "0.35", "linestyle": "--"},
    "hot_row_one_statement": {
        "label": "hot row (one statement)",
        "color": "0.6",
        "linestyle": "--",
    },
    "skip_locked": {"label": "literal SKIP LOCKED", "color": "0.25", "linestyle": "-."},
    "claim": {"label": "intake claim", "color": "tab:blue", "linewidth": 2.5},
}
_BATCH_COLOURS = ("tab:orange", "tab:red", "tab:purple", "tab:green", "tab:brown")


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            "--chart needs matplotlib, which is optional: install it with "
            "pip install 'intake-cli[bench]' (scripts/bootstrap.sh does)"
        ) from None


def chart_path(chart: Path, saved: Path | None, kind: str, cores: int) -> Path:
    """--chart names a file, or a directory to put it in beside (and named like) the JSON."""
    if not chart.is_dir():
        return chart
    if saved is not None and saved.parent.resolve() == chart.resolve():
        return saved.with_suffix(".png")
    return chart / f"{kind}-{stamp()}-{cores}cores.png"


def _series(document: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """Points per workload: baselines first, then intake, batches by size."""
    series: dict[str, list[tuple[int, float]]] = {}
    batch: dict[str, int] = {}
    for run in document["runs"]:
        series.setdefault(run["workload"], []).append((run["clients"], run["claims_per_s"]))
        batch[run["workload"]] = run.get("batch", 1)
    order = list(_STYLES)
    keys = sorted(series, key=lambda k: (order.index(k) if k in order else len(order), batch[k], k))
    return {key: sorted(series[key]) for key in keys}


def draw_claims(document: dict[str, Any], path: Path) -> Path:
    """Write the chart as a PNG at path and return it."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    machine, settings = document["machine"], document["settings"]
    fig, ax = plt.subplots(figsize=(11, 6), dpi=120)
    batch_sizes = settings.get("batch_sizes") or []
    for key, points in _series(document).items():
        if key.startswith("claim_batch_"):
            size = int(key.rsplit("_", 1)[1])
            colour = _BATCH_COLOURS[batch_sizes.index(size) % len(_BATCH_COLOURS)]
            style: dict[str, Any] = {
                "label": f"intake claim_resources, {size} per call",
                "color": colour,
                "linewidth": 2,
            }
        else:
            style = _STYLES.get(key, {"label": key})
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", **style)

    # The bar's absolute lines, where the run measured what they judge.
    bar = settings.get("bar_clients")
    for target in document.get("targets", []):
        if "claims/s" in target["what"] and target.get("threshold"):
            ax.axhline(target["threshold"], color="0.8", linewidth=0.8, zorder=0)
            ax.annotate(
                f"bar: {target['threshold']:,.0f}/s",
                (max(settings["clients"]), target["threshold"]),
                textcoords="offset points",
                xytext=(0, 3),
                ha="right",
                fontsize=8,
                color="0.45",
            )
    if bar:
        ax.axvline(bar, color="0.85", linewidth=0.8, zorder=0)

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(settings["clients"])
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("pgbench clients")
    ax.set_ylabel("claims/s (transactions/s x buyers per transaction)")
    sync = "on" if settings.get("synchronous_commit") else "off"
    version = str(machine.get("postgresql") or "?").split()[0]
    ax.set_title(
        "intake bench claims: claims/s by client count, baselines from the same run\n"
        f"{machine['cores']} cores, PostgreSQL {version}, synchronous_commit = {sync}, "
        f"{settings['duration_s']} s per run",
        fontsize=10,
    )
    ax.grid(True, which="major", color="0.92")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def draw_gateway(document: dict[str, Any], path: Path) -> Path:
    """`intake bench gateway` as bars: claims/s per gateway setting, the single
    claim of the same run and the 1.5x bar as lines; p99 written on each bar."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    machine, settings = document["machine"], document["settings"]
    runs = document["herd"]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(runs) + 3), 5), dpi=120)
    labels = [
        f"{r['workers']} w\nbatch {r['max_batch']}\nwait {r['max_wait_ms']:g} ms" for r in runs
    ]
    values = [r["claims_per_s"] for r in runs]
    bars = ax.bar(labels, values, color="tab:blue")
    for rect, run in zip(bars, runs, strict=True):
        ax.annotate(
            f"{run['claims_per_s']:,.0f}/s\np99 {run['p99_ms']:.0f} ms",
            (rect.get_x() + rect.get_width() / 2, rect.get_height()),
            textcoords="offset points",
            xytext=(0, 3),
            ha="center",
            fontsize=8,
        )
    single = document.get("single_claim_best_per_s") or 0
    if single:
        ax.axhline(
            single, color="0.35", linestyle="--", linewidth=1, label="single claim (pgbench)"
        )
        ax.axhline(1.5 * single, color="0.7", linestyle=":", linewidth=1, label="bar: 1.5x single")
    ax.set_ylim(0, max([*values, 1.5 * single, 1]) * 1.25)
    ax.set_ylabel("claims/s (intents queued in DB1)")
    version = str(machine.get("postgresql") or "?").split()[0]
    ax.set_title(
        "intake bench gateway: claims/s over HTTP, single claim from the same run\n"
        f"{machine['cores']} cores, PostgreSQL {version}, {settings['connections']} "
        f"connections, {settings['duration_s']} s per run",
        fontsize=10,
    )
    ax.grid(True, axis="y", color="0.92")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
