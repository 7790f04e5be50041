"""Handing answers back: every reply goes to its job's own key with a TTL, so nothing outlives its caller."""

from __future__ import annotations

from collections.abc import Mapping

import redis

from daemon.errors import InferdError
from daemon.wire import STATS_WINDOW, Job, Reply, WireError, processing_key, queue_key, reply_key, stats_key

# KEYS: queue. Takes every waiting job off a queue in one atomic step.
TAKE_ALL_SCRIPT = """
local jobs = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return jobs
"""


# KEYS: the shard's processing list, its stats list, then one reply key per answer.
# ARGV: ttl, release the claims ('1' or '0'), stats record ('' for none), stats window, then one encoded reply
# per reply key. One script call instead of a MULTI of two commands per job: it is atomic all the same, and
# far cheaper for the worker and Redis to pack and parse. Nothing it moves is ever evaluated.
ANSWER_SCRIPT = """
for i = 3, #KEYS do
  redis.call('LPUSH', KEYS[i], ARGV[i + 2])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
if ARGV[3] ~= '' then
  redis.call('LPUSH', KEYS[2], ARGV[3])
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[4]) - 1)
end
if ARGV[2] == '1' then redis.call('DEL', KEYS[1]) end
return #KEYS - 2
"""


def answer_jobs(
    client: redis.Redis,
    shard: str,
    replies: Mapping[str, Reply],
    ttl_s: float,
    release_claims: bool,
    stats_record: str = "",
) -> None:
    """In one atomic step: push each reply on its job's key (expiring after `ttl_s`), optionally release
    the shard's claims (the batch is answered), and record the batch for tools/gpu_status."""
    keys = [processing_key(shard), stats_key(shard), *(reply_key(job_id) for job_id in replies)]
    args: list[str | bytes | int] = [max(1, int(ttl_s)), "1" if release_claims else "0", stats_record]
    args += [STATS_WINDOW, *(reply.encode() for reply in replies.values())]
    client.register_script(ANSWER_SCRIPT)(keys=keys, args=args)


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
        answer_jobs(client, shard, replies, ttl_s, release_claims=False)
    return len(payloads)
