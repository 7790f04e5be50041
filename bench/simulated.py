"""(e) Simulated shards: the real worker loop and dispatcher around a "model" that only sleeps.

Each shard is a process running `daemon.gpu_worker.Worker` unchanged, with a stand-in predictor whose
`predict()` sleeps `base_ms + per_image_ms * batch` (a device with a fixed cost per batch), so what limits
throughput is the queueing and dispatch, not the CPU. The load bypasses HTTP on purpose: client threads in
a few processes push jobs through the real `daemon.queue.faces.ApiQueues` and BLPOP their replies, exactly
as the API does after decoding, which keeps the load generator far cheaper than the shards it feeds.
"""

from __future__ import annotations

import logging
import multiprocessing
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

from daemon.errors import Unavailable, UsageArgumentParser
from daemon.gpu_worker import Worker
from daemon.logs import setup_logging
from daemon.queue.faces import ApiQueues, ShardQueues
from daemon.queue.keys import heartbeat_key
from daemon.queue.wire import Job, new_job_id
from daemon.settings import Settings, load_settings
from daemon.shard import Shard
from testkit.config import write_settings
from testkit.harness import PYTHON, Service, stop_all
from tools.loadgen import percentile

log = logging.getLogger(__name__)

INPUT_SIZE = 16
"""Pixels per side of a simulated job: small, so Redis and the clients move little data per job."""
LABELS = [f"class_{i}" for i in range(10)]
LOAD_PROCESSES = 2
"""Client processes: one per core, so the GIL of one does not cap the offered load."""
REPLY_TIMEOUT_S = 30.0
RETRY_PAUSE_S = 0.005
"""Pause before a client re-offers a job that every queue refused (backpressure)."""


