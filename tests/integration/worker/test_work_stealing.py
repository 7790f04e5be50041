"""Work stealing on a real Redis: a shard starting a batch fills its room with the jobs waiting behind an
overdue batch, each once.

A shard is overdue when it holds claimed jobs and its on-time mark (set by its claim, expiring after the
overdue limit its pace gives) has expired: the test shards are given a 50 ms limit and the test waits past it.
"""

from __future__ import annotations

import threading
import time

import numpy as np

from daemon.queue.faces import ApiQueues, OverdueRule, ShardQueues
from daemon.queue.keys import SHARDS_KEY, processing_key, queue_key
from daemon.queue.wire import Heartbeat, Job, ShardInfo, new_job_id
from daemon.settings import BatchingSettings, QueueSettings, Settings
from daemon.worker.batching import Batcher

SHORT = OverdueRule(floor_ms=50)
"""A batch claimed under this rule is overdue 50 ms later."""
PAST_SHORT_S = 0.3
"""Long enough past SHORT's 50 ms for the mark to have expired on a loaded machine."""


def shard(client, name: str, max_batch_size: int = 4, steal: bool = True) -> Batcher:
    """How a registered, live shard claims its batches."""
    settings = Settings(
        batching=BatchingSettings(max_batch_size=max_batch_size, max_wait_ms=0),
        queue=QueueSettings(steal=steal),
    )
    queues = ShardQueues(client, name, settings)
    queues.beat(ShardInfo(kind="cpu", index=int(name[-1]), name="CPU"), Heartbeat(pid=1))
    return Batcher(queues, settings.batching)


def fill(client, name: str, count: int, prefix: str = "job") -> None:
    for i in range(count):
        client.lpush(queue_key(name), f"{prefix}{i}".encode())


def test_an_idle_shard_takes_the_oldest_jobs_waiting_behind_an_overdue_batch(redis_client):
    slow, idle = shard(redis_client, "cpu0", max_batch_size=2), shard(redis_client, "cpu1", max_batch_size=3)
    fill(redis_client, "cpu0", 6)
    assert slow.claim_batch(1.0, SHORT) == [b"job0", b"job1"]
    time.sleep(PAST_SHORT_S)
    assert idle.claim_batch(1.0) == [b"job2", b"job3", b"job4"]
    assert (idle.stolen_from, idle.stolen) == ("cpu0", 3)
    # Claimed once: off the overdue shard's queue and into the thief's processing list, in one step.
    assert redis_client.lrange(queue_key("cpu0"), 0, -1) == [b"job5"]
    assert redis_client.llen(processing_key("cpu1")) == 3
    assert redis_client.llen(processing_key("cpu0")) == 2  # the batch in hand stays with its owner


def test_nothing_is_taken_from_a_batch_on_time_or_when_stealing_is_off(redis_client):
    busy = shard(redis_client, "cpu0", max_batch_size=1)
    fill(redis_client, "cpu0", 3)
    assert busy.claim_batch(1.0, OverdueRule(floor_ms=60_000)) == [b"job0"]
    assert shard(redis_client, "cpu1").claim_batch(0.3) == []  # on time: its queue is its own
    redis_client.delete(processing_key("cpu0"))
    assert busy.claim_batch(1.0, SHORT) == [b"job1"]
    time.sleep(PAST_SHORT_S)
    assert shard(redis_client, "cpu2", steal=False).claim_batch(0.3) == []
    assert redis_client.lrange(queue_key("cpu0"), 0, -1) == [b"job2"]


def test_a_shard_serves_its_own_queue_first_and_fills_the_room_from_the_longest_overdue_queue(redis_client):
    for name, count in (("cpu0", 3), ("cpu1", 5)):
        fill(redis_client, name, count, prefix=f"{name}-")
        assert shard(redis_client, name, max_batch_size=1).claim_batch(1.0, SHORT) == [f"{name}-0".encode()]
    thief = shard(redis_client, "cpu2", max_batch_size=3)
    fill(redis_client, "cpu2", 1, prefix="own-")
    time.sleep(PAST_SHORT_S)
    # Busy with a job of its own, it still has room: a shard kept busy by a trickle would otherwise never help.
    assert thief.claim_batch(1.0) == [b"own-0", b"cpu1-1", b"cpu1-2"]
    assert (thief.stolen_from, thief.stolen) == ("cpu1", 2)
    assert redis_client.lrange(queue_key("cpu1"), 0, -1) == [b"cpu1-4", b"cpu1-3"]
    assert redis_client.llen(queue_key("cpu0")) == 2


