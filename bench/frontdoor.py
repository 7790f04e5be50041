"""(h) The whole front door against GPU-like shards: real HTTP, real JPEG decode, stand-in devices.

A GPU computes a batch in milliseconds, so on a GPU box the API tier and Redis set the appliance's speed.
Here `inferd run` serves a stand-in model (daemon/model/standin.py: the real worker loop around a device that
sleeps `batch_ms + per_image_ms x n` per batch, fed 224x224 jobs exactly as a GPU worker is) on 1 to 8
CPU shards, loaded by wrk through `api.port`, whatever front door answers there. Each load level is measured
in rounds that alternate with the decode-only app (bench/decode_only.py, the API tier's ceiling on the same
cores), keeping each system's best round. Around each inferd round the CPU time of every process under
supervisord is read, grouped by role, and divided by the requests served; the batch sizes each shard ran
are read from /metrics (`inferd_batch_size`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench import wrk
from bench.decode_only import decode_only_service
from bench.procs import cpu_seconds
from bench.soak import appliance_processes
from daemon.ops.capacity import SHARD_COUNT_ENV, api_threads
from daemon.ops.local_client import fetch
from daemon.settings import load_settings
from testkit.config import short_folder
from testkit.harness import Appliance, free_port

log = logging.getLogger(__name__)

STANDIN_BATCH_MS = 3.0
"""A 224x224 classifier's fixed cost per batch on a GPU, about."""
STANDIN_PER_IMAGE_MS = 0.05
"""And its cost per image."""
STANDIN_CLASSES = 1000
TARGET_JOBS_PER_S = 16_000
"""What 8 GPUs need from one Redis: 224x224 images at about 2,000/s each."""
COMMANDS_SHOWN = 6
"""Redis commands listed per level, the costliest first."""
BATCH_METRIC = re.compile(
    r'^inferd_(batch_size_sum|batch_size_count|inference_seconds_sum)\{shard="([^"]+)"\} ([0-9.e+-]+)$',
    re.MULTILINE,
)
"""Per shard: images in batches, batches, and seconds spent in the model (the two histograms' figures)."""
BATCH_FIELDS = ("batch_size_sum", "batch_size_count", "inference_seconds_sum")


@dataclass(frozen=True)
class FrontDoorPlan:
    """The shard counts, client counts and timings of the phase; `--quick` shrinks them."""

    shard_counts: tuple[int, ...] = (1, 2, 4, 8)
    clients_per_shard_count: int = 64
    """Clients for the shard sweep: at least this many, and at least one full batch per shard."""
    client_sweep: tuple[int, ...] = (64, 256, 1024)
    """Client counts measured at the widest shard count."""
    fill_batches: bool = True
    """Raise the shard sweep's clients to shards x batching.max_batch_size."""
    compare_threads: int = 16
    """A fixed api.threads (the old default) measured beside auto at the widest shard count; 0: none."""
    rounds: int = 2
    seconds: float = 3.0
    warmup_s: float = 0.5


QUICK_PLAN = FrontDoorPlan(
    shard_counts=(1, 2),
    clients_per_shard_count=4,
    client_sweep=(4, 16),
    fill_batches=False,
    compare_threads=0,
    rounds=1,
    seconds=1.0,
    warmup_s=0.0,
)


@dataclass
class FrontDoorPoint:
    """inferd at one shard count and client count, beside the decode-only ceiling measured in turn with it."""

    shards: int
    clients: int
    threads_setting: str
    """`api.threads` as set: "auto", or the fixed value compared with it."""
    api_threads: int
    """Per API process, as `inferd run` resolved them."""
    inferd: wrk.WrkResult
    ceiling: wrk.WrkResult
    shard_capacity: float
    """One stand-in shard's images/s at full batches: what the device alone could do."""
    mean_batch: dict[str, float] = field(default_factory=dict)
    cpu_ms_per_request: dict[str, float] = field(default_factory=dict)
    """CPU milliseconds per served request, by role: api, redis, workers, front door, other."""
    redis_us_per_request: dict[str, float] = field(default_factory=dict)
    """Redis's own time per served request by command (INFO commandstats), the costliest first."""

    @property
    def bound(self) -> float:
        """The best the appliance could do here: the devices' capacity or the API tier's ceiling."""
        return min(self.shards * self.shard_capacity, self.ceiling.rps)

    @property
    def redis_jobs_per_s(self) -> float | None:
        """Jobs/s one Redis could carry if it spent all of one core as it did per job here."""
        per_job_ms = self.cpu_ms_per_request.get("redis")
        return 1000.0 / per_job_ms if per_job_ms else None


