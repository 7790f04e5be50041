"""Claiming batches: move jobs atomically from a shard's queue into its processing list.

A job is never only in a worker's memory: BLMOVE/LMOVE put it in `processing:<shard>` in the same step that
takes it off the queue, so a worker killed mid-batch loses nothing; `requeue_orphans` puts such jobs back.
The batch fills until `max_batch_size` jobs or until `max_wait_ms` after the first job, whichever comes
first, with the remaining wait recomputed on the monotonic clock for every job (as MLServer does). The wait
is only spent when jobs are arriving together (the last batch, or what was already queued, had more than
one): a lone caller at low load would pay it in full and gain nothing.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from daemon.wire import processing_key, queue_key

GATHER_MIN_SLICE_S = 0.001
"""Shortest pause between looks for more jobs while a batch fills: about three looks per window."""

# KEYS: queue, processing. ARGV: how many. Moves up to that many jobs that are already waiting, in one trip.
CLAIM_WAITING_SCRIPT = """
local claimed = {}
for _ = 1, tonumber(ARGV[1]) do
  local job = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not job then break end
  claimed[#claimed + 1] = job
end
return claimed
"""

# KEYS: processing, queue. Orphaned claims go back to the end the worker pops from, so they run first.
REQUEUE_SCRIPT = """
local moved = 0
while true do
  local job = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not job then break end
  moved = moved + 1
end
return moved
"""


class BatchClaimer:
    """Claims batches for one shard."""

    def __init__(self, client: redis.Redis, shard: str, max_batch_size: int, max_wait_s: float) -> None:
        self._client = client
        self._queue = queue_key(shard)
        self._processing = processing_key(shard)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._last_batch_size = max_batch_size  # assume company until a batch shows otherwise
        self._claim_waiting = client.register_script(CLAIM_WAITING_SCRIPT)
        self._requeue = client.register_script(REQUEUE_SCRIPT)

    def claim_batch(self, idle_timeout_s: float) -> list[bytes]:
        """Block up to `idle_timeout_s` for a first job, then gather more until size or deadline."""
        first = self._blocking_claim(idle_timeout_s)
        if first is None:
            return []
        batch: list[bytes] = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            batch.extend(
                self._claim_waiting(
                    keys=[self._queue, self._processing], args=[self.max_batch_size - len(batch)]
                )
            )
            remaining = deadline - time.monotonic()
            alone = len(batch) == 1 and self._last_batch_size == 1
            if len(batch) >= self.max_batch_size or remaining <= 0 or alone:
                break
            # Wait in a few slices rather than with BLMOVE: an idle Redis checks blocked clients' timeouts
            # only every 1000/hz ms (100 ms by default), which would stretch a 5 ms window twentyfold. Each
            # look takes every job that arrived meanwhile in one round trip.
            time.sleep(max(remaining / 2, min(remaining, GATHER_MIN_SLICE_S)))
        self._last_batch_size = len(batch)
        return batch

    def _blocking_claim(self, timeout_s: float) -> bytes | None:
        # Sent raw: Redis takes a fractional timeout here, which redis-py's typed blmove() does not admit.
        command: Any = self._client.execute_command
        job: bytes | None = command("BLMOVE", self._queue, self._processing, "RIGHT", "LEFT", timeout_s)
        return job

    def requeue_orphans(self) -> int:
        """Put claims left in this shard's processing list (by a killed worker) back on its queue."""
        return int(self._requeue(keys=[self._processing, self._queue]))


def adopt_orphans(client: redis.Redis, dead_shard: str, into_shard: str) -> int:
    """Move a dead shard's claimed and queued jobs onto a live shard's queue, ahead of its own (they are
    older), in their original order: claims first, then the queue; one round trip per list."""
    requeue = client.register_script(REQUEUE_SCRIPT)
    # Each move lands at the end the worker pops from, so the list moved last runs first: the claims.
    moved = int(requeue(keys=[queue_key(dead_shard), queue_key(into_shard)]))
    return moved + int(requeue(keys=[processing_key(dead_shard), queue_key(into_shard)]))