def test_a_shard_whose_own_queue_fills_its_batch_takes_nothing(redis_client):
    fill(redis_client, "cpu0", 3)
    assert shard(redis_client, "cpu0", max_batch_size=1).claim_batch(1.0, SHORT) == [b"job0"]
    busy = shard(redis_client, "cpu1", max_batch_size=2)
    fill(redis_client, "cpu1", 2, prefix="own-")
    time.sleep(PAST_SHORT_S)
    assert busy.claim_batch(1.0) == [b"own-0", b"own-1"]
    assert (busy.stolen_from, busy.stolen) == (None, 0)
    assert redis_client.llen(queue_key("cpu0")) == 2


def test_a_shard_with_a_batch_in_hand_takes_nothing_while_it_gathers(redis_client):
    fill(redis_client, "cpu0", 3)
    assert shard(redis_client, "cpu0", max_batch_size=1).claim_batch(1.0, SHORT) == [b"job0"]
    time.sleep(PAST_SHORT_S)
    gathering = shard(redis_client, "cpu1", max_batch_size=4)
    redis_client.lpush(processing_key("cpu1"), b"held")  # the first job of its batch, claimed already
    assert gathering.queues.claim_waiting(3, steal=True) == []
    assert redis_client.llen(queue_key("cpu0")) == 2


def test_racing_thieves_claim_every_job_exactly_once(redis_client):
    total = 200
    fill(redis_client, "cpu0", total)
    assert shard(redis_client, "cpu0", max_batch_size=1).claim_batch(1.0, SHORT) == [b"job0"]
    time.sleep(PAST_SHORT_S)
    claimed: dict[str, list[bytes]] = {}

    def steal(name: str) -> None:
        thief = shard(redis_client, name, max_batch_size=3)
        mine = claimed.setdefault(name, [])
        while True:
            batch = thief.claim_batch(0.2)
            if not batch:
                return
            mine.extend(batch)
            redis_client.delete(processing_key(name))  # committed

    threads = [threading.Thread(target=steal, args=(f"cpu{i}",)) for i in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    every = [job for jobs in claimed.values() for job in jobs]
    assert sorted(every) == sorted(f"job{i}".encode() for i in range(1, total))
    assert len(set(every)) == len(every) == total - 1


def test_the_enqueue_script_sends_new_jobs_to_an_overdue_shard_last(redis_client):
    late, _ = shard(redis_client, "cpu0"), shard(redis_client, "cpu1")
    fill(redis_client, "cpu0", 1)
    late.claim_batch(1.0, SHORT)
    time.sleep(PAST_SHORT_S)
    settings = Settings()
    api = ApiQueues(redis_client, settings.queue, settings.batching)
    pixels = np.zeros((2, 2, 3), dtype=np.uint8)

    def job() -> Job:
        return Job(new_job_id(), time.monotonic() + 10, time.monotonic(), 5, pixels)

    shards = [api.submit(job()) for _ in range(4)]
    assert shards == ["cpu1"] * 4  # round robin skips the overdue shard while another is on time
    off = Settings(queue=QueueSettings(steal=False))
    plain = ApiQueues(redis_client, off.queue, off.batching)
    assert {plain.submit(job()) for _ in range(4)} == {"cpu0", "cpu1"}  # stealing off: round robin as ever
    redis_client.hdel(SHARDS_KEY, "cpu1")
    api._shards_read_at = float("-inf")  # forget the cached shard list: only cpu0 is registered now
    assert api.submit(job()) == "cpu0"  # all late: still served