def write_standin(folder: Path) -> tuple[Path, Path]:
    """A stand-in model file and its labels."""
    folder.mkdir(parents=True, exist_ok=True)
    model, labels = folder / "standin.json", folder / "standin-labels.txt"
    spec = {"inferd_standin": 1, "batch_ms": STANDIN_BATCH_MS, "per_image_ms": STANDIN_PER_IMAGE_MS}
    model.write_text(json.dumps(spec) + "\n")
    labels.write_text("".join(f"class_{i}\n" for i in range(STANDIN_CLASSES)))
    return model, labels


def shard_capacity(max_batch_size: int) -> float:
    """Images/s of one stand-in shard computing full batches back to back."""
    return max_batch_size / ((STANDIN_BATCH_MS + STANDIN_PER_IMAGE_MS * max_batch_size) / 1000.0)


def role_group(role: str) -> str:
    """appliance_processes' roles summed into the components the report compares."""
    if role.startswith("api-"):
        return "api"
    if role.startswith("worker-"):
        return "workers"
    if role == "redis":
        return "redis"
    if "nginx" in role:
        return "front door"
    return "other"  # supervisord, the shard watcher: idle under load


def cpu_by_group(supervisord_pid: int) -> dict[int, tuple[str, float]]:
    """pid -> (component, CPU seconds so far) for every process under supervisord."""
    found = {}
    for role, pid in appliance_processes(supervisord_pid).items():
        seconds = cpu_seconds(pid)
        if seconds is not None:
            found[pid] = (role_group(role), seconds)
    return found


def batch_totals(appliance: Appliance) -> dict[str, tuple[float, float, float]]:
    """shard -> (images, batches, seconds in the model) so far, from /metrics."""
    _, body = fetch(f"{appliance.url}/metrics", appliance.tls, timeout_s=10)
    text = body.decode()
    totals: dict[str, list[float]] = {}
    for kind, shard, value in BATCH_METRIC.findall(text):
        totals.setdefault(shard, [0.0, 0.0, 0.0])[BATCH_FIELDS.index(kind)] += float(value)
    return {shard: (images, batches, seconds) for shard, (images, batches, seconds) in totals.items()}


def command_usec(client: redis.Redis) -> dict[str, float]:
    """Command -> microseconds Redis has spent in it since its stats were last reset."""
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): float(fields["usec"]) for name, fields in stats.items()}


@dataclass
class InferdRound:
    result: wrk.WrkResult
    mean_batch: dict[str, float]
    cpu_ms_per_request: dict[str, float]
    redis_us_per_request: dict[str, float]
    infer_ms_per_batch: float | None = None
    """The shards' own time in the model per batch over the round, from `inferd_inference_seconds`."""


def measure_inferd(appliance: Appliance, photo: Path, clients: int, plan: FrontDoorPlan) -> InferdRound:
    """One wrk round against inferd, with the CPU each component spent and the batches each shard ran."""
    url = f"{appliance.url}/predict"
    if plan.warmup_s > 0:
        wrk.run_wrk(url, photo, clients, plan.warmup_s)
    client = appliance.redis()
    commands_before = command_usec(client)
    cpu_before, batches_before = cpu_by_group(appliance.pid), batch_totals(appliance)
    result = wrk.measure("inferd", url, "jpeg", photo, clients, plan.seconds, 0.0)
    cpu_after, batches_after = cpu_by_group(appliance.pid), batch_totals(appliance)
    commands_after = command_usec(client)
    client.close()
    spent: dict[str, float] = {}
    for pid, (group, after) in cpu_after.items():
        before = cpu_before.get(pid, (group, 0.0))[1]  # a process started mid-round counts from zero
        spent[group] = spent.get(group, 0.0) + after - before
    served = max(1, round(result.rps * result.duration_s))
    mean_batch = {}
    all_batches = all_seconds = 0.0
    for shard, (images, batches, seconds) in sorted(batches_after.items()):
        images0, batches0, seconds0 = batches_before.get(shard, (0.0, 0.0, 0.0))
        if batches > batches0:
            mean_batch[shard] = (images - images0) / (batches - batches0)
            all_batches += batches - batches0
            all_seconds += seconds - seconds0
    cpu_ms = {group: 1000.0 * seconds / served for group, seconds in sorted(spent.items())}
    commands = {
        name: (usec - commands_before.get(name, 0.0)) / served for name, usec in commands_after.items()
    }
    costliest = dict(sorted(commands.items(), key=lambda item: -item[1])[:COMMANDS_SHOWN])
    infer_ms = 1000.0 * all_seconds / all_batches if all_batches else None
    return InferdRound(result, mean_batch, cpu_ms, costliest, infer_ms)


