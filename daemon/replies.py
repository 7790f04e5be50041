"""Handing answers back: every reply goes to its job's own key with a TTL, so nothing outlives its caller."""

from __future__ import annotations

from collections.abc import Mapping

import redis

from daemon.errors import InferdError
from daemon.wire import Job, Reply, WireError, queue_key, reply_key

# KEYS: queue. Takes every waiting job off a queue in one atomic step.
TAKE_ALL_SCRIPT = """
local jobs = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return jobs
"""


def queue_replies(pipe: redis.client.Pipeline, replies: Mapping[str, Reply], ttl_s: float) -> None:
    """Add each reply to `pipe`: pushed on its job's reply key, which expires if nobody collects it."""
    ttl = max(1, int(ttl_s))
    for job_id, reply in replies.items():
        pipe.lpush(reply_key(job_id), reply.encode())
        pipe.expire(reply_key(job_id), ttl)


def fail_queued(client: redis.Redis, shard: str, error: InferdError, ttl_s: float) -> int:
    """Drop every job waiting on `shard`'s queue and answer each caller at once with `error`."""
    payloads = client.register_script(TAKE_ALL_SCRIPT)(keys=[queue_key(shard)])
    replies: dict[str, Reply] = {}
    for payload in payloads:
        try:
            replies[Job.peek_id(payload)] = Reply.failure(shard, error)
        except WireError:
            continue  # nothing to answer: not a job of ours
    if replies:
        pipe = client.pipeline(transaction=False)
        queue_replies(pipe, replies, ttl_s)
        pipe.execute()
    return len(payloads)
