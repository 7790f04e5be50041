"""Process trees read from /proc: who descends from whom, and killing a whole tree so that none of it survives.

supervisord puts each program in its own process group, so signalling one group never reaches the rest of an
appliance; only the parent links in /proc do. A process is named by its pid and its start time (clock ticks
after boot), so a pid the kernel has handed to a new process since is never mistaken for the old one.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import suppress
from pathlib import Path
from typing import NamedTuple

KILL_WAIT_S = 10.0
"""How long SIGKILLed processes get to disappear (the kernel only has to reap them)."""


class ProcessId(NamedTuple):
    pid: int
    started: int
    """Start time in clock ticks after boot (/proc/<pid>/stat field 22)."""


class ProcStat(NamedTuple):
    """What /proc/<pid>/stat says of a process (the fields the tests and the benchmark read)."""

    state: str
    """The scheduler state letter: 'R', 'S', 'T' (stopped), 'Z' (zombie), ..."""
    parent: int
    started: int
    """Clock ticks after boot."""
    cpu_ticks: int
    """User plus system time of all its threads, in clock ticks."""

    @property
    def cpu_s(self) -> float:
        return self.cpu_ticks / os.sysconf("SC_CLK_TCK")


def read_stat(pid: int) -> ProcStat | None:
    """The one reader of /proc/<pid>/stat here; None once the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None  # exited while we looked
    # The command name sits in parentheses and may hold spaces or ')': split after the last one.
    fields = raw.rsplit(")", 1)[1].split()
    return ProcStat(fields[0], int(fields[1]), int(fields[19]), int(fields[11]) + int(fields[12]))


def _all_stats() -> dict[int, ProcStat]:
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := read_stat(int(entry))) is not None:
            stats[int(entry)] = stat
    return stats


def parent_pids() -> dict[int, int]:
    """pid -> parent pid for every process we can see."""
    return {pid: stat.parent for pid, stat in _all_stats().items()}


def descendants(root: int) -> list[int]:
    """`root` and every process below it, parents before children."""
    return [process.pid for process in tree(root)]


def children(parent: int) -> set[ProcessId]:
    """The live direct children of `parent` (a gunicorn master's workers, say)."""
    return {
        ProcessId(pid, stat.started)
        for pid, stat in _all_stats().items()
        if stat.parent == parent and stat.state != "Z"
    }


def tree(root: int) -> list[ProcessId]:
    """`root` and every live process below it, parents before children; empty once `root` is gone."""
    stats = _all_stats()
    if root not in stats:
        return []
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(stat.parent, []).append(pid)
    pids, frontier = [root], [root]
    while frontier:
        frontier = [child for pid in frontier for child in sorted(children.get(pid, []))]
        pids += frontier
    return [ProcessId(pid, stats[pid].started) for pid in pids]


def alive(processes: set[ProcessId]) -> set[ProcessId]:
    """Those of `processes` still running: same pid and start time, and not a zombie."""
    living = set()
    for process in processes:
        stat = read_stat(process.pid)
        if stat is not None and stat.started == process.started and stat.state != "Z":
            living.add(process)
    return living


def kill_all(processes: set[ProcessId], wait_s: float = KILL_WAIT_S) -> set[ProcessId]:
    """SIGKILL every one of `processes` still alive; returns those that were (and are now gone)."""
    living = alive(processes)
    for process in living:
        # Checked again right before the signal: the pid may have been reused since `alive` looked.
        stat = read_stat(process.pid)
        if stat is not None and stat.started == process.started:
            with suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    while (left := alive(living)) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        raise RuntimeError(f"processes survived SIGKILL for {wait_s}s: {sorted(p.pid for p in left)}")
    return living
