"""How long a shard's batches take, from its own recent history: when its batch in hand is overdue (idle
shards may take the jobs waiting behind it) and when it is wedged (the worker is restarted).

A batch's expected time is measured, never configured: the longest recent batch, or the longest recent time
per job times the jobs in hand, whichever is more (a batch of 32 after a run of single images is expected to
take longer, as it does on a CPU). Both limits are multiples of it with a floor:

- overdue: OVERDUE_FACTOR x expected, at least OVERDUE_FLOOR_S. Cheap to be wrong about: a slow batch only
  loses the jobs queued behind it to a shard with room in its next batch, and the enqueue script sends it
  new jobs last.
- wedged: STUCK_FACTOR x expected, at least STUCK_FLOOR_S (a real model's slowest warm batch stays well below
  it on any GPU), unless `queue.stuck_after_s` sets it. Until a batch has been timed (no warm-up measured,
  or a model just swapped in) UNTIMED_STUCK_AFTER_S applies, as nothing is known yet.

A shard whose batches all slow down (a throttled GPU, a bigger model) moves its own expectation along within
RECENT_BATCHES batches, so it keeps serving; only a batch far past the shard's own recent pace is wedged.
"""

from __future__ import annotations

import math
from collections import deque

from daemon.queue.faces import OverdueRule

RECENT_BATCHES = 32
"""Batches the expectation is taken over: enough to hold a burst's big batches, few enough to follow a slowdown."""
OVERDUE_FACTOR = 3.0
"""A batch running this many times its expected time is overdue: other shards take the jobs queued behind it."""
OVERDUE_FLOOR_S = 0.1
"""Shortest overdue limit, so scheduling jitter on a busy host does not hand jobs around needlessly."""
STUCK_FACTOR = 10.0
"""A batch running this many times its expected time is wedged (queue.stuck_after_s = 0)."""
STUCK_FLOOR_S = 1.0
"""Shortest derived wedge limit: above any warm batch of a real model on a GPU, well inside a request's
deadline (api.request_timeout_s, 10 s by default)."""
UNTIMED_STUCK_AFTER_S = 10.0
"""The wedge limit while no batch of the current model has been timed."""


class BatchPace:
    """The recent batches of one shard, as (jobs, seconds), and the limits they imply."""

    def __init__(self, stuck_after_s: float = 0.0) -> None:
        self._configured_stuck_after_s = stuck_after_s
        self._recent: deque[tuple[int, float]] = deque(maxlen=RECENT_BATCHES)

    def record(self, jobs: int, seconds: float) -> None:
        """One batch of `jobs` jobs ran in `seconds` (the warm-up's largest batch counts as one)."""
        if jobs > 0:
            self._recent.append((jobs, seconds))

    def forget(self) -> None:
        """Start again (a new model computes from now on: the old one's times say nothing of it)."""
        self._recent.clear()

    @property
    def timed(self) -> bool:
        return bool(self._recent)

    def _longest_s(self) -> float:
        return max((seconds for _, seconds in self._recent), default=0.0)

    def _per_job_s(self) -> float:
        return max((seconds / jobs for jobs, seconds in self._recent), default=0.0)

    def expected_s(self, jobs: int) -> float:
        """How long a batch of `jobs` jobs should take, by this shard's recent batches."""
        return max(self._longest_s(), self._per_job_s() * jobs)

    def overdue_after_s(self, jobs: int) -> float:
        return max(OVERDUE_FLOOR_S, OVERDUE_FACTOR * self.expected_s(jobs))

    def stuck_after_s(self, jobs: int) -> float:
        if self._configured_stuck_after_s > 0:
            return self._configured_stuck_after_s
        if not self.timed:
            return UNTIMED_STUCK_AFTER_S
        return max(STUCK_FLOOR_S, STUCK_FACTOR * self.expected_s(jobs))

    def overdue_rule(self) -> OverdueRule:
        """`overdue_after_s` as the claim script computes it from the jobs held (the two terms of the max)."""
        floor_s = max(OVERDUE_FLOOR_S, OVERDUE_FACTOR * self._longest_s())
        return OverdueRule(math.ceil(floor_s * 1000), OVERDUE_FACTOR * self._per_job_s() * 1000)
