"""shard_watch's bound on a stuck worker that does not exit: SIGKILL after EXIT_GRACE_S, the shard marked
failed (its jobs handed on) if it still runs DEVICE_GONE_AFTER_S later.

Redis is the session's real server; supervisord is replaced by `Supervisord`, which answers the two calls the
watch makes (`getProcessInfo`, `signalProcess`) and records the signals, since no real process can be held in
the kernel by a test. The process tests cover the path where the worker does exit.
"""

from __future__ import annotations

import time
from typing import Any

from daemon.ops import shard_watch
from daemon.ops.shard_watch import StuckExits, enforce_stuck_exits
from daemon.queue.faces import ShardQueues
from daemon.queue.keys import processing_key, queue_key
from daemon.queue.registry import read_shards
from daemon.queue.wire import STUCK, Heartbeat, ShardInfo
from daemon.settings import Settings
from daemon.shard import cpu_shards


class Supervisord:
    """supervisord's RPC namespace as the watch uses it, for one running worker per shard."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.signals: list[tuple[str, str]] = []

    def getProcessInfo(self, name: str) -> dict[str, Any]:
        return {"name": name, "statename": "RUNNING", "pid": 4242, "start": int(self.started)}

    def signalProcess(self, name: str, signal: str) -> bool:
        self.signals.append((name, signal))
        return True


def test_a_stuck_worker_that_does_not_exit_is_killed_then_its_shard_failed(redis_client):
    settings, shards = Settings(), cpu_shards(2)
    started = time.time() - 60
    stuck = ShardQueues(redis_client, "cpu0", settings)
    stuck.mark_failed(
        ShardInfo(kind="cpu", index=0, name="CPU", state=STUCK, reason="wedged", since=started + 30)
    )
    redis_client.lpush(processing_key("cpu0"), b"claimed")
    ShardQueues(redis_client, "cpu1", settings).beat(
        ShardInfo(kind="cpu", index=1, name="CPU"), Heartbeat(pid=1)
    )
    supervisor, exits, now = Supervisord(started), StuckExits(), 1000.0

    enforce_stuck_exits(redis_client, settings, shards, supervisor, exits, now)
    assert supervisor.signals == []  # it may still be on its way out
    now += shard_watch.EXIT_GRACE_S
    enforce_stuck_exits(redis_client, settings, shards, supervisor, exits, now)
    assert supervisor.signals == [("worker:worker-0", "KILL")]
    now += shard_watch.DEVICE_GONE_AFTER_S
    enforce_stuck_exits(redis_client, settings, shards, supervisor, exits, now)
    state = {s.shard: s for s in read_shards(redis_client)}["cpu0"]
    assert state.status == "failed" and state.info is not None
    assert "did not exit within 30s of SIGKILL" in (state.info.reason or "")
    assert redis_client.lrange(queue_key("cpu1"), 0, -1) == [b"claimed"]  # its batch handed on
    assert supervisor.signals == [("worker:worker-0", "KILL")]  # killed once


def test_a_restarted_worker_is_left_alone_while_the_stuck_mark_of_its_predecessor_stands(redis_client):
    settings, shards = Settings(), cpu_shards(1)
    since = time.time() - 30
    stuck = ShardQueues(redis_client, "cpu0", settings)
    stuck.mark_failed(ShardInfo(kind="cpu", index=0, name="CPU", state=STUCK, reason="wedged", since=since))
    supervisor, exits, now = (
        Supervisord(started=since + 2),
        StuckExits(),
        1000.0,
    )  # started after the batch began
    for _ in range(3):
        enforce_stuck_exits(redis_client, settings, shards, supervisor, exits, now)
        now += shard_watch.DEVICE_GONE_AFTER_S
    assert supervisor.signals == []
