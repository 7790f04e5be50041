"""(i) inferd beside the servers users could pick instead (LitServe, BentoML), on the same work, one at a time.

Every system serves the tiny test model built at 224x224 with inferd's own decode, resize, normalisation and
top-5 (bench/litserve_peer.py and bench/bentoml_peer.py reuse daemon/images/decode.py and daemon/model/classifier.py),
adaptive batching on (max batch 32), the peers with one model worker per core; wrk posts the same JPEG to
each. Each client count is measured in rounds that alternate between the systems, and each keeps its best
round. Only the system being measured runs: the peers' idle processes poll (LitServe's take a fifth of a core
here, where inferd's idle cost is under 1%), so each peer's whole tree is stopped (SIGSTOP) outside its own
turns and continued before them, warm-up included. Around each round the CPU seconds of every process of the
measured system are read from /proc, summed by role and divided by the requests it served.

The peers are an optional extra (`bench-peers` in pyproject.toml, installed by `./setup.sh bench`, not by
`./setup.sh test`): a peer that is missing is named in one line and left out, and without any the phase is
skipped.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import requests

from bench import wrk
from bench.procs import cpu_seconds, state
from daemon.settings import Settings
from daemon.shard import cpu_threads_per_worker, use_backend
from testkit.harness import PYTHON, Service, free_port, wait_until
from testkit.proctree import tree

log = logging.getLogger(__name__)

INPUT_SIZE = 224
"""The tiny model's input side here: the size real classifiers take, so decode and resize cost what they do."""
WORKER_PIDS_ENV = "PEER_WORKER_PIDS_DIR"
"""A folder where each of a peer's model workers leaves a file named by its pid once its model is warm: the
peers spawn their API servers alike, so only this tells them apart when CPU time is summed by role, and it
says when every worker is ready."""
WORKER_PIDS_FOLDER = "worker-pids"
READY_TIMEOUT_S = 180.0
"""A peer starts one model worker per core, each loading Keras and warming every batch bucket."""
PAUSE_TIMEOUT_S = 30.0

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

    result: wrk.WrkResult
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


@dataclass(frozen=True)
class Peer:
    """A server inferd is compared with, served by a module of bench/ run as `python -m`."""

    name: str
    """Its name in the report, and the package it needs."""
    module: str
    health_path: str
    packages: tuple[str, ...]
    """Whose versions the report gives."""
    layout: str
    """Its processes, as the report describes them."""
    home_env: str = ""
    """The variable naming the folder where the peer keeps state of its own, pointed into the run's folder."""
    env: tuple[tuple[str, str], ...] = ()


PEERS = (
    Peer(
        "litserve",
        "bench.litserve_peer",
        "/health",
        ("litserve", "fastapi", "uvicorn"),
        "uvicorn API servers (upload parsing, queueing) and inference workers (decode, model), as many of each",
    ),
    Peer(
        "bentoml",
        "bench.bentoml_peer",
        "/readyz",
        ("bentoml",),
        "worker processes that each serve HTTP, batch and run the model (decode included)",
        home_env="BENTOML_HOME",
        env=(("BENTOML_DO_NOT_TRACK", "True"),),
    ),
)


def missing(peer: Peer) -> str | None:
    """Why `peer` cannot run here, or None when it can."""
    if importlib.util.find_spec(peer.name) is None:
        return f"{peer.name} is not installed (`./setup.sh bench` installs it: the bench-peers extra)"
    return None


def software(peer: Peer) -> str:
    """The peer's version and the stack under it."""
    found = []
    for package in peer.packages:
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            continue
    return ", ".join(found)


def peer_service(peer: Peer, config: Path, env: dict[str, str], folder: Path) -> Service:
    """`peer` under `config` plus the INFERD_* overrides in `env` (model, `api.port`, batching)."""
    pids = folder / WORKER_PIDS_FOLDER
    pids.mkdir(parents=True, exist_ok=True)
    argv = [PYTHON, "-m", peer.module]
    service_env = {**env, **dict(peer.env), "INFERD_CONFIG": str(config), WORKER_PIDS_ENV: str(pids)}
    if peer.home_env:
        service_env[peer.home_env] = str(folder / "home")
    return Service(peer.name, argv, folder / f"{peer.name}.log", service_env)


def wait_ready(service: Service, base_url: str, peer: Peer, photo: Path, workers: int) -> None:
    """Every model worker warm (its pid file written); photos are posted meanwhile, since a server may
    build its model only on the first request it takes."""
    service.wait_http(f"{base_url}{peer.health_path}", READY_TIMEOUT_S)
    pids = Path(service.env[WORKER_PIDS_ENV])

    def all_warm() -> bool:
        if len(list(pids.iterdir())) >= workers:
            return True
        with photo.open("rb") as upload:
            requests.post(f"{base_url}/predict", files={"image": upload}, timeout=30)
        return False

    service.wait_until(f"{workers} warm model workers", all_warm, READY_TIMEOUT_S)


def start_peer(
    stack: ExitStack, peer: Peer, config: Path, env: dict[str, str], folder: Path, photo: Path
) -> Contender:
    """`peer` started on a free port, every worker warm, stopped when `stack` closes."""
    port = free_port()
    service = stack.enter_context(peer_service(peer, config, {**env, "INFERD_API_PORT": str(port)}, folder))
    base_url = f"http://127.0.0.1:{port}"
    wait_ready(service, base_url, peer, photo, os.cpu_count() or 1)
    pids = folder / WORKER_PIDS_FOLDER
    return Contender(
        peer.name,
        f"{base_url}/predict",
        lambda: peer_cpu_by_role(service.pid, pids),
        pause_root=service.pid,
    )


def peer_cpu_by_role(root: int, worker_pids: Path) -> dict[int, tuple[str, float]]:
    """The model workers (they leave their pids in `worker_pids`), the launcher, and the API servers."""
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
        wrk.run_wrk(contender.url, photo, clients, plan.warmup_s)
    before = contender.cpu_by_role()
    result = wrk.measure(contender.name, contender.url, "jpeg", photo, clients, plan.seconds, 0.0)
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


def pin_threads(workers: int, settings: Settings) -> None:
    """For a peer's model workers, inferd's rule for CPU shards: the cores shared evenly between the workers, before Keras loads."""
    threads = str(cpu_threads_per_worker(workers))
    os.environ.update(
        {
            "CUDA_VISIBLE_DEVICES": "",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "OMP_NUM_THREADS": threads,
            "TF_NUM_INTRAOP_THREADS": threads,
            "TF_NUM_INTEROP_THREADS": "1",
        }
    )
    use_backend(settings.model.backend)