@contextmanager
def standin_appliance(
    folder: Path, config: Path, env: dict[str, str], shards: int
) -> Iterator[tuple[Appliance, int]]:
    """`inferd run` with `shards` stand-in CPU shards; yields it and its threads per API process."""
    env = {**env, "INFERD_DEVICES_GPUS": "none", "INFERD_DEVICES_CPU_WORKERS": str(shards)}
    settings = load_settings(config, env=env)
    folder.mkdir(parents=True, exist_ok=True)
    appliance = Appliance(folder, config, settings.api.port, settings.paths.run_dir, shards, env)
    try:
        appliance.start(timeout_s=120)
        yield appliance, api_threads(settings, shards)
    finally:
        appliance.stop()


def measure_frontdoor(
    folder: Path, config: Path, env: dict[str, str], photo: Path, plan: FrontDoorPlan
) -> list[FrontDoorPoint]:
    """Every shard count of the plan at its client count, then the client sweep at the widest, where an
    appliance with the old fixed `api.threads` runs beside the auto one and takes its turn in each round."""
    model, labels = write_standin(folder / "standin")
    env = {**env, "INFERD_MODEL_PATH": str(model), "INFERD_MODEL_LABELS": str(labels)}
    settings = load_settings(config, env=env)
    capacity = shard_capacity(settings.batching.max_batch_size)
    widest = max(plan.shard_counts)
    points: list[FrontDoorPoint] = []
    with ExitStack() as stack:
        # The ceiling runs under the gunicorn settings inferd gets at the widest shard count.
        port = free_port()
        ceiling_env = {**env, "INFERD_API_PORT": str(port), SHARD_COUNT_ENV: str(widest)}
        ceiling = stack.enter_context(decode_only_service(config, ceiling_env, folder / "ceiling"))
        ceiling.wait_http(f"http://127.0.0.1:{port}/")
        ceiling_url = f"http://127.0.0.1:{port}/predict"
        for shards in plan.shard_counts:
            levels = [plan.clients_per_shard_count]
            if plan.fill_batches:
                levels = [max(plan.clients_per_shard_count, shards * settings.batching.max_batch_size)]
            variants = {"auto": env}
            if shards == widest:
                levels = sorted({*levels, *plan.client_sweep})
                if plan.compare_threads:
                    variants[str(plan.compare_threads)] = {
                        **env,
                        "INFERD_API_PORT": str(free_port()),
                        "INFERD_PATHS_RUN_DIR": str(short_folder("bench-")),
                        "INFERD_API_THREADS": str(plan.compare_threads),
                    }
            with ExitStack() as running:
                appliances = {
                    name: running.enter_context(
                        standin_appliance(folder / f"shards{shards}-{name}", config, variant_env, shards)
                    )
                    for name, variant_env in variants.items()
                }
                for clients in levels:
                    points += measure_level(appliances, ceiling_url, photo, shards, clients, capacity, plan)
    return points


def measure_level(
    appliances: dict[str, tuple[Appliance, int]],
    ceiling_url: str,
    photo: Path,
    shards: int,
    clients: int,
    capacity: float,
    plan: FrontDoorPlan,
) -> list[FrontDoorPoint]:
    """Rounds alternating between the ceiling and each appliance; each keeps its best round."""
    ceilings: list[wrk.WrkResult] = []
    rounds: dict[str, list[InferdRound]] = {name: [] for name in appliances}
    for _ in range(plan.rounds):
        ceilings.append(
            wrk.measure("decode-only", ceiling_url, "jpeg", photo, clients, plan.seconds, plan.warmup_s)
        )
        for name, (appliance, _threads) in appliances.items():
            rounds[name].append(measure_inferd(appliance, photo, clients, plan))
    ceiling = max(ceilings, key=lambda r: r.rps)
    points = []
    for name, (_appliance, threads) in appliances.items():
        best = max(rounds[name], key=lambda r: r.result.rps)
        point = FrontDoorPoint(
            shards=shards,
            clients=clients,
            threads_setting=name,
            api_threads=threads,
            inferd=best.result,
            ceiling=ceiling,
            shard_capacity=capacity,
            mean_batch=best.mean_batch,
            cpu_ms_per_request=best.cpu_ms_per_request,
            redis_us_per_request=best.redis_us_per_request,
        )
        log.info(
            "bench: frontdoor %d shard(s) c=%d threads %s: %.0f req/s of bound %.0f; CPU ms/req %s",
            shards,
            clients,
            name,
            point.inferd.rps,
            point.bound,
            {group: round(ms, 3) for group, ms in point.cpu_ms_per_request.items()},
        )
        points.append(point)
    return points
