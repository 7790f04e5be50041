"""A shard's heartbeat, beaten from its own thread so a long batch does not make a healthy worker look dead."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

log = logging.getLogger(__name__)


class HeartbeatThread:
    """Calls `beat` every `interval_s` until stopped; a failed beat is retried at the next interval."""

    def __init__(self, beat: Callable[[], None], interval_s: float, prefix: str) -> None:
        self._beat = beat
        self._interval_s = interval_s
        self._prefix = prefix
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> HeartbeatThread:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            try:
                self._beat()
            except redis.RedisError as exc:
                # The loop's own Redis calls report the outage; a missed beat only shortens our lease.
                log.debug("%s heartbeat failed: %s", self._prefix, exc)
