"""The request's deadline, the one rule for every route that does inference: it counts from arrival.

nginx stamps each request with the time the complete request was in hand (daemon.ops.front_door's
ARRIVED_HEADER); time spent since, waiting for a free API thread, is the caller's time too. A request that
used its whole budget before a thread got to it is refused at once, before any decoding or queueing.
"""

from __future__ import annotations

import time

import falcon

from daemon.errors import Overloaded
from daemon.ops.front_door import ARRIVED_HEADER, deadline_from_arrival

LATE_RETRY_AFTER_S = 1.0
"""Retry-After of a request refused for having waited out its deadline: the backlog is of threads, not jobs."""


def arrival_deadline(req: falcon.Request, timeout_s: float) -> float:
    """The request's deadline on the monotonic clock, from its arrival at the front door; raises Overloaded
    (503) when it has already passed."""
    deadline = deadline_from_arrival(req.get_header(ARRIVED_HEADER), timeout_s, time.time(), time.monotonic())
    if deadline <= time.monotonic():
        raise Overloaded(
            f"the request waited its whole {timeout_s:g}s deadline for a free API thread; retry shortly",
            retry_after_s=LATE_RETRY_AFTER_S,
        )
    return deadline
