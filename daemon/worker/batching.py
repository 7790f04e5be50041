"""How a batch is formed: the one place to change it.

A batch fills until `batching.max_batch_size` jobs or `batching.max_wait_ms` after its first job, with the
remaining wait recomputed on the monotonic clock for every look (as MLServer does). The wait is only spent
when jobs are arriving together (the last batch, or what was already queued, had more than one): a lone
caller at low load would pay it in full and gain nothing.

The Redis moves are the shard's face's (daemon.queue.faces.ShardQueues): `claim_first` blocks for a first
job, `claim_waiting` takes what else waits in one Lua call (daemon.queue.scripts.CLAIM_WAITING_SCRIPT). Every
job claimed sits in the shard's processing list until the batch's answers are committed, so a worker that
dies mid-batch loses nothing.
"""

from __future__ import annotations

import time

from daemon.queue.faces import ShardQueues
from daemon.settings import BatchingSettings

GATHER_MIN_SLICE_S = 0.001
"""Shortest pause between looks for more jobs while a batch fills: about three looks per window."""


class Batcher:
    """Claims one shard's batches by the rule above; remembers the last batch's size (the load it saw)."""

    def __init__(self, queues: ShardQueues, batching: BatchingSettings) -> None:
        self.queues = queues
        self.max_batch_size = batching.max_batch_size
        self.max_wait_s = batching.max_wait_ms / 1000.0
        self._last_batch_size = self.max_batch_size  # assume company until a batch shows otherwise

    def claim_batch(self, idle_timeout_s: float) -> list[bytes]:
        """Block up to `idle_timeout_s` for a first job, then gather more until size or deadline."""
        first = self.queues.claim_first(idle_timeout_s)
        if first is None:
            return []
        batch: list[bytes] = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            batch.extend(self.queues.claim_waiting(self.max_batch_size - len(batch)))
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
