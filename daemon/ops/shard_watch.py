"""supervisord event listener: the moment a worker process exits, its shard stops getting jobs.

A worker that dies without its teardown (SIGKILL, a crash in native code, the OOM killer) leaves a heartbeat
that lives on for up to `queue.heartbeat_ttl_s`, during which the dispatcher would keep sending it jobs.
supervisord knows at once, so this listener, subscribed to PROCESS_STATE_EXITED and _FATAL, removes the
dead shard's heartbeat and hands the jobs waiting on its queue and in its processing list to the live shard
with the shortest queue (`ShardQueues.adopt`, which also marks the adoption, so a restarted worker forgets
it). With no live shard left, the jobs stay where they are for the restarted worker to take.

The protocol is supervisor's: READY on stdout, one event on stdin, RESULT back; stdout belongs to the
protocol, so this process logs to stderr.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType
from typing import TextIO

import redis
from supervisor import childutils

from daemon.logs import setup_logging
from daemon.queue.connection import connect
from daemon.queue.faces import ShardQueues
from daemon.queue.keys import heartbeat_key
from daemon.queue.registry import read_shards
from daemon.settings import Settings, load_settings
from daemon.shard import SHARDS_ENV, Shard, decode_shards

log = logging.getLogger(__name__)

WORKER_GROUP = "worker"
"""The supervisord program whose processes are shard workers (worker-<shard index>)."""
WATCHED_EVENTS = frozenset({"PROCESS_STATE_EXITED", "PROCESS_STATE_FATAL"})


def shard_of(payload: dict[str, str], shards: list[Shard]) -> Shard | None:
    """The shard a worker process served, from an event's `groupname` and `processname` (worker-N)."""
    if payload.get("groupname") != WORKER_GROUP:
        return None
    _, _, index = payload.get("processname", "").rpartition("-")
    if not index.isdigit() or int(index) >= len(shards):
        return None
    return shards[int(index)]


def retire_shard(client: redis.Redis, settings: Settings, dead: str) -> tuple[str | None, int]:
    """Stop dispatch to `dead` and give its waiting and claimed jobs to the live shard with the shortest queue.
    Returns (the adopting shard or None, jobs moved)."""
    client.delete(heartbeat_key(dead))
    live = [state for state in read_shards(client) if state.live and state.shard != dead]
    if not live:
        return None, 0
    heir = min(live, key=lambda state: state.queue_depth + state.in_flight).shard
    return heir, ShardQueues(client, heir, settings).adopt(dead)


def listen(settings: Settings, shards: list[Shard], stdin: TextIO, stdout: TextIO) -> None:
    """Serve supervisord's events forever (supervisord restarts us if we exit)."""
    client = connect(settings, socket_timeout_s=5.0)
    while True:
        headers, body = childutils.listener.wait(stdin, stdout)
        try:
            if headers.get("eventname") in WATCHED_EVENTS:
                payload, _ = childutils.eventdata(body + "\n")
                shard = shard_of(payload, shards)
                if shard is not None:
                    heir, moved = retire_shard(client, settings, shard.shard_id)
                    log.warning(
                        "shard_watch: worker of %s %s (%s); no more jobs go to it%s",
                        shard.shard_id,
                        headers["eventname"].removeprefix("PROCESS_STATE_").lower(),
                        f"pid {payload.get('pid', '?')}",
                        f", {moved} waiting job(s) moved to {heir}" if moved else "",
                    )
        except redis.RedisError as exc:
            # Redis may be what went down; the heartbeat's expiry then does the same job, only later.
            log.warning("shard_watch: Redis unreachable (%s); the heartbeat's expiry will do", exc)
        childutils.listener.ok(stdout)


def leave(signum: int, frame: FrameType | None) -> None:
    """supervisord stops the listener with TERM, mostly while it waits for an event: leave with 0 (an event
    it was handling is redone by the heartbeat's expiry), so the stop reads `exit status 0`, not a WARN."""
    raise SystemExit(0)


def main() -> int:
    setup_logging()
    signal.signal(signal.SIGTERM, leave)
    settings = load_settings()
    encoded = os.environ.get(SHARDS_ENV)
    shards = decode_shards(encoded) if encoded else []
    listen(settings, shards, sys.stdin, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
