"""Readiness: the one rule for "should a balancer send this box work now", and the three routes that ask it.

`GET /readyz`, `GET /v2/health/ready` and `GET /v2/models/{name}/ready` answer the same question, so each
calls `readiness`: ready when Redis answers, a shard is live and admits work, and no drain mark is set. A box
that `inferd drain` or a shutdown is taking out is not ready on any of them, though its shards still live.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import falcon
import redis

from daemon.dispatcher import Dispatch
from daemon.http.auth import bearer_matches
from daemon.queue.registry import DrainState, no_worker_reason
from daemon.queue.wire import LIVE

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Readiness:
    """What the shards and the drain marks say now; `reason` is None when the box is ready."""

    reason: str | None
    shards: dict[str, str]
    """Every registered shard -> its status word (daemon.queue.wire.SHARD_STATUSES)."""
    failed: dict[str, str]
    drain: DrainState
    reachable: bool = True
    """False when Redis did not answer: nothing else could be read."""

    @property
    def ready(self) -> bool:
        return self.reason is None

    @property
    def live(self) -> list[str]:
        return [shard for shard, status in self.shards.items() if status == LIVE]

    @property
    def http_status(self) -> str:
        return falcon.HTTP_200 if self.ready else falcon.HTTP_503


def readiness(dispatcher: Dispatch, route: str) -> Readiness:
    """The box's readiness, read from Redis in the dispatcher's round trips; not ready when Redis is not
    reachable (`route` names the asker in the log line)."""
    try:
        shards = dispatcher.shard_status()
        failed = dispatcher.failures()
        drain = dispatcher.drain_state()
    except redis.RedisError as exc:
        log.warning("api: %s: Redis unreachable: %s", route, exc)
        return Readiness("Redis unreachable", {}, {}, DrainState(), reachable=False)
    live = [shard for shard, status in shards.items() if status == LIVE]
    return Readiness(not_ready_reason(live, drain, failed), shards, failed, drain)


def not_ready_reason(live: list[str], drain: DrainState, failed: dict[str, str] | None = None) -> str | None:
    """Why a balancer should send this box nothing now, or None when it should."""
    # The drain marks come first: a box on its way out must read as not ready even while its shards live.
    if drain.unready is not None:
        return f"draining ({drain.unready}): finishing what it holds, send new work elsewhere"
    if drain.box is not None:
        return f"drained ({drain.box}): admits no new work until `inferd undrain`"
    if not live:
        return no_worker_reason(failed or {})
    if all(shard in drain.shards for shard in live):
        return "every live shard is drained"
    return None


HIDDEN_DETAIL = "failed (the reason is shown with the bearer token, and in the worker's log)"
"""What /readyz says of a failed shard to a caller without the token: reasons name files and exceptions."""


class ReadyResource:
    """`GET /readyz`: the readiness with what it was read from (shards, failures, drained shards); with a token
    set, why a shard failed only for the token's holders."""

    def __init__(self, dispatcher: Dispatch, token: str | None = None) -> None:
        self._dispatcher = dispatcher
        self._token = token

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        found = readiness(self._dispatcher, "/readyz")
        resp.status = found.http_status
        if not found.reachable:
            resp.media = {"ready": False, "reason": found.reason}
            return
        failed, reason = found.failed, found.reason
        if self._token is not None and not bearer_matches(req, self._token):
            failed = dict.fromkeys(failed, HIDDEN_DETAIL)
            reason = not_ready_reason(found.live, found.drain, failed)
        resp.media = {
            "ready": found.ready,
            "live_shards": found.live,
            "registered_shards": list(found.shards),
            "shards": found.shards,
            "failed_shards": failed,
        }
        if found.drain.shards:
            resp.media["draining_shards"] = sorted(found.drain.shards)
        if reason is not None:
            resp.media["reason"] = reason

    # Load balancers (HAProxy's default check among them) probe with HEAD: same status, no body.
    on_head = on_get
