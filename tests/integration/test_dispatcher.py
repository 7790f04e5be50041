"""Dispatch against a real Redis: global rotation, dead shards skipped, bounded queues."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from daemon.dispatcher import Dispatcher
from daemon.errors import NoLiveWorker, QueueFull, RedisUnavailable
from daemon.redis_conn import connect
from daemon.wire import SHARDS_KEY, Job, heartbeat_key, new_job_id, now, queue_key


def register(client, *shards: str, live: bool = True) -> None:
    for shard in shards:
        client.hset(SHARDS_KEY, shard, "{}")
        if live:
            client.set(heartbeat_key(shard), "{}", px=5000)


def job_bytes() -> bytes:
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    return Job(new_job_id(), now() + 10, now(), 5, pixels).encode()


def test_rotation_is_global_across_dispatchers(redis_settings, redis_client):
    register(redis_client, "gpu0", "gpu1", "gpu2")
    # Two dispatchers stand for two gunicorn processes: the rotation is shared, not per process.
    first, second = Dispatcher(redis_settings, redis_client), Dispatcher(redis_settings, redis_client)
    placements = [(first if i % 2 else second).pick_and_push(job_bytes()).shard for i in range(30)]
    assert Counter(placements) == {"gpu0": 10, "gpu1": 10, "gpu2": 10}
    assert all(placements[i] != placements[i + 1] for i in range(29))
    assert [redis_client.llen(queue_key(s)) for s in ("gpu0", "gpu1", "gpu2")] == [10, 10, 10]


def test_shard_without_fresh_heartbeat_gets_nothing(redis_settings, redis_client):
    register(redis_client, "cpu0", "cpu1")
    register(redis_client, "cpu2", live=False)
    dispatcher = Dispatcher(redis_settings, redis_client)
    placed = Counter(dispatcher.pick_and_push(job_bytes()).shard for _ in range(20))
    assert placed == {"cpu0": 10, "cpu1": 10}


def test_no_live_worker_is_a_503(redis_settings, redis_client):
    dispatcher = Dispatcher(redis_settings, redis_client)
    with pytest.raises(NoLiveWorker, match="no worker has registered"):
        dispatcher.pick_and_push(job_bytes())
    register(redis_client, "cpu0", live=False)
    dispatcher = Dispatcher(redis_settings, redis_client)
    with pytest.raises(NoLiveWorker) as error:
        dispatcher.pick_and_push(job_bytes())
    assert error.value.status == 503 and error.value.retry_after_s


def test_full_queues_refuse_at_once_and_never_exceed_the_limit(make_settings, redis_socket, redis_client):
    settings = make_settings(redis={"managed": False, "socket": str(redis_socket)}, queue={"max_depth": 3})
    register(redis_client, "cpu0", "cpu1")
    dispatcher = Dispatcher(settings, redis_client)
    for _ in range(6):
        dispatcher.pick_and_push(job_bytes())
    with pytest.raises(QueueFull, match="full"):
        dispatcher.pick_and_push(job_bytes())
    assert redis_client.llen(queue_key("cpu0")) == redis_client.llen(queue_key("cpu1")) == 3


def test_shortest_queue_policy_prefers_the_emptier_shard(make_settings, redis_socket, redis_client):
    settings = make_settings(
        redis={"managed": False, "socket": str(redis_socket)}, queue={"dispatch": "shortest_queue"}
    )
    register(redis_client, "gpu0", "gpu1")
    for _ in range(5):
        redis_client.lpush(queue_key("gpu0"), b"backlog")
    dispatcher = Dispatcher(settings, redis_client)
    assert {dispatcher.pick_and_push(job_bytes()).shard for _ in range(4)} == {"gpu1"}


def test_redis_down_is_a_clean_503(make_settings, tmp_path):
    settings = make_settings(redis={"managed": False, "socket": str(tmp_path / "nobody.sock")})
    dispatcher = Dispatcher(settings, connect(settings, socket_timeout_s=1))
    with pytest.raises(RedisUnavailable):
        dispatcher.pick_and_push(job_bytes())
