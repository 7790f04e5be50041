"""Dispatcher: puts each job on one live shard's queue, in one atomic Redis call shared by all API processes.

The choice, the backpressure check and the push happen inside one Lua script, so the rotation is global
(one counter in Redis, not one per gunicorn process), a shard whose worker has no fresh heartbeat gets
nothing, and a queue can never grow past `queue.max_depth` however many API threads race for it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import redis

from daemon.errors import NoLiveWorker, QueueFull, RedisUnavailable
from daemon.settings import Settings
from daemon.wire import ROTATION_KEY, SHARDS_KEY, as_text, heartbeat_key, queue_key

log = logging.getLogger(__name__)

SHARD_LIST_TTL_S = 1.0
"""How long an API process trusts its copy of the registered shard list before reading it again."""

NO_LIVE_SHARD = -1
ALL_QUEUES_FULL = -2

# KEYS: rotation counter, then (queue, heartbeat) per shard.  ARGV: job bytes, max depth, policy.
# Returns the chosen slot, NO_LIVE_SHARD or ALL_QUEUES_FULL.
ENQUEUE_SCRIPT = """
local shard_count = (#KEYS - 1) / 2
local max_depth = tonumber(ARGV[2])
local policy = ARGV[3]
-- Rotate over live shards only, so a dead shard's turn is not handed to its neighbour twice.
local live = {}
for slot = 0, shard_count - 1 do
  if redis.call('EXISTS', KEYS[3 + slot * 2]) == 1 then live[#live + 1] = slot end
end
if #live == 0 then return -1 end
local start = redis.call('INCR', KEYS[1])
local best_slot, best_depth = -1, max_depth
for offset = 0, #live - 1 do
  local slot = live[((start + offset) % #live) + 1]
  local depth = redis.call('LLEN', KEYS[2 + slot * 2])
  if depth < best_depth then
    best_slot, best_depth = slot, depth
    if policy == 'round_robin' then break end
  end
end
if best_slot < 0 then return -2 end
redis.call('LPUSH', KEYS[2 + best_slot * 2], ARGV[1])
return best_slot
"""


def shard_liveness(client: redis.Redis) -> dict[str, bool]:
    """Every registered shard, in order, and whether its worker has a fresh heartbeat (two round trips)."""
    shards = sorted(as_text(key) for key in client.hkeys(SHARDS_KEY))
    pipe = client.pipeline(transaction=False)
    for shard in shards:
        pipe.exists(heartbeat_key(shard))
    return {shard: bool(alive) for shard, alive in zip(shards, pipe.execute(), strict=True)}


@dataclass(frozen=True, slots=True)
class Placement:
    shard: str


class Dispatcher:
    """Picks a shard for each job: round-robin by default, or the shortest queue among live shards."""

    def __init__(self, settings: Settings, client: redis.Redis) -> None:
        self._client = client
        self._max_depth = settings.queue.max_depth
        self._policy = settings.queue.dispatch
        self._script = client.register_script(ENQUEUE_SCRIPT)
        self._lock = threading.Lock()
        self._shards: list[str] = []
        self._shards_read_at = float("-inf")

    def registered_shards(self) -> list[str]:
        """Shard ids workers have registered, cached for SHARD_LIST_TTL_S."""
        with self._lock:
            if time.monotonic() - self._shards_read_at < SHARD_LIST_TTL_S:
                return self._shards
        shards = sorted(as_text(key) for key in self._client.hkeys(SHARDS_KEY))
        with self._lock:
            self._shards, self._shards_read_at = shards, time.monotonic()
        return shards

    def pick_and_push(self, payload: bytes) -> Placement:
        """Push one encoded job onto a live shard's queue, or raise the 503 that says why not."""
        try:
            shards = self.registered_shards()
            if not shards:
                raise NoLiveWorker("no worker has registered yet; the appliance is starting")
            keys = [ROTATION_KEY]
            for shard in shards:
                keys += [queue_key(shard), heartbeat_key(shard)]
            slot = int(self._script(keys=keys, args=[payload, self._max_depth, self._policy]))
        except redis.RedisError as exc:
            raise RedisUnavailable(f"queue service unavailable: {exc}") from exc
        if slot == NO_LIVE_SHARD:
            raise NoLiveWorker("no live worker: every shard's heartbeat is stale")
        if slot == ALL_QUEUES_FULL:
            raise QueueFull(
                f"all {len(shards)} shard queue(s) are full ({self._max_depth} jobs each); retry shortly"
            )
        return Placement(shard=shards[slot])
