"""In-flight capacity: how many requests the API holds at once, and the Redis connections that follow from it.

Each API thread holds one request from upload to answer, so `api.workers x api.threads` is the most requests
ever in flight. To keep every shard busy, each must have a batch computing and the next one filling:
`shards x batching.max_batch_size x IN_FLIGHT_BATCHES` requests. With `api.threads = 0` (the default) the
API gets that many, spread over its processes, from the shard count the launcher discovered; an explicit
value is taken as it stands. Every API thread may hold one Redis connection while it waits on BLPOP, so each
process's pool and the managed Redis's `maxclients` are derived from the same figure: a pool smaller than
its threads would answer 503 "Too many connections" under load (redis-py's pool defaults to 100).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from daemon.settings import Settings

SHARD_COUNT_ENV = "INFERD_SHARD_COUNT"
"""Set by the launcher for every program: how many shards it discovered."""
IN_FLIGHT_BATCHES = 2
"""Batches' worth of requests per shard: one computing, one filling behind it."""
MIN_AUTO_THREADS = 16
"""Fewest threads per API process that auto gives: small boxes keep room for slow uploads."""
MAX_AUTO_THREADS = 64
"""Most threads per API process that auto gives: measured on 2 cores at 1,024 clients, 256 threads a process
cost 3x the API CPU per request of 16 (GIL and switching), so past this a box needs more processes instead."""
POOL_MARGIN = 4
"""Connections per API process beyond its threads: /metrics and /readyz read Redis outside a request's wait."""
CONNECTIONS_PER_WORKER = 8
"""Connections a shard's worker may open: its loop, heartbeat and stuck-batch watch, with room to spare."""
MAXCLIENTS_MARGIN = 64
"""Redis clients beyond the appliance's own pools: tools, the shard watcher, an API process being replaced."""
REDIS_DEFAULT_MAXCLIENTS = 10_000
"""Redis's own default: the derived figure only ever raises it."""


def shard_count_from_env(env: Mapping[str, str] | None = None) -> int:
    """The launcher's shard count, or 1 for an API started outside `inferd run` (tests, the decode-only app)."""
    raw = (os.environ if env is None else env).get(SHARD_COUNT_ENV, "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else 1


def api_threads(settings: Settings, shard_count: int) -> int:
    """Threads per API process: `api.threads`, or with 0 enough for every shard's batches in flight."""
    if settings.api.threads:
        return settings.api.threads
    wanted = shard_count * settings.batching.max_batch_size * IN_FLIGHT_BATCHES
    per_process = math.ceil(wanted / settings.api.workers)
    return max(MIN_AUTO_THREADS, min(MAX_AUTO_THREADS, per_process))


def api_pool_size(settings: Settings, shard_count: int) -> int:
    """Redis connections one API process may open: one per thread, plus the margin."""
    return api_threads(settings, shard_count) + POOL_MARGIN


def redis_maxclients(settings: Settings, shard_count: int) -> int:
    """The managed Redis's maxclients: every pool full at once, never below Redis's own default."""
    needed = (
        settings.api.workers * api_pool_size(settings, shard_count)
        + shard_count * CONNECTIONS_PER_WORKER
        + MAXCLIENTS_MARGIN
    )
    return max(REDIS_DEFAULT_MAXCLIENTS, needed)
