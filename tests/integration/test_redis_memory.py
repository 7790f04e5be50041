"""The managed Redis's maxmemory (derived from the queue limits by the launcher) holds the worst case: every
shard's queue full and a whole batch claimed, every job carrying its pixels through Redis. Past maxmemory Redis
refuses writes (noeviction) and every request would be a 503.

A real redis-server runs the very redis.conf the launcher writes; the jobs go in through the API's enqueue
script and out through a shard's claim, as in service.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis

from daemon.errors import Unavailable
from daemon.launcher import redis_maxmemory_mb, render_redis_conf
from daemon.queue.faces import ApiQueues, ShardQueues
from daemon.queue.keys import processing_key, queue_key
from daemon.queue.wire import Job, new_job_id
from daemon.shard import cpu_shards
from daemon.worker.batching import Batcher
from testkit.harness import Service
from tests.integration.test_dispatcher import register

SHARDS = 4
INPUT = 224


def whole_job() -> Job:
    """A job as the API makes it when its pixels travel through Redis: no shared-memory segment."""
    pixels = np.random.default_rng().integers(0, 256, (INPUT, INPUT, 3), dtype=np.uint8)  # incompressible
    return Job(new_job_id(), time.monotonic() + 600, time.monotonic(), 5, pixels)


def fill(api: ApiQueues) -> int:
    """Submit whole jobs until every queue refuses the next one (full); the number taken."""
    taken = 0
    while True:
        try:
            api.submit(whole_job())
        except Unavailable as exc:
            assert "full" in exc.message, exc.message  # full queues, not a Redis refusal (OOM)
            return taken
        taken += 1


@pytest.mark.parametrize("pixels", ["redis", "shared_memory"])
def test_full_queues_and_claimed_batches_of_whole_jobs_fit_in_maxmemory(make_settings, tmp_path, pixels):
    settings = make_settings(
        model={"input_size": INPUT}, devices={"cpu_workers": SHARDS}, queue={"pixels": pixels}
    )
    conf = tmp_path / "redis.conf"
    conf.write_text(render_redis_conf(settings, SHARDS))
    with Service("redis-server", ["redis-server", str(conf)], tmp_path / "redis.log") as server:
        client = redis.Redis(unix_socket_path=str(settings.redis_socket))
        server.wait_until("PING", lambda: bool(client.ping()), 10)
        shards = [shard.shard_id for shard in cpu_shards(SHARDS)]
        register(client, *shards)
        api = ApiQueues(client, settings.queue, settings.batching)
        taken = fill(api)
        for shard in shards:  # each worker claims a whole batch, which frees its room in the queue ...
            claimed = Batcher(ShardQueues(client, shard, settings), settings.batching).claim_batch(1.0)
            assert len(claimed) == settings.batching.max_batch_size
        taken += fill(api)  # ... and the API fills that room again
        for shard in shards:
            # The API may leave a shard with a batch in hand for long short of full (it looks wedged): the
            # worst case is topped up as a worker pushes back its claims.
            while client.llen(queue_key(shard)) < settings.queue.max_depth:
                client.rpush(queue_key(shard), whole_job().encode())
        for shard in shards:
            assert client.llen(queue_key(shard)) == settings.queue.max_depth
            assert client.llen(processing_key(shard)) == settings.batching.max_batch_size
        used = int(client.info("memory")["used_memory"])
        maxmemory = redis_maxmemory_mb(settings, SHARDS) * 2**20
        print(
            f"\n[redis worst case, pixels={pixels}] {used / 2**20:.0f} MB used of {maxmemory / 2**20:.0f} MB"
        )
        assert used < maxmemory
        client.close()
