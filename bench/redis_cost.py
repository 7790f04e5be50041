"""Redis's CPU per job on the real queue code, HTTP left out: what one Redis core could carry.

One redis-server on a unix socket; API threads send the 224x224 pixels of the benchmark's JPEG through the
API's face of the queues, and `--shards` real `gpu_worker.Worker` loops serve them with a model that
computes nothing (claim, read the pixels, commit the answers). Redis's own CPU (INFO cpu, user + system)
and its time by command (INFO commandstats) are read around each case and divided by the jobs answered:
1 / (CPU seconds per job) is the jobs/s one Redis core would carry.

    .venv/bin/python -m bench.redis_cost [--jobs 3000] [--levels 8x256,8x32,1x32] [--json out.json]

It replaces its own section of bench/RESULTS.md (`--results`; `--results ''` writes none).

Cases: where the pixels go (`queue.pixels`: "redis", the job's 150 KB through Redis; "shared_memory", a
76-byte job with its pixels in /dev/shm), and how the API waits: "two trips" (`ApiQueues.submit`, then
`await_reply`, as before) or "one trip" (`Dispatcher.dispatch`: both in one pipeline).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

from bench import sections
from bench.procs import machine_busy_s, own_cpu_s
from bench.run import machine_description
from bench.wrk import write_photos
from daemon.dispatcher import Dispatcher
from daemon.gpu_worker import Worker
from daemon.images.decode import decode_image
from daemon.queue.faces import ApiQueues, ShardQueues
from daemon.queue.pixel_store import PixelStore, create_folder, remove_folder
from daemon.queue.wire import Job, new_job_id
from daemon.settings import Settings, load_settings
from daemon.shard import cpu_shards
from testkit.harness import redis_server

CLASSES = 1000
SECTION = "redis-cost"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TARGET_JOBS_PER_S = 16_000
"""What 8 GPUs need from one Redis: 224x224 images at about 2,000/s each."""


class NullModel:
    """Computes nothing, so the Python around Redis is all the worker spends."""

    def __init__(self) -> None:
        self.labels = [f"class_{i}" for i in range(CLASSES)]

    def predict(self, batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        return np.full((len(batch), CLASSES), 1.0 / CLASSES, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class CostResult:
    pixels: str
    trips: str
    shards: int
    jobs: int
    clients: int
    seconds: float
    redis_cpu_us_per_job: float
    python_cpu_us_per_job: float
    """This process's CPU per job: the API threads' and the workers' Python together."""
    command_us_per_job: dict[str, float]
    mean_batch: float
    bytes_in_per_job: float

    @property
    def jobs_per_redis_core(self) -> float:
        return 1e6 / self.redis_cpu_us_per_job


def photo_pixels(settings: Settings, folder: Path) -> npt.NDArray[np.uint8]:
    """The benchmark's JPEG (bench.wrk's photo) decoded and resized as the API does."""
    data = write_photos(folder)["jpeg"].read_bytes()
    return decode_image(data, settings.model, settings.api.max_image_pixels)


