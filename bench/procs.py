"""What the benchmark reads about its processes and the machine from /proc (no psutil on the appliance).

Starting and stopping processes is testkit.harness's job; process trees are testkit.proctree's.
"""

from __future__ import annotations

import os
from pathlib import Path

from testkit.proctree import read_stat


def rss_bytes(pid: int) -> int | None:
    """Resident set size from /proc/<pid>/status, or None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores), from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds used by this process and every child it has waited for (and theirs, recursively)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def state(pid: int) -> str | None:
    """The scheduler state letter of a process ('R', 'S', 'T' for stopped, ...), None once it is gone."""
    stat = read_stat(pid)
    return None if stat is None else stat.state


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of a process (all its threads) from /proc/<pid>/stat, None once gone."""
    stat = read_stat(pid)
    return None if stat is None else stat.cpu_s
