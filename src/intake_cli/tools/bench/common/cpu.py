"""CPU time from /proc: the machine's, a process's, a process tree's, a cluster's.

The machine-wide figure counts everybody's work on a shared machine; the
per-process figures count only ours, so a benchmark can judge CPU per intent
(or per claim) while others run. Everything here reads /proc/<pid>/stat
through `stat_fields`, the one parser of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
# Fields of /proc/<pid>/stat counted from just after the command name.
_STATE, _PARENT, _UTIME, _STIME, _CUTIME, _CSTIME = 0, 1, 11, 12, 13, 14


@dataclass(frozen=True)
class CpuSample:
    busy: float  # CPU seconds spent by every process on the machine
    total: float  # CPU seconds the machine had (wall time x cores)

    def __sub__(self, earlier: CpuSample) -> CpuSample:
        return CpuSample(self.busy - earlier.busy, self.total - earlier.total)

    @property
    def busy_share(self) -> float:
        return self.busy / self.total if self.total > 0 else 0.0


def cpu_times() -> CpuSample:
    """The machine's CPU time so far, from /proc/stat (everything: ours and others')."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user … steal; guest time is already in user
    return CpuSample((total - idle) / _TICKS, total / _TICKS)


def stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from the state on (state, parent pid, …); None once it is gone."""
    try:
        # The command name may hold spaces or parentheses: split after its last ')'.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


@dataclass(frozen=True)
class Process:
    parent: int
    state: str
    cpu_s: float  # user + system
    reaped_cpu_s: float  # user + system of the children it has waited for

    @classmethod
    def read(cls, pid: int) -> Process | None:
        fields = stat_fields(pid)
        if fields is None:
            return None
        ticks = [int(fields[n]) for n in (_UTIME, _STIME, _CUTIME, _CSTIME)]
        return cls(
            int(fields[_PARENT]),
            fields[_STATE],
            (ticks[0] + ticks[1]) / _TICKS,
            (ticks[2] + ticks[3]) / _TICKS,
        )


def processes() -> dict[int, Process]:
    """Every process on the machine now, by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            process = Process.read(int(entry.name))
            if process is not None:  # not gone meanwhile
                found[int(entry.name)] = process
    return found


def process_cpu_s(pid: int) -> float:
    """CPU seconds a live process has used, 0 once it is gone."""
    process = Process.read(pid)
    return process.cpu_s if process else 0.0


def tree_cpu_s(table: dict[int, Process], root: int) -> float:
    """CPU seconds of `root` and its descendants in `table`, each with the children it
    has reaped: a postmaster's count holds every backend that has exited."""
    children: dict[int, list[int]] = {}
    for pid, process in table.items():
        children.setdefault(process.parent, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            total += table[pid].cpu_s + table[pid].reaped_cpu_s
            todo.extend(children.get(pid, ()))
    return total


def postmaster_pid(datadir: str) -> int | None:
    try:
        return int(Path(datadir, "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def cluster_cpu_s(datadir: str, table: dict[int, Process] | None = None) -> float:
    """CPU seconds a PostgreSQL cluster has used: its postmaster, its live backends, and
    every backend that has exited. Pass `table` to read several from one look at /proc."""
    postmaster = postmaster_pid(datadir)
    if postmaster is None:
        return 0.0
    return tree_cpu_s(processes() if table is None else table, postmaster)