class SleepingModel:
    """A stand-in predictor: a fixed cost per batch plus a cost per image, spent asleep."""

    def __init__(self, base_ms: float, per_image_ms: float) -> None:
        self.labels = LABELS
        self.base_s = base_ms / 1000.0
        self.per_image_s = per_image_ms / 1000.0
        self._scores = np.linspace(1.0, 0.1, len(LABELS), dtype=np.float32)
        self._scores /= self._scores.sum()

    def predict(self, batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        time.sleep(self.base_s + self.per_image_s * len(batch))
        return np.tile(self._scores, (len(batch), 1))


def simulated_shard(index: int) -> Shard:
    return Shard(shard_id=f"sim{index}", kind="cpu", index=index, name="simulated")


def write_sim_settings(folder: Path, redis_socket: Path, policy: str, max_batch_size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sections: dict[str, dict[str, Any]] = {
        "redis": {"managed": False, "socket": str(redis_socket)},
        "model": {"path": "unused.keras", "labels": "unused.txt", "input_size": INPUT_SIZE},
        "batching": {"max_batch_size": max_batch_size, "max_wait_ms": 5.0},
        "queue": {"dispatch": policy, "max_depth": 1024},
        "devices": {"gpus": "none"},
        "paths": {"run_dir": str(folder), "log_dir": str(folder)},
    }
    return write_settings(folder, sections)


def shard_service(config: Path, index: int, base_ms: float, per_image_ms: float, folder: Path) -> Service:
    argv = [PYTHON, "-m", "bench.simulated", "--config", str(config), "--shard-index", str(index)]
    argv += ["--base-ms", str(base_ms), "--per-image-ms", str(per_image_ms)]
    return Service(f"sim{index}", argv, folder / f"sim{index}.log")


# -- load ------------------------------------------------------------------------------------------------
@dataclass
class ClientTally:
    latencies_ms: list[float] = field(default_factory=list)
    shards: Counter[str] = field(default_factory=Counter)
    rejected: int = 0
    failed: int = 0


def client_thread(
    settings: Settings,
    queues: ApiQueues,
    window: tuple[float, float],
    tally: ClientTally,
) -> None:
    """A closed-loop client: push a job, wait for its reply, again, until the window closes."""
    pixels = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)
    opens, closes = window
    while time.monotonic() < closes:
        started = time.monotonic()
        job = Job(
            new_job_id(), deadline=started + REPLY_TIMEOUT_S, enqueued_at=started, top_k=1, pixels=pixels
        )
        try:
            queues.submit(job)
        except Unavailable:
            tally.rejected += 1
            time.sleep(RETRY_PAUSE_S)
            continue
        reply = queues.await_reply(job.job_id, REPLY_TIMEOUT_S)
        finished = time.monotonic()
        if reply is None or reply.error_kind is not None:
            tally.failed += 1
        elif opens <= finished < closes:
            tally.latencies_ms.append((finished - started) * 1000.0)
            tally.shards[reply.shard] += 1


def client_process(
    config: Path, threads: int, window: tuple[float, float], results: Queue[ClientTally]
) -> None:
    settings = load_settings(config)
    client = redis.Redis(unix_socket_path=str(settings.redis.socket), max_connections=threads + 4)
    queues = ApiQueues(client, settings.queue, settings.batching)
    tallies = [ClientTally() for _ in range(threads)]
    workers = [
        threading.Thread(target=client_thread, args=(settings, queues, window, tally)) for tally in tallies
    ]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    total = ClientTally()
    for tally in tallies:
        total.latencies_ms += tally.latencies_ms
        total.shards.update(tally.shards)
        total.rejected += tally.rejected
        total.failed += tally.failed
    results.put(total)


@dataclass(frozen=True, slots=True)
class SimResult:
    label: str
    shards: int
    policy: str
    clients: int
    jobs_per_s: float
    p50_ms: float
    p99_ms: float
    per_shard: dict[str, int]
    rejected: int
    failed: int


def offer_load(config: Path, clients: int, warmup_s: float, seconds: float) -> ClientTally:
    """Run `clients` closed-loop clients across LOAD_PROCESSES processes; the tally of the timed window."""
    context = multiprocessing.get_context("fork")
    results: Queue[ClientTally] = context.Queue()
    opens = time.monotonic() + warmup_s
    window = (opens, opens + seconds)
    processes = []
    for index in range(min(LOAD_PROCESSES, clients)):
        threads = clients // LOAD_PROCESSES + (1 if index < clients % LOAD_PROCESSES else 0)
        process = context.Process(target=client_process, args=(config, threads, window, results))
        process.start()
        processes.append(process)
    total = ClientTally()
    for _ in processes:
        tally = results.get(timeout=warmup_s + seconds + REPLY_TIMEOUT_S + 30)
        total.latencies_ms += tally.latencies_ms
        total.shards.update(tally.shards)
        total.rejected += tally.rejected
        total.failed += tally.failed
    for process in processes:
        process.join(timeout=10)
    return total


def heartbeat_seen(client: redis.Redis, shard: Shard) -> Callable[[], bool]:
    return lambda: bool(client.exists(heartbeat_key(shard.shard_id)))


def run_shards(
    label: str,
    folder: Path,
    redis_socket: Path,
    costs: list[tuple[float, float]],
    policy: str,
    max_batch_size: int,
    clients: int,
    warmup_s: float,
    seconds: float,
) -> SimResult:
    """Start one simulated shard per (base_ms, per_image_ms) in `costs`, load them, stop them."""
    client = redis.Redis(unix_socket_path=str(redis_socket))
    client.flushall()
    config = write_sim_settings(folder, redis_socket, policy, max_batch_size)
    shards = [shard_service(config, i, base, per, folder) for i, (base, per) in enumerate(costs)]
    try:
        for shard in shards:
            shard.start()
        for index, shard in enumerate(shards):
            shard.wait_until("a heartbeat", heartbeat_seen(client, simulated_shard(index)), 30)
        tally = offer_load(config, clients, warmup_s, seconds)
    finally:
        stop_all(shards)
        client.close()
    result = SimResult(
        label=label,
        shards=len(costs),
        policy=policy,
        clients=clients,
        jobs_per_s=len(tally.latencies_ms) / seconds,
        p50_ms=statistics.median(tally.latencies_ms) if tally.latencies_ms else float("nan"),
        p99_ms=percentile(sorted(tally.latencies_ms), 99) if tally.latencies_ms else float("nan"),
        per_shard=dict(sorted(tally.shards.items())),
        rejected=tally.rejected,
        failed=tally.failed,
    )
    log.info(
        "bench: %-18s %d shard(s) %-14s c=%-3d %7.1f jobs/s  p50 %6.1f ms  p99 %6.1f ms",
        label,
        result.shards,
        policy,
        clients,
        result.jobs_per_s,
        result.p50_ms,
        result.p99_ms,
    )
    return result


# -- one simulated shard's process ---------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = UsageArgumentParser(description="a simulated shard: the real worker loop, a sleeping model")
    parser.add_argument("--config", required=True)
    parser.add_argument("--shard-index", type=int, required=True)
    parser.add_argument("--base-ms", type=float, required=True, help="sleep per batch")
    parser.add_argument("--per-image-ms", type=float, required=True, help="extra sleep per image")
    args = parser.parse_args(argv)
    setup_logging()
    settings = load_settings(args.config)
    client = redis.Redis(unix_socket_path=str(settings.redis.socket), socket_timeout=10.0)
    model = SleepingModel(args.base_ms, args.per_image_ms)
    shard = simulated_shard(args.shard_index)
    return Worker(settings, shard, ShardQueues(client, shard.shard_id, settings), model).work()


if __name__ == "__main__":
    sys.exit(main())
