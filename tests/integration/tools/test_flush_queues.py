"""flush_queues against a real Redis: it empties inferd's queues, answers every dropped job, touches nothing else."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from daemon.errors import EXIT_FAILED, EXIT_OK, EXIT_REDIS_DOWN, EXIT_USAGE
from daemon.queue.keys import (
    DRAINING_KEY,
    SHARDS_KEY,
    UNREADY_KEY,
    draining_key,
    heartbeat_key,
    processing_key,
    queue_key,
    reply_key,
    stats_key,
)
from daemon.queue.wire import Job, Reply, new_job_id
from tools import flush_queues


def push_jobs(client, shard: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        job = Job(
            new_job_id(), time.monotonic() + 30, time.monotonic(), 5, np.zeros((32, 32, 3), dtype=np.uint8)
        )
        client.lpush(queue_key(shard), job.encode())
        ids.append(job.job_id)
    return ids


@pytest.fixture()
def busy_redis(redis_client):
    """Two registered shards with waiting jobs, one job in flight, and keys that must survive any flush."""
    for shard in ("cpu0", "cpu1"):
        redis_client.hset(SHARDS_KEY, shard, json.dumps({"kind": "cpu", "index": 0, "name": "CPU"}))
        redis_client.set(heartbeat_key(shard), json.dumps({"pid": 1}), ex=60)
        redis_client.lpush(stats_key(shard), json.dumps({"t": 0, "n": 1}))
    redis_client.lpush(processing_key("cpu0"), b"claimed job")
    redis_client.lpush(reply_key("earlier"), b'{"shard":"cpu0","predictions":[]}')
    # Another application sharing this Redis, including names that look like ours.
    redis_client.set("billing:invoice:42", "paid")
    redis_client.lpush("queue:cpu0", "someone else's queue")
    redis_client.lpush("inferd-other:queue:cpu0", "not ours either")
    return redis_client


def untouched_keys(client) -> dict[bytes, object]:
    """Every key other than inferd's queues, with its value (lists and strings are all this test writes)."""
    keys = sorted(key for key in client.keys("*") if not key.startswith(b"inferd:queue:"))
    return {
        key: client.lrange(key, 0, -1) if client.type(key) == b"list" else client.dump(key) for key in keys
    }


def flush(capsys, settings, *args: str) -> tuple[int, str]:
    code = flush_queues.main(["--config", str(settings.source), *args])
    return code, capsys.readouterr().out


def test_dry_run_counts_and_drops_nothing(redis_settings, busy_redis, capsys):
    push_jobs(busy_redis, "cpu0", 3)
    push_jobs(busy_redis, "cpu1", 2)
    before = untouched_keys(busy_redis)
    code, out = flush(capsys, redis_settings, "--purge", "--dry-run")
    assert code == EXIT_OK
    lines = out.splitlines()
    assert lines[1].split() == ["cpu0", "3", "1"] and lines[2].split() == ["cpu1", "2", "0"]
    assert "5 queued job(s) would be dropped" in lines[-1]
    assert (busy_redis.llen(queue_key("cpu0")), busy_redis.llen(queue_key("cpu1"))) == (3, 2)
    assert untouched_keys(busy_redis) == before


def test_flush_empties_every_queue_answers_each_caller_and_keeps_other_keys(
    redis_settings, busy_redis, capsys
):
    dropped = push_jobs(busy_redis, "cpu0", 3) + push_jobs(busy_redis, "cpu1", 2)
    before = untouched_keys(busy_redis)
    code, out = flush(capsys, redis_settings, "--purge")
    assert code == EXIT_OK
    assert "dropped 5 queued job(s)" in out.splitlines()[-1]
    assert busy_redis.keys("inferd:queue:*") == []
    # Each caller's answer is waiting on its reply key, saying why in words, and expires if nobody takes it.
    for job_id in dropped:
        assert 0 < busy_redis.ttl(reply_key(job_id)) <= redis_settings.queue.answer_ttl_s
        reply = Reply.decode(busy_redis.lpop(reply_key(job_id)))
        assert reply.error_kind == "JobDropped"
        assert reply.error_message == flush_queues.DROP_MESSAGE
    after = untouched_keys(busy_redis)
    replies = {reply_key(job_id).encode() for job_id in dropped}
    assert {key: value for key, value in after.items() if key not in replies} == before


def test_one_shard_only_and_an_unknown_shard(redis_settings, busy_redis, capsys):
    push_jobs(busy_redis, "cpu0", 3)
    push_jobs(busy_redis, "cpu1", 2)
    code, out = flush(capsys, redis_settings, "--purge", "--shard", "cpu1", "--json")
    assert code == EXIT_OK
    assert json.loads(out) == {"dry_run": False, "shards": [{"shard": "cpu1", "queued": 2, "in_flight": 0}]}
    assert (busy_redis.llen(queue_key("cpu0")), busy_redis.llen(queue_key("cpu1"))) == (3, 0)

    code = flush_queues.main(["--config", str(redis_settings.source), "--purge", "--shard", "gpu7"])
    assert code == EXIT_USAGE
    assert "no such shard gpu7; known: cpu0, cpu1" in capsys.readouterr().err
    assert busy_redis.llen(queue_key("cpu0")) == 3


def test_a_queue_of_a_shard_no_longer_registered_is_flushed_too(redis_settings, busy_redis, capsys):
    push_jobs(busy_redis, "gpu3", 2)  # e.g. a GPU taken out of devices.gpus since
    code, out = flush(capsys, redis_settings, "--purge")
    assert code == EXIT_OK
    assert any(line.split() == ["gpu3", "2", "0"] for line in out.splitlines())
    assert busy_redis.llen(queue_key("gpu3")) == 0


def test_unreachable_redis_exits_3(make_settings, tmp_path, capsys):
    settings = make_settings(redis={"managed": False, "socket": str(tmp_path / "nobody.sock")})
    assert flush_queues.main(["--config", str(settings.source), "--purge"]) == EXIT_REDIS_DOWN
    assert "is unreachable" in capsys.readouterr().err


def test_a_mode_is_required_and_the_usage_error_names_both(redis_settings, busy_redis, capsys):
    push_jobs(busy_redis, "cpu0", 2)
    with pytest.raises(SystemExit) as exit_:
        flush_queues.main(["--config", str(redis_settings.source)])
    assert exit_.value.code == EXIT_USAGE
    assert "one of the arguments --purge --drain is required" in capsys.readouterr().err
    assert busy_redis.llen(queue_key("cpu0")) == 2  # nothing was done


def test_drain_of_a_shard_admits_nothing_there_and_waits_for_its_queue(redis_settings, busy_redis, capsys):
    """No worker runs here, so the drain times out with the jobs left and says so (exit 1)."""
    push_jobs(busy_redis, "cpu1", 2)
    code, out = flush(capsys, redis_settings, "--drain", "--shard", "cpu1", "--timeout", "0.3", "--json")
    assert code == EXIT_FAILED
    assert json.loads(out)["shards"] == [{"shard": "cpu1", "queued": 2, "in_flight": 0, "left": 2}]
    assert busy_redis.get(draining_key("cpu1")) == b"operator"
    assert busy_redis.get(DRAINING_KEY) is None and busy_redis.get(UNREADY_KEY) is None
