"""(g) Soak: hold a load for minutes while sampling every appliance process's RSS and Redis's memory.

The processes are found under supervisord's pid by reading /proc, and named by role (redis, api master,
api workers, worker-N), so a restarted process shows up as a new pid under the same role. Growth is
measured from the first sample after warm-up to the last, per process; Redis's used_memory is compared
with the bound that the queue limits imply (`daemon.launcher.redis_maxmemory_mb`).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import redis

from bench.procs import command_line, rss_bytes
from testkit.proctree import descendants, parent_pids

log = logging.getLogger(__name__)


def role_of(pid: int, parent_role: str) -> str:
    argv = command_line(pid)
    text = " ".join(argv)
    if "supervisord" in text:
        return "supervisord"
    if argv and "redis-server" in argv[0]:  # Redis rewrites its title: "redis-server unixsocket:..."
        return "redis"
    if "daemon.gpu_worker" in text:
        index = argv[argv.index("--shard-index") + 1] if "--shard-index" in argv else "?"
        return f"worker-{index}"
    if "gunicorn" in text:
        # gunicorn's workers are forks of its master, so they carry the same command line.
        return "api-worker" if parent_role == "api-master" else "api-master"
    return argv[0].rsplit("/", 1)[-1] if argv else f"pid{pid}"


def appliance_processes(supervisord_pid: int) -> dict[str, int]:
    """Role -> pid for supervisord and everything under it (api workers numbered in pid order)."""
    parents = parent_pids()
    seen: dict[int, str] = {}
    roles: dict[str, int] = {}
    for pid in descendants(supervisord_pid):
        role = role_of(pid, seen.get(parents.get(pid, 0), ""))
        seen[pid] = role
        if role == "api-worker":
            role = f"api-worker-{sum(1 for name in roles if name.startswith('api-worker'))}"
        roles[role] = pid
    return roles


@dataclass
class SoakSamples:
    times_s: list[float] = field(default_factory=list)
    rss: dict[str, list[int | None]] = field(default_factory=dict)
    pids: dict[str, set[int]] = field(default_factory=dict)
    redis_used: list[int] = field(default_factory=list)


class SoakSampler:
    """Samples in a background thread until stopped: RSS by role and Redis used_memory."""

    def __init__(self, supervisord_pid: int, client: redis.Redis, interval_s: float) -> None:
        self._root = supervisord_pid
        self._client = client
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-sampler", daemon=True)
        self.samples = SoakSamples()
        self._started = 0.0

    def start(self) -> SoakSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> SoakSamples:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.samples

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self._interval_s):
                return

    def sample(self) -> None:
        samples = self.samples
        index = len(samples.times_s)
        samples.times_s.append(time.monotonic() - self._started)
        for role, pid in appliance_processes(self._root).items():
            history = samples.rss.setdefault(role, [None] * index)
            history.append(rss_bytes(pid))
            samples.pids.setdefault(role, set()).add(pid)
        for history in samples.rss.values():
            history.extend([None] * (index + 1 - len(history)))
        try:
            samples.redis_used.append(int(self._client.info("memory")["used_memory"]))
        except redis.RedisError as exc:
            log.warning("soak: Redis INFO failed: %s", exc)
            samples.redis_used.append(0)


@dataclass(frozen=True, slots=True)
class Growth:
    role: str
    pids: int
    after_warmup_mb: float
    final_mb: float
    peak_mb: float
    growth_pct: float


def rss_growth(samples: SoakSamples, warmup_s: float) -> list[Growth]:
    """Per role: RSS at the first sample after warm-up, at the end, its peak, and the growth in percent."""
    start = next((i for i, t in enumerate(samples.times_s) if t >= warmup_s), 0)
    growth = []
    for role, history in sorted(samples.rss.items()):
        values = [value for value in history[start:] if value is not None]
        if not values:
            continue
        first, last = values[0], values[-1]
        growth.append(
            Growth(
                role=role,
                pids=len(samples.pids.get(role, ())),
                after_warmup_mb=first / 2**20,
                final_mb=last / 2**20,
                peak_mb=max(values) / 2**20,
                growth_pct=(last - first) / first * 100.0 if first else 0.0,
            )
        )
    return growth
