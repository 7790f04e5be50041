"""Processes the benchmark starts (servers, Redis, workers) and what it reads about them from /proc.

Each server runs in its own session with its output in a log file, so stopping it stops its whole group and
a readiness wait that times out can show why. RSS is read from /proc directly (no psutil on the appliance).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from types import TracebackType

import requests

from tests.processes import REPO, wait_until

log = logging.getLogger(__name__)

PYTHON = sys.executable
STOP_TIMEOUT_S = 30.0
"""How long a server gets to leave after SIGTERM before its group is killed."""


class Service:
    """One server process (and its children) in its own session, logging to `log_path`."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        log.debug("bench: started %s (pid %d): %s", self.name, self.proc.pid, " ".join(self.argv))
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def wait_until(self, what: str, predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
        """Wait for `predicate`, failing loudly (with the log) on timeout or if the process exits."""

        def alive_and_ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            return predicate()

        wait_until(f"{self.name}: {what}", alive_and_ready, timeout_s, self.output)

    def wait_http(self, url: str, timeout_s: float = 60.0) -> None:
        self.wait_until(f"{url} to answer", lambda: requests.get(url, timeout=2).status_code < 500, timeout_s)

    def terminate(self) -> None:
        """Ask the group to leave (SIGTERM) without waiting; `stop()` then waits."""
        if self.proc is not None and self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.terminate()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("bench: %s ignored SIGTERM for %.0fs; killing its group", self.name, timeout_s)
        finally:
            # Whatever is left in the group (nothing, normally) must not outlive the phase.
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> Service:
        return self.start() if self.proc is None else self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def stop_all(services: list[Service]) -> None:
    """Signal every service first, then wait for each, so their shutdowns overlap."""
    for service in services:
        service.terminate()
    for service in reversed(services):
        service.stop()


def redis_tcp(folder: Path, port: int) -> Service:
    """A throwaway redis-server on loopback TCP, as the old design ran it (no persistence)."""
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return Service("redis", argv, folder / "redis.log")


# -- /proc ------------------------------------------------------------------------------------------------
def parent_pids() -> dict[int, int]:
    """pid -> parent pid for every process we can see."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited while we looked
        # The command name sits in parentheses and may hold spaces or ')': split after the last one.
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(entry)] = int(fields[1])
    return parents


def descendants(root: int) -> list[int]:
    """`root` and every process below it, parents before children."""
    children: dict[int, list[int]] = {}
    for pid, parent in parent_pids().items():
        children.setdefault(parent, []).append(pid)
    tree, frontier = [root], [root]
    while frontier:
        frontier = [child for pid in frontier for child in sorted(children.get(pid, []))]
        tree += frontier
    return tree


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