def process_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def redis_cpu_s(client: redis.Redis) -> float:
    info: dict[str, Any] = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def measure(
    socket: Path, work: Path, case: tuple[str, str], jobs: int, clients: int, shards: int
) -> CostResult:
    pixels_path, trips = case
    base = load_settings()
    settings = dataclasses.replace(
        base,
        queue=dataclasses.replace(base.queue, pixels=pixels_path),
        paths=dataclasses.replace(base.paths, run_dir=work / "run"),
        api=dataclasses.replace(base.api, request_timeout_s=30.0),
    )
    settings.paths.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = create_folder(settings)  # as `inferd run` does: the workers below find it in the run dir
    client = redis.Redis(unix_socket_path=str(socket), max_connections=clients + 2 * shards + 8)
    client.flushall()
    pixels = photo_pixels(settings, work / "photos")
    workers = [
        Worker(settings, shard, ShardQueues(client, shard.shard_id, settings), NullModel(), False)
        for shard in cpu_shards(shards)
    ]
    serving = [threading.Thread(target=worker.work, daemon=True) for worker in workers]
    for thread in serving:
        thread.start()
    queues = ApiQueues(client, settings.queue, settings.batching)
    store = PixelStore.for_settings(settings)
    dispatcher = Dispatcher(queues, settings.api.request_timeout_s, store)

    def one_job() -> None:
        now = time.monotonic()
        job = Job(new_job_id(), now + 30, now, 5, pixels)
        if trips == "one trip":
            dispatcher.dispatch(job)
            return
        staged = store.stage(job)
        try:
            queues.submit(staged)
            assert queues.await_reply(job.job_id, 30) is not None
        finally:
            store.release(staged)

    deadline = time.monotonic() + 30
    while len(queues.registered_shards()) < shards and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [0]
    lock = threading.Lock()

    def client_loop() -> None:
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            one_job()

    def run_clients(count: int) -> float:
        left[0] = count
        started = time.monotonic()
        threads = [threading.Thread(target=client_loop) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.monotonic() - started

    run_clients(4 * clients)  # warm: scripts loaded, every client's connection open
    images_before = sum(worker.images_served for worker in workers)
    batches_before = sum(worker.batches_served for worker in workers)
    client.config_resetstat()
    cpu_before, python_before = redis_cpu_s(client), process_cpu_s()
    seconds = run_clients(jobs)
    cpu_s, python_s = redis_cpu_s(client) - cpu_before, process_cpu_s() - python_before
    stats: dict[str, Any] = client.info("commandstats")
    net: dict[str, Any] = client.info("stats")
    served = sum(worker.images_served for worker in workers) - images_before
    batches = sum(worker.batches_served for worker in workers) - batches_before
    for worker in workers:
        worker.request_stop()
    for thread in serving:
        thread.join(10)
    usec = {name.removeprefix("cmdstat_"): float(f["usec"]) / jobs for name, f in stats.items()}
    client.close()
    if folder is not None:
        remove_folder(folder)
    return CostResult(
        pixels=pixels_path,
        trips=trips,
        shards=shards,
        jobs=jobs,
        clients=clients,
        seconds=seconds,
        redis_cpu_us_per_job=cpu_s * 1e6 / jobs,
        python_cpu_us_per_job=python_s * 1e6 / jobs,
        command_us_per_job=dict(sorted(usec.items(), key=lambda item: -item[1])),
        mean_batch=served / max(batches, 1),
        bytes_in_per_job=float(net["total_net_input_bytes"]) / jobs,
    )


def render(results: list[CostResult]) -> str:
    lines = [
        "| pixels | API waits in | shards | jobs | clients | Redis CPU per job (µs) | one Redis core: jobs/s "
        "| of 16,000 | Python CPU per job (µs) | bytes into Redis per job | mean batch | commands (µs per job) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        commands = ", ".join(f"{name} {us:.0f}" for name, us in list(r.command_us_per_job.items())[:5])
        lines.append(
            f"| {r.pixels} | {r.trips} | {r.shards} | {r.jobs} | {r.clients} | {r.redis_cpu_us_per_job:.0f} | "
            f"{r.jobs_per_redis_core:,.0f} | {r.jobs_per_redis_core / TARGET_JOBS_PER_S:.0%} | "
            f"{r.python_cpu_us_per_job:,.0f} | "
            f"{r.bytes_in_per_job:,.0f} | {r.mean_batch:.1f} | {commands} |"
        )
    return "\n".join(lines)


def section(tables: list[str], command: str, seconds: float, others_pct: float, load: float) -> str:
    """The microbenchmark's own section of bench/RESULTS.md."""
    shared = (
        f"processes other than the benchmark's used {others_pct:.0f}% of the cores (load average {load:.2f})"
    )
    return "\n".join(
        [
            sections.start_marker(SECTION),
            "## (j) Redis's CPU per job, HTTP left out (`python -m bench.redis_cost`)",
            "",
            f"`{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M UTC} ({seconds:.0f} s; {machine_description()}); "
            f"{shared}.",
            "",
            "One redis-server on a unix socket; API threads send the 224x224 pixels of the benchmark's JPEG "
            "through the real `ApiQueues`/`Dispatcher`, and real `gpu_worker.Worker` loops (a model that "
            "computes nothing) claim, read and answer them. Redis CPU = INFO cpu (user + system) around the "
            "run, per job answered; one Redis core = 1 / that. Each case is run in alternating rounds and "
            "its cheapest round kept. 8 GPUs need 16,000 jobs/s. Python CPU is the benchmark process's own "
            "(API threads and workers together). Commands: INFO commandstats, the time spent inside each "
            "command, which on a busy machine counts time the Redis thread was descheduled and can pass its "
            "CPU; a shard count of 8 with 32 clients leaves batches thin (4 callers per shard), 256 fills "
            "them as 8 busy GPUs would.",
            "",
            *[part for table in tables for part in (table, "")],
            sections.end_marker(SECTION),
            "",
        ]
    )


CASES = (
    ("redis", "two trips"),
    ("redis", "one trip"),
    ("shared_memory", "two trips"),
    ("shared_memory", "one trip"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument(
        "--levels",
        default="8x256,8x32,1x32",
        help="SHARDSxCLIENTS, comma-separated (default 8x256,8x32,1x32: 8 shards with full and thin batches)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds per case, alternating; best kept")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--results", default=str(RESULTS), help="RESULTS.md whose section to replace")
    args = parser.parse_args(argv)
    started, busy, own = time.monotonic(), machine_busy_s(), own_cpu_s()
    load = os.getloadavg()[0]
    tables: list[str] = []
    everything: list[CostResult] = []
    with (
        tempfile.TemporaryDirectory(prefix="inferd-cost-") as folder,
        redis_server(Path(folder) / "redis") as socket,
    ):
        for level in args.levels.split(","):
            shards, clients = (int(part) for part in level.split("x"))
            results: dict[tuple[str, str], CostResult] = {}
            for _ in range(args.rounds):
                for case in CASES:
                    result = measure(socket, Path(folder), case, args.jobs, clients, shards)
                    best = results.get(case)
                    if best is None or result.redis_cpu_us_per_job < best.redis_cpu_us_per_job:
                        results[case] = result
            tables.append(render(list(results.values())))
            everything += results.values()
            print(tables[-1], flush=True)
    elapsed = time.monotonic() - started
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in everything], indent=2) + "\n")
    if args.results:
        others = max(0.0, (machine_busy_s() - busy) - (own_cpu_s() - own))
        others_pct = 100.0 * others / (elapsed * (os.cpu_count() or 1))
        command = " ".join(["python -m bench.redis_cost", *(argv if argv is not None else sys.argv[1:])])
        path = Path(args.results)
        text = sections.replace_section(
            path.read_text(), SECTION, section(tables, command, elapsed, others_pct, load)
        )
        path.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
