"""Dispatch against a real Redis: global rotation, dead shards skipped, bounded queues, deadlines."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

from daemon.dispatcher import Dispatcher
from daemon.errors import DeadlineExceeded, Draining, NoLiveWorker, Overloaded, QueueFull, RedisUnavailable
from daemon.ops import drain
from daemon.queue.connection import connect
from daemon.queue.faces import ApiQueues
from daemon.queue.keys import SHARDS_KEY, heartbeat_key, queue_key, reply_key
from daemon.queue.wire import FAILED, Heartbeat, Job, Reply, ShardInfo, new_job_id


def register(client, *shards: str, live: bool = True, batch_s: float | None = None) -> None:
    for shard in shards:
        client.hset(SHARDS_KEY, shard, "{}")
        if live:
            client.set(heartbeat_key(shard), Heartbeat(1, batch_s=batch_s).encode(), px=5000)


def a_job(deadline_in_s: float = 10.0) -> Job:
    pixels = np.zeros((4, 4, 3), dtype=np.uint8)
    return Job(new_job_id(), time.monotonic() + deadline_in_s, time.monotonic(), 5, pixels)


def queues_for(settings, client) -> ApiQueues:
    return ApiQueues(client, settings.queue, settings.batching)


def test_rotation_is_global_across_dispatchers(redis_settings, redis_client):
    register(redis_client, "gpu0", "gpu1", "gpu2")
    # Two dispatchers stand for two gunicorn processes: the rotation is shared, not per process.
    first, second = queues_for(redis_settings, redis_client), queues_for(redis_settings, redis_client)
    placements = [(first if i % 2 else second).submit(a_job()) for i in range(30)]
    assert Counter(placements) == {"gpu0": 10, "gpu1": 10, "gpu2": 10}
    assert all(placements[i] != placements[i + 1] for i in range(29))
    assert [redis_client.llen(queue_key(s)) for s in ("gpu0", "gpu1", "gpu2")] == [10, 10, 10]


def test_shard_without_fresh_heartbeat_gets_nothing(redis_settings, redis_client):
    register(redis_client, "cpu0", "cpu1")
    register(redis_client, "cpu2", live=False)
    dispatcher = queues_for(redis_settings, redis_client)
    placed = Counter(dispatcher.submit(a_job()) for _ in range(20))
    assert placed == {"cpu0": 10, "cpu1": 10}


def test_no_live_worker_is_a_503(redis_settings, redis_client):
    dispatcher = queues_for(redis_settings, redis_client)
    with pytest.raises(NoLiveWorker, match="no worker is registered yet"):
        dispatcher.submit(a_job())
    register(redis_client, "cpu0", live=False)
    dispatcher = queues_for(redis_settings, redis_client)
    with pytest.raises(NoLiveWorker) as error:
        dispatcher.submit(a_job())
    assert error.value.status == 503 and error.value.retry_after_s


def test_with_the_only_shard_failed_the_503_says_why_as_readyz_does(redis_settings, redis_client):
    reason = "model has 1000 outputs but labels.txt has 5 labels"
    failed = ShardInfo(kind="cpu", index=0, name="CPU", state=FAILED, reason=reason)
    redis_client.hset(SHARDS_KEY, "cpu0", failed.encode())
    with pytest.raises(NoLiveWorker) as error:
        queues_for(redis_settings, redis_client).submit(a_job())
    assert error.value.message == f"no worker is serving: cpu0: {reason}"


def test_a_drained_shard_gets_nothing_and_a_drained_box_refuses_with_retry_after(
    redis_settings, redis_client
):
    register(redis_client, "cpu0", "cpu1")
    dispatcher = queues_for(redis_settings, redis_client)
    drain.close_admission(redis_client, drain.OPERATOR, ["cpu1"])
    assert Counter(dispatcher.submit(a_job()) for _ in range(6)) == {"cpu0": 6}
    drain.close_admission(redis_client, drain.OPERATOR, ["cpu0"])
    with pytest.raises(Draining) as error:
        dispatcher.submit(a_job())  # live shards, all drained: "draining", not "no live worker"
    assert error.value.status == 503 and error.value.retry_after_s == 5.0  # README: Retry-After: 5
    drain.undrain(redis_client, None)
    assert dispatcher.submit(a_job()) in ("cpu0", "cpu1")
    drain.close_admission(redis_client, drain.OPERATOR, None)
    with pytest.raises(Draining):
        dispatcher.submit(a_job())
    assert redis_client.llen(queue_key("cpu0")) + redis_client.llen(queue_key("cpu1")) == 7
    assert dispatcher.drain_state().box == "operator"
    drain.undrain(redis_client, None)
    assert not dispatcher.drain_state().any


def test_full_queues_refuse_at_once_and_never_exceed_the_limit(make_settings, redis_socket, redis_client):
    settings = make_settings(redis={"managed": False, "socket": str(redis_socket)}, queue={"max_depth": 3})
    register(redis_client, "cpu0", "cpu1")
    dispatcher = queues_for(settings, redis_client)
    for _ in range(6):
        dispatcher.submit(a_job())
    with pytest.raises(QueueFull, match="full"):
        dispatcher.submit(a_job())
    assert redis_client.llen(queue_key("cpu0")) == redis_client.llen(queue_key("cpu1")) == 3


def test_shortest_queue_policy_prefers_the_emptier_shard(make_settings, redis_socket, redis_client):
    settings = make_settings(
        redis={"managed": False, "socket": str(redis_socket)}, queue={"dispatch": "shortest_queue"}
    )
    register(redis_client, "gpu0", "gpu1")
    for _ in range(5):
        redis_client.lpush(queue_key("gpu0"), b"backlog")
    dispatcher = queues_for(settings, redis_client)
    assert {dispatcher.submit(a_job()) for _ in range(4)} == {"gpu1"}


def test_redis_down_is_a_clean_503(make_settings, tmp_path):
    settings = make_settings(redis={"managed": False, "socket": str(tmp_path / "nobody.sock")})
    dispatcher = queues_for(settings, connect(settings, socket_timeout_s=1))
    with pytest.raises(RedisUnavailable):
        dispatcher.submit(a_job())


def test_the_dispatcher_returns_the_answer_or_its_error_or_a_504(redis_settings, redis_client):
    register(redis_client, "cpu0")
    dispatcher = Dispatcher(queues_for(redis_settings, redis_client), request_timeout_s=0.3)
    job = a_job()
    redis_client.lpush(reply_key(job.job_id), Reply(shard="cpu0", batch_size=1).encode())
    assert dispatcher.dispatch(job).shard == "cpu0"
    failing = a_job()
    redis_client.lpush(reply_key(failing.job_id), Reply.failure("cpu0", QueueFull("dropped")).encode())
    with pytest.raises(QueueFull, match="dropped"):
        dispatcher.dispatch(failing)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=r"no answer from shard cpu0 within 0\.3s"):
        dispatcher.dispatch(a_job(deadline_in_s=0.3))
    assert time.monotonic() - started >= 0.25  # waited for the deadline, not less


def test_a_job_that_would_wait_past_its_deadline_is_refused_with_the_wait_as_retry_after(
    make_settings, redis_socket, redis_client
):
    settings = make_settings(
        redis={"managed": False, "socket": str(redis_socket)}, batching={"max_batch_size": 4}
    )
    register(redis_client, "gpu0", batch_s=0.5)
    for _ in range(8):
        redis_client.lpush(queue_key("gpu0"), b"backlog")
    dispatcher = queues_for(settings, redis_client)
    # 8 queued + this one = 3 batches of 4 at 0.5 s: 1.5 s of work ahead, more than the 1 s left.
    with pytest.raises(Overloaded, match=r"about 1\.5s of work") as refused:
        dispatcher.submit(a_job(deadline_in_s=1.0))
    assert refused.value.status == 503 and refused.value.retry_after_s == pytest.approx(1.5)
    assert "than the 1.0s left before this request's deadline" in refused.value.message
    with pytest.raises(Overloaded, match=r"about 1\.5s of work, more than the 1\.0s left"):
        dispatcher.submit_and_await(a_job(deadline_in_s=1.0))  # the one-trip path says the same
    assert redis_client.llen(queue_key("gpu0")) == 8  # refused, not queued
    assert dispatcher.submit(a_job(deadline_in_s=2.0)) == "gpu0"  # with time enough it is taken


def test_a_job_goes_to_a_shard_that_can_reach_it_in_time(redis_settings, redis_client):
    register(redis_client, "gpu0", batch_s=2.0)
    register(redis_client, "gpu1", batch_s=0.01)
    dispatcher = queues_for(redis_settings, redis_client)
    # Round robin would alternate; a 1 s budget rules out gpu0's 2 s batches.
    assert {dispatcher.submit(a_job(deadline_in_s=1.0)) for _ in range(6)} == {"gpu1"}
    # A shard that has not reported a batch time yet is assumed able.
    register(redis_client, "gpu2")
    dispatcher = queues_for(redis_settings, redis_client)  # a fresh one: the shard list is cached for 1 s
    assert "gpu2" in {dispatcher.submit(a_job(deadline_in_s=1.0)) for _ in range(6)}


def a_file_job(data: bytes) -> Job:
    return Job(
        new_job_id(),
        time.monotonic() + 0.5,
        time.monotonic(),
        5,
        np.frombuffer(data, dtype=np.uint8),
        encoded_size=(64, 48),
    )


def test_a_file_too_large_for_redis_is_decoded_here_and_a_small_one_travels_whole(
    redis_settings, redis_client
):
    register(redis_client, "cpu0")
    decoded: list[int] = []

    def decode_here(data: bytes) -> np.ndarray:
        decoded.append(len(data))
        return np.zeros((4, 4, 3), dtype=np.uint8)

    # No shared memory (queue.pixels = "redis", or a full tmpfs): the file would go through Redis itself.
    dispatcher = Dispatcher(
        queues_for(redis_settings, redis_client), 0.5, None, decode_here, inline_file_limit=48
    )
    for size in (48, 49):
        with pytest.raises(DeadlineExceeded):  # no worker answers: only what reached the queue matters here
            dispatcher.dispatch(a_file_job(bytes(size)))
    small, large = (
        Job.decode(payload) for payload in reversed(redis_client.lrange(queue_key("cpu0"), 0, -1))
    )
    assert small.encoded and small.pixels.nbytes == 48
    assert not large.encoded and large.pixels.shape == (4, 4, 3)
    assert decoded == [49]


def test_one_redis_round_trip_per_job(redis_settings, redis_client):
    # README: the enqueue call and the BLPOP for the answer go to Redis in one pipeline. Redis counts the
    # reads it processes (INFO stats total_reads_processed): one per round trip a client makes.
    register(redis_client, "cpu0", "cpu1")
    api_client = connect(redis_settings, socket_timeout_s=5.0)
    dispatcher = Dispatcher(queues_for(redis_settings, api_client), request_timeout_s=5.0)
    jobs = [a_job() for _ in range(21)]
    for job in jobs:  # each answer is waiting already, so the BLPOP behind the enqueue returns at once
        redis_client.lpush(reply_key(job.job_id), Reply(shard="cpu0", batch_size=1).encode())
    dispatcher.dispatch(jobs[0])  # the first job also loads the script and reads the shard registry
    before = redis_client.info("stats")["total_reads_processed"]
    for job in jobs[1:]:
        dispatcher.dispatch(job)
    after = redis_client.info("stats")["total_reads_processed"]
    api_client.close()
    round_trips = after - before - 1  # less the INFO call's own read
    assert round_trips == len(jobs) - 1, f"{round_trips} round trips for {len(jobs) - 1} jobs"
