"""The shards as an operator sees them: one status per registered shard, from the registry, its heartbeat, its
recent batches and NVML. `GET /shards` (daemon/http/status_page.py) serves `shards_json`; `tools/gpu_status`
prints the same statuses as a table, or the same document with its own additions under `--json`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from daemon.ops.nvml import GpuReading, Nvml
from daemon.queue.registry import ShardState, batch_rates, read_drain_state, read_shards
from daemon.queue.wire import DRAINED, LIVE, STUCK
from daemon.settings import Settings


@dataclass(frozen=True, slots=True)
class ShardStatus:
    shard: str
    kind: str
    device_index: int | None
    device_name: str
    live: bool
    pid: int | None
    heartbeat_age_s: float | None
    queue_depth: int
    in_flight: int
    images_per_s: float
    mean_batch_size: float | None
    gpu: GpuReading | None
    status: str = LIVE
    """LIVE, DRAINED (live, but a drain mark sends it no new work), DOWN (no fresh heartbeat), FAILED (its
    worker refused to start) or STUCK (its model call hung)."""
    failed: bool = False
    """The worker refused to start (`reason` says why); such a shard is also not live."""
    reason: str | None = None
    """Why it failed, or why a GPU shard serves on the CPU (`fallback`)."""
    fallback: bool = False
    backend: str | None = None
    runtime_version: str | None = None
    """The ML runtime's version as the worker's runtime reported it (e.g. TensorFlow's `__version__`)."""
    cuda_version: str | None = None
    """The CUDA version the runtime was built for, on a shard that computes on its GPU; None on the CPU."""
    memory_total_bytes: int | None = None
    """The device memory the shard's runtime (or NVML) reported when it started serving; None on the CPU.
    `gpu` is NVML's reading now, and None where there is no NVML."""
    stuck_since: float | None = None
    """Unix time the wedged batch of a stuck shard went into the model; None unless stuck."""


def collect(
    client: redis.Redis, settings: Settings, reader: Nvml, now: float | None = None
) -> list[ShardStatus]:
    """The status of every registered shard, read in three Redis round trips."""
    states = read_shards(client, with_records=True)
    drain = read_drain_state(client, [state.shard for state in states])
    now = time.time() if now is None else now
    return [
        _shard_status(state, settings, reader, now, drain.box is not None or state.shard in drain.shards)
        for state in states
    ]


def _shard_status(
    state: ShardState, settings: Settings, reader: Nvml, now: float, drained: bool
) -> ShardStatus:
    kind = state.info.kind if state.info else "?"
    index = state.info.index if state.info and kind == "gpu" else None
    images_per_s, mean_batch = batch_rates(state.records, now)
    info = state.info
    age = None
    if state.heartbeat_ttl_ms is not None:
        # Each beat sets the key with a TTL of heartbeat_ttl_s, so what has run off since is the beat's age.
        age = round(max(0.0, settings.queue.heartbeat_ttl_s - state.heartbeat_ttl_ms / 1000.0), 3)
    return ShardStatus(
        shard=state.shard,
        kind=kind,
        device_index=index,
        # What the runtime computes on where the worker said (a CPU fallback shows as such), else NVML's name.
        device_name=(info.device or info.name) if info else "?",
        live=state.live,
        status=DRAINED if drained and state.status == LIVE else state.status,
        failed=bool(info and info.failed and not state.live),
        reason=info.reason if info else None,
        fallback=bool(info and info.fallback),
        backend=info.backend if info else None,
        runtime_version=info.runtime_version if info else None,
        cuda_version=info.cuda_version if info else None,
        memory_total_bytes=info.memory_total_bytes if info else None,
        stuck_since=info.since if info and state.status == STUCK else None,
        pid=state.heartbeat.pid if state.heartbeat is not None else None,
        heartbeat_age_s=age,
        queue_depth=state.queue_depth,
        in_flight=state.in_flight,
        images_per_s=round(images_per_s, 3),
        mean_batch_size=None if mean_batch is None else round(mean_batch, 3),
        gpu=reader.read(index) if index is not None else None,
    )


def shards_json(statuses: list[ShardStatus], nvml: bool) -> dict[str, Any]:
    """The shards as JSON: what `--json` prints and what the API serves at `GET /shards`."""
    return {
        "time": time.time(),
        "nvml": nvml,
        "shards": [asdict(status) for status in statuses],
        "down": [status.shard for status in statuses if not status.live],
        "failed": {status.shard: status.reason for status in statuses if status.failed},
    }
