"""supervisord event listener: the moment a worker process exits, its shard stops getting jobs.

A worker that dies without its teardown (SIGKILL, a crash in native code, the OOM killer) leaves a heartbeat
that lives on for up to `queue.heartbeat_ttl_s`, during which the dispatcher would keep sending it jobs.
supervisord knows at once, so this listener, subscribed to PROCESS_STATE_EXITED and _FATAL, removes the
dead shard's heartbeat and hands the jobs waiting on its queue and in its processing list to the live shard
with the shortest queue (`ShardQueues.adopt`, which also marks the adoption, so a restarted worker forgets
it). With no live shard left, the jobs stay where they are for the restarted worker to take.

A worker that finds its model call wedged leaves at once (`os._exit`), but on a GPU box the call may hold
it in the kernel, where even exit waits. So on every TICK_5 the listener also looks for shards whose
registry says "stuck" while the worker that said so (started before the wedged batch) still runs: after
EXIT_GRACE_S it is sent SIGKILL through supervisord, and if it is still there DEVICE_GONE_AFTER_S later the
shard is marked failed (its device did not come back: reset the GPU or reboot), with its jobs handed on.

The protocol is supervisor's: READY on stdout, one event on stdin, RESULT back; stdout belongs to the
protocol, so this process logs to stderr.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import xmlrpc.client
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

import redis
from supervisor import childutils

from daemon.logs import setup_logging
from daemon.queue.connection import connect
from daemon.queue.faces import ShardQueues
from daemon.queue.keys import heartbeat_key
from daemon.queue.registry import read_shards
from daemon.queue.wire import FAILED, STUCK
from daemon.settings import Settings, load_settings
from daemon.shard import SHARDS_ENV, Shard, decode_shards

log = logging.getLogger(__name__)

WORKER_GROUP = "worker"
"""The supervisord program whose processes are shard workers (worker-<shard index>)."""
WATCHED_EVENTS = frozenset({"PROCESS_STATE_EXITED", "PROCESS_STATE_FATAL"})
TICK_EVENT = "TICK_5"
EXIT_GRACE_S = 5.0
"""How long a worker that declared itself stuck (and so called exit) may still run before it gets SIGKILL."""
DEVICE_GONE_AFTER_S = 30.0
"""How long after that SIGKILL a stuck worker may still run before its shard is marked failed."""


@dataclass
class StuckExits:
    """Stuck workers seen still running (shard -> monotonic time first seen), and those sent SIGKILL."""

    seen: dict[str, float] = field(default_factory=dict)
    killed: dict[str, float] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)

    def forget(self, shard: str) -> None:
        self.seen.pop(shard, None)
        self.killed.pop(shard, None)
        self.failed.discard(shard)

    def next_step(self, shard: str, now: float) -> str | None:
        """ "kill", "fail" or None for a stuck shard whose worker still runs at `now`."""
        first = self.seen.setdefault(shard, now)
        killed = self.killed.get(shard)
        if killed is None:
            return "kill" if now - first >= EXIT_GRACE_S else None
        if shard not in self.failed and now - killed >= DEVICE_GONE_AFTER_S:
            return "fail"
        return None


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


def enforce_stuck_exits(
    client: redis.Redis,
    settings: Settings,
    shards: list[Shard],
    supervisor: Any,
    exits: StuckExits,
    now: float,
) -> None:
    """SIGKILL a worker still running EXIT_GRACE_S after it declared its shard stuck; mark the shard failed
    if it still runs DEVICE_GONE_AFTER_S after that. `supervisor` is supervisord's RPC namespace; `now` the
    monotonic time."""
    states = {state.shard: state for state in read_shards(client)}
    for index, shard in enumerate(shards):
        state = states.get(shard.shard_id)
        info = state.info if state is not None else None
        name = f"{WORKER_GROUP}:{WORKER_GROUP}-{index}"
        process = supervisor.getProcessInfo(name) if state is not None and state.status == STUCK else None
        # The worker that declared the wedge began its batch after it started; a restarted one starts after.
        if (
            info is None
            or info.since is None
            or process is None
            or process["statename"] != "RUNNING"
            or (process["start"] > info.since)
        ):
            exits.forget(shard.shard_id)
            continue
        step = exits.next_step(shard.shard_id, now)
        if step == "kill":
            log.error(
                "shard_watch: worker of %s (pid %s) declared itself stuck but has not exited in %.0fs; "
                "sending SIGKILL",
                shard.shard_id,
                process["pid"],
                EXIT_GRACE_S,
            )
            supervisor.signalProcess(name, "KILL")
            exits.killed[shard.shard_id] = now
        elif step == "fail":
            reason = (
                f"its worker (pid {process['pid']}) is stuck in the model call and did not exit within "
                f"{DEVICE_GONE_AFTER_S:.0f}s of SIGKILL: the device does not come back (a driver fault); "
                "reset the GPU or reboot the box"
            )
            log.error("shard_watch: %s FAILED: %s", shard.shard_id, reason)
            queues = ShardQueues(client, shard.shard_id, settings)
            queues.mark_failed(replace(info, state=FAILED, reason=reason))
            retire_shard(client, settings, shard.shard_id)
            exits.failed.add(shard.shard_id)


def listen(
    settings: Settings, shards: list[Shard], stdin: TextIO, stdout: TextIO, supervisor: Any = None
) -> None:
    """Serve supervisord's events forever (supervisord restarts us if we exit)."""
    client = connect(settings, socket_timeout_s=5.0)
    exits = StuckExits()
    while True:
        headers, body = childutils.listener.wait(stdin, stdout)
        try:
            if headers.get("eventname") == TICK_EVENT and supervisor is not None:
                enforce_stuck_exits(client, settings, shards, supervisor, exits, time.monotonic())
            elif headers.get("eventname") in WATCHED_EVENTS:
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
        except (OSError, xmlrpc.client.Error) as exc:
            log.warning("shard_watch: supervisord did not answer (%s); trying again at the next tick", exc)
        childutils.listener.ok(stdout)


def main() -> int:
    setup_logging()
    settings = load_settings()
    encoded = os.environ.get(SHARDS_ENV)
    shards = decode_shards(encoded) if encoded else []
    supervisor = childutils.getRPCInterface(os.environ).supervisor
    listen(settings, shards, sys.stdin, sys.stdout, supervisor)
    return 0


if __name__ == "__main__":
    sys.exit(main())
