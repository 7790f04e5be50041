"""How a batch is formed: the one place to change it.

A batch fills until `batching.max_batch_size` jobs or `batching.max_wait_ms` after its first job, with the
remaining wait recomputed on the monotonic clock for every look (as MLServer does). The wait is only spent
when jobs are arriving together (the last batch, or what was already queued, had more than one): a lone
caller at low load would pay it in full and gain nothing.

The Redis moves are the shard's face's (daemon.queue.faces.ShardQueues): `claim_first` blocks for a first
job, `claim_waiting` takes what else waits in one Lua call (daemon.queue.scripts.CLAIM_SCRIPT). Every job
claimed sits in the shard's processing list until the batch's answers are committed, so a worker that dies
mid-batch loses nothing.

Work stealing (`queue.steal`): a shard starting a batch fills the room its own queue leaves with the jobs
waiting behind another shard's overdue batch (daemon.worker.pace), in the same Lua call that claims its own.
So while idle it blocks on its own queue in slices of STEAL_LOOK_S, and looks between them; once a batch is
in hand it only gathers its own.
"""

from __future__ import annotations

import time

from daemon.queue.faces import OverdueRule, ShardQueues
from daemon.settings import BatchingSettings

GATHER_MIN_SLICE_S = 0.001
"""Shortest pause between looks for more jobs while a batch fills: about three looks per window."""
STEAL_LOOK_S = 0.1
"""How often an idle shard that may steal looks for an overdue shard's waiting jobs (between blocking waits
on its own queue, which a new job ends at once)."""


class Batcher:
    """Claims one shard's batches by the rule above; remembers the last batch's size (the load it saw)."""

    def __init__(self, queues: ShardQueues, batching: BatchingSettings) -> None:
        self.queues = queues
        self.max_batch_size = batching.max_batch_size
        self.max_wait_s = batching.max_wait_ms / 1000.0
        self._last_batch_size = self.max_batch_size  # assume company until a batch shows otherwise
        self.stolen_from: str | None = None
        """The shard whose waiting jobs the last batch took, or None when all were our own."""
        self.stolen = 0
        """How many of the last batch's jobs were taken from `stolen_from`."""

    def claim_batch(self, idle_timeout_s: float, overdue: OverdueRule | None = None) -> list[bytes]:
        """Block up to `idle_timeout_s` for a first job (our own, or, while idle, an overdue shard's), then
        gather more until size or deadline; the batch is on time for as long as `overdue` gives it."""
        overdue = overdue or OverdueRule()
        self.stolen_from, self.stolen = None, 0
        batch = self._claim_waiting(self.max_batch_size, overdue, steal=True)
        idle_until = time.monotonic() + idle_timeout_s
        while not batch:
            left = idle_until - time.monotonic()
            if left <= 0:
                return []
            may_steal = self.queues.steal and self.queues.peer_shards()
            first = self.queues.claim_first(min(left, STEAL_LOOK_S) if may_steal else left)
            # One claim call either way: it sets the on-time mark for what we now hold, or looks to steal.
            more = self._claim_waiting(
                self.max_batch_size - (first is not None), overdue, steal=first is None
            )
            batch = ([first] if first is not None else []) + more
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            alone = len(batch) == 1 and self._last_batch_size == 1
            if remaining <= 0 or alone:
                break
            # Wait in a few slices rather than with BLMOVE: an idle Redis checks blocked clients' timeouts
            # only every 1000/hz ms (100 ms by default), which would stretch a 5 ms window twentyfold. Each
            # look takes every job that arrived meanwhile in one round trip.
            time.sleep(max(remaining / 2, min(remaining, GATHER_MIN_SLICE_S)))
            batch.extend(self._claim_waiting(self.max_batch_size - len(batch), overdue, steal=False))
        self._last_batch_size = len(batch)
        return batch

    def _claim_waiting(self, count: int, overdue: OverdueRule, steal: bool) -> list[bytes]:
        jobs = self.queues.claim_waiting(count, overdue, steal)
        if self.queues.stolen_from is not None:
            self.stolen_from, self.stolen = self.queues.stolen_from, self.queues.stolen
        return jobs
