"""(i) inferd beside a server users could pick instead: LitServe, on the same work, one system loaded at a time.

Both serve the tiny test model built at 224x224 with inferd's own decode, resize, normalisation and top-5
(bench/litserve_peer.py reuses daemon/imaging.py and daemon/model.py), adaptive batching on (max batch 32,
`batching.max_wait_ms` as LitServe's batch timeout), LitServe with one inference worker per core; wrk posts
the same JPEG to each. Each client count is measured in rounds that alternate between the systems, and each
keeps its best round. Only the system being measured runs: LitServe's idle processes poll their queues (a
fifth of a core here, where inferd's idle cost is under 1%), so its whole tree is stopped (SIGSTOP) outside
its own turns and continued before them, warm-up included. Around each round the CPU seconds of every
process of the measured system are read from /proc, summed by role and divided by the requests it served.

LitServe is an optional extra (`bench-peers` in pyproject.toml, installed by `./setup.sh bench`, not by
`./setup.sh test`): where it is missing the phase says so in one line and is skipped.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench import loadgen
from bench.procs import cpu_seconds, state
from tools.harness import PYTHON, Service, wait_until
from tools.proctree import tree

log = logging.getLogger(__name__)

PEER = "litserve"
"""The peer's name in the report, and the package it needs."""
INPUT_SIZE = 224
"""The tiny model's input side here: the size real classifiers take, so decode and resize cost what they do."""
WORKER_PIDS_ENV = "PEER_WORKER_PIDS_DIR"
"""A folder where each of the peer's inference workers leaves a file named by its pid: its API servers are
spawned alike, and only this tells them apart when CPU time is summed by role."""
WORKER_PIDS_FOLDER = "worker-pids"
READY_TIMEOUT_S = 180.0
PAUSE_TIMEOUT_S = 30.0
"""LitServe starts one inference worker per core, each loading Keras and warming every batch bucket."""

CpuByRole = Callable[[], dict[int, tuple[str, float]]]
"""pid -> (role, CPU seconds so far) for every process of one system."""


@dataclass(frozen=True)
class PeersPlan:
    """The client counts and timings of the phase; `--quick` shrinks them."""

    clients: tuple[int, ...] = (1, 16, 64)
    rounds: int = 2
    seconds: float = 10.0
    """Per round, per system."""
    warmup_s: float = 2.0


QUICK_PLAN = PeersPlan(clients=(1, 4), rounds=1, seconds=1.0, warmup_s=0.0)


@dataclass
class PeerResult:
    """One system's best round at one client count, with the CPU its processes spent per request."""

    result: loadgen.WrkResult
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)
    """By role: api (HTTP parsing, and for inferd the queueing), workers (decode, model, top-k for the
    peer; the model and top-k for inferd), redis, front door, other."""

    @property
    def system(self) -> str:
        return self.result.system

    @property
    def clients(self) -> int:
        return self.result.clients


@dataclass(frozen=True)
class Contender:
    """A running system as the phase sees it: where to post, how to read its CPU, and what to pause."""

    name: str
    url: str
    cpu_by_role: CpuByRole
    pause_root: int | None = None
    """The pid whose whole tree is stopped while another system is measured; None: left running."""


def missing_peer() -> str | None:
    """Why the peer cannot run here, or None when it can."""
    if importlib.util.find_spec(PEER) is None:
        return f"{PEER} is not installed (`./setup.sh bench` installs it: the bench-peers extra)"
    return None


def peer_software() -> str:
    """The peer's version and the HTTP stack under it."""
    found = []
    for package in (PEER, "fastapi", "uvicorn"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


def litserve_service(config: Path, env: dict[str, str], folder: Path) -> Service:
    """bench/litserve_peer.py under `config` plus the INFERD_* overrides in `env` (model, port, batching)."""
    pids = folder / WORKER_PIDS_FOLDER
    pids.mkdir(parents=True, exist_ok=True)
    argv = [PYTHON, "-m", "bench.litserve_peer"]
    service_env = {**env, "INFERD_CONFIG": str(config), WORKER_PIDS_ENV: str(pids)}
    return Service(PEER, argv, folder / f"{PEER}.log", service_env)


def litserve_cpu_by_role(root: int, worker_pids: Path) -> dict[int, tuple[str, float]]:
    """The inference workers (they leave their pids in `worker_pids`), the launcher, and the API servers."""
    workers = {int(entry.name) for entry in worker_pids.iterdir() if entry.name.isdigit()}
    found = {}
    for process in tree(root):
        seconds = cpu_seconds(process.pid)
        if seconds is None:
            continue
        role = "workers" if process.pid in workers else "other" if process.pid == root else "api"
        found[process.pid] = (role, seconds)
    return found


def signal_tree(root: int, signum: signal.Signals) -> None:
    for process in tree(root):
        with suppress(ProcessLookupError):
            os.kill(process.pid, signum)


def pause_tree(root: int) -> None:
    """SIGSTOP the tree, and wait until every process has stopped: a busy machine may take a while to
    schedule one that is to act on the signal."""
    signal_tree(root, signal.SIGSTOP)
    wait_until(
        f"the processes under {root} to stop",
        lambda: all(state(process.pid) in ("T", None) for process in tree(root)),
        PAUSE_TIMEOUT_S,
    )


@contextmanager
def alone(contender: Contender, everyone: list[Contender]) -> Iterator[None]:
    """`contender` running; every other pausable system stopped until the block ends."""
    others = [c.pause_root for c in everyone if c is not contender and c.pause_root is not None]
    try:
        for root in others:
            pause_tree(root)
        yield
    finally:
        for root in others:
            signal_tree(root, signal.SIGCONT)


def measure_round(contender: Contender, photo: Path, clients: int, plan: PeersPlan) -> PeerResult:
    """Warm up, then one wrk round, with the CPU seconds each role of the system spent in it."""
    if plan.warmup_s > 0:
        loadgen.run_wrk(contender.url, photo, clients, plan.warmup_s)
    before = contender.cpu_by_role()
    result = loadgen.measure(contender.name, contender.url, "jpeg", photo, clients, plan.seconds, 0.0)
    after = contender.cpu_by_role()
    spent: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        spent[role] = spent.get(role, 0.0) + seconds - before.get(pid, (role, 0.0))[1]
    served = max(1, round(result.rps * result.duration_s))
    return PeerResult(result, {role: 1000.0 * s / served for role, s in sorted(spent.items())})


def measure_peers(contenders: list[Contender], photo: Path, plan: PeersPlan) -> list[PeerResult]:
    """Every client count in rounds alternating between the systems; each system's best round per count."""
    kept: list[PeerResult] = []
    for clients in plan.clients:
        rounds: dict[str, list[PeerResult]] = {c.name: [] for c in contenders}
        for _ in range(plan.rounds):
            for contender in contenders:
                with alone(contender, contenders):
                    rounds[contender.name].append(measure_round(contender, photo, clients, plan))
        kept += [max(runs, key=lambda run: run.result.rps) for runs in rounds.values()]
    for point in kept:
        log.info(
            "bench: peers %-8s c=%-3d %7.1f req/s; CPU ms/req %s",
            point.system,
            point.clients,
            point.result.rps,
            {role: round(ms, 2) for role, ms in point.cpu_ms_per_request.items()},
        )
    return kept
