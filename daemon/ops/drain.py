"""Draining: take a box, or some of its shards, out of service without failing a request.

A box drains in this order, whether an operator asks (`inferd drain`) or the appliance is stopping (SIGTERM
to supervisord):

1. `inferd:unready` is set: /readyz answers 503, so a balancer's health checks move new traffic to other
   boxes, while this box still admits and answers what it is sent (requests the balancer sent before it
   noticed are served, not failed).
2. After `api.drain_grace_s` (a few health-check intervals: HAProxy needs `fall` failed checks, `inter`
   apart, to mark the box down):
   - `inferd drain` sets `inferd:draining`: the enqueue script admits nothing more (503 with Retry-After,
     which a balancer retries on another box) and the workers finish what is queued; `inferd undrain`
     removes the marks.
   - a shutdown: the guard below, the program supervisord stops first, exits; supervisord then stops the API
     (gunicorn answers the requests it holds, which the still running workers finish), then the workers
     (their queues are empty by then), then Redis.

A shard drain (`--shard`) only sets `inferd:draining:<shard>`: the enqueue script skips the shard, which
finishes its queue, and the box stays ready while another of its shards admits.

`python -m daemon.ops.drain` is that guard: a supervisord program that waits for its SIGTERM, then does step 1
and waits the grace. Keys are described in `daemon.queue.keys`' table.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from daemon.logs import setup_logging
from daemon.queue.connection import connect
from daemon.queue.keys import DRAINING_KEY, UNREADY_KEY, draining_key, processing_key, queue_key
from daemon.queue.registry import known_shards
from daemon.queue.wire import as_text
from daemon.settings import load_settings

log = logging.getLogger(__name__)

SHUTDOWN = "shutdown"
"""The reason the guard writes; the guard of the next run clears a mark with this reason."""
OPERATOR = "operator"
SHUTDOWN_MARK_SLACK_S = 60.0
"""How long the guard's mark outlives its grace: long enough for the API to stop, short enough that a
crash leaves no box unready for long on an external Redis (the managed Redis starts empty)."""
DRAIN_POLL_S = 0.2


@dataclass(frozen=True, slots=True)
class ShardDrain:
    shard: str
    queued: int
    """Jobs waiting when admission closed: each is run and answered."""
    in_flight: int
    """Jobs a worker had claimed when admission closed."""
    left: int
    """Jobs still waiting or claimed when the drain returned (0 unless it timed out)."""


def mark_unready(client: redis.Redis, reason: str, ttl_s: float | None = None) -> None:
    """Make /readyz answer 503 (step 1); the box still admits work."""
    client.set(UNREADY_KEY, reason, px=None if ttl_s is None else int(ttl_s * 1000))


def close_admission(client: redis.Redis, reason: str, shards: Sequence[str] | None) -> None:
    """Admit nothing more to `shards`, or to the whole box when None (step 2)."""
    keys = [DRAINING_KEY] if shards is None else [draining_key(shard) for shard in shards]
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.set(key, reason)
    pipe.execute()


def undrain(client: redis.Redis, shards: Sequence[str] | None) -> int:
    """Remove the drain marks of `shards`, or every mark (box and shards) when None; returns how many."""
    if shards is None:
        shards = known_shards(client)
        keys = [UNREADY_KEY, DRAINING_KEY, *(draining_key(shard) for shard in shards)]
    else:
        keys = [draining_key(shard) for shard in shards]
    return int(client.delete(*keys)) if keys else 0


def _pending(client: redis.Redis, shards: Sequence[str]) -> dict[str, tuple[int, int]]:
    pipe = client.pipeline(transaction=False)
    for shard in shards:
        pipe.llen(queue_key(shard))
        pipe.llen(processing_key(shard))
    counts = iter(pipe.execute())
    return {shard: (int(next(counts)), int(next(counts))) for shard in shards}


def drain(
    client: redis.Redis,
    shards: Sequence[str] | None,
    grace_s: float,
    timeout_s: float,
    say: Callable[[str], None] = log.info,
) -> list[ShardDrain]:
    """Drain the box (`shards` None: readiness first, admission after `grace_s`) or some shards, then wait up
    to `timeout_s` until what they held is answered."""
    if shards is None:
        mark_unready(client, OPERATOR)
        if grace_s > 0:
            say(f"/readyz answers 503 now; waiting {grace_s:g}s for load balancers to move away")
            time.sleep(grace_s)
    close_admission(client, OPERATOR, shards)
    targets = known_shards(client) if shards is None else list(shards)
    at_close = _pending(client, targets)
    say(
        f"admission closed on {'the box' if shards is None else ', '.join(targets)}; finishing what is queued"
    )
    deadline = time.monotonic() + timeout_s
    left = at_close
    while any(queued or claimed for queued, claimed in left.values()) and time.monotonic() < deadline:
        time.sleep(DRAIN_POLL_S)
        left = _pending(client, targets)
    return [ShardDrain(shard, at_close[shard][0], at_close[shard][1], sum(left[shard])) for shard in targets]


# -- the shutdown guard ---------------------------------------------------------------------------------------
def guard(client: redis.Redis, grace_s: float, wait_for_stop: Callable[[], None]) -> None:
    """Wait for the stop signal, then make /readyz answer 503 and hold the API's stop back for `grace_s`."""
    try:
        mark = client.get(UNREADY_KEY)
        if mark is not None and as_text(mark) == SHUTDOWN:
            client.delete(UNREADY_KEY)  # a previous run's shutdown, on an external Redis
            log.info("drain: cleared the previous run's shutdown mark")
    except redis.RedisError as exc:
        log.warning("drain: Redis unreachable at start (%s)", exc)
    supervisord = os.getppid()
    wait_for_stop()
    if os.getppid() != supervisord:
        # supervisord was killed and its programs got SIGTERM all at once (the parent-death signal): the API
        # is stopping already, and a grace would only hold up the next appliance's start.
        log.warning("drain: supervisord is gone; leaving without a grace")
        return
    try:
        mark_unready(client, SHUTDOWN, ttl_s=grace_s + SHUTDOWN_MARK_SLACK_S)
    except redis.RedisError as exc:
        # Without Redis /readyz already answers 503: the grace would only delay the stop.
        log.warning("drain: could not mark the box unready (%s); stopping without a grace", exc)
        return
    log.info("drain: /readyz answers 503; the API keeps serving for %.1fs, then stops", grace_s)
    time.sleep(grace_s)


def main() -> int:
    setup_logging()
    settings = load_settings()
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    # Blocked and taken with sigwait: no handler, so the mark is set the moment the signal comes.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)

    def wait_for_stop() -> None:
        signal.sigwait(stop_signals)

    guard(connect(settings, socket_timeout_s=5.0), settings.api.drain_grace_s, wait_for_stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
