"""CPU time from /proc: the machine's, one process's, one PostgreSQL cluster's.

On a shared machine the machine-wide figure counts everybody's work; the
per-part figures (the drain's workers, the webhook, each cluster) count only
ours, so CPU per intent can be judged while others run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSample:
    busy: float  # CPU seconds spent by every process on the machine
    total: float  # CPU seconds the machine had (wall time x cores)


def cpu_times() -> CpuSample:
    """The machine's CPU time so far, from /proc/stat (everything: workers, webhook, servers)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user … steal; guest time is already in user
    return CpuSample((total - idle) / _TICKS, total / _TICKS)


def _stat(pid: int) -> list[str] | None:
    try:
        # The command name may hold spaces or parentheses: split after its last ')'.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_cpu_s(pid: int) -> float:
    """CPU seconds a live process has used (user + system), 0 if it is gone."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / _TICKS if fields else 0.0


def cluster_cpu_s(datadir: str) -> float:
    """CPU seconds a PostgreSQL cluster has used: its postmaster, its live backends, and
    (through the postmaster's reaped-children time) every backend that has exited."""
    try:
        postmaster = int(Path(datadir, "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return 0.0
    own = _stat(postmaster)
    if own is None:
        return 0.0
    total = sum(int(v) for v in own[11:15])  # utime, stime, cutime, cstime
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields and int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS
