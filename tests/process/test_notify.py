"""systemd's notify protocol against a real appliance: the test is systemd, holding the NOTIFY_SOCKET.

READY=1 must come only once /readyz answers 200, WATCHDOG=1 keep coming while the box is healthy and stop
when no worker is left, and STATUS= say how many shards live.
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from testkit.harness import free_port, wait_until

pytestmark = pytest.mark.slow

WATCHDOG_USEC = 1_000_000
"""The notifier pings every half of it: 0.5 s."""


class NotifySocket:
    """An AF_UNIX datagram socket as systemd binds it; every message kept with the time it arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._done.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            arrived = time.monotonic()
            self.messages.extend((arrived, line) for line in data.decode().splitlines())

    def times(self, line: str) -> list[float]:
        return [arrived for arrived, text in list(self.messages) if text == line]

    def statuses(self) -> list[str]:
        return [text for _, text in list(self.messages) if text.startswith("STATUS=")]

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture()
def notify_socket() -> Iterator[NotifySocket]:
    # Unix socket paths are limited to 107 bytes: a short folder under /tmp.
    listener = NotifySocket(Path(tempfile.mkdtemp(prefix="inferd-notify-")) / "notify")
    yield listener
    listener.close()


def test_ready_after_readyz_then_watchdog_while_healthy_and_none_without_workers(
    start_appliance, notify_socket
):
    port = free_port()
    probes: list[tuple[float, int]] = []
    probing = threading.Event()

    def probe() -> None:
        # What /readyz said, and when the question was asked, all through start-up.
        while not probing.is_set():
            asked = time.monotonic()
            try:
                status = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code
            except requests.RequestException:
                status = 0
            probes.append((asked, status))
            time.sleep(0.05)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    try:
        appliance = start_appliance(shards=2, env=env, api={"port": port})
        wait_until(
            "READY=1 on the notify socket", lambda: bool(notify_socket.times("READY=1")), 30, appliance.output
        )
    finally:
        probing.set()
        prober.join()
    ready_at = notify_socket.times("READY=1")[0]
    assert any(status != 200 for _, status in probes), "start-up was never seen not ready: proves nothing"
    late = [(asked - ready_at, status) for asked, status in probes if asked > ready_at and status != 200]
    assert not late, f"/readyz was not 200 after READY=1 was sent: {late}"

    time.sleep(3)
    beats = [t for t in notify_socket.times("WATCHDOG=1") if t > ready_at]
    assert len(beats) >= 4, f"{len(beats)} WATCHDOG=1 in 3 s with WATCHDOG_USEC={WATCHDOG_USEC}"
    assert any("serving; 2/2 shard(s) live" in status for status in notify_socket.statuses())

    stopped = appliance.supervisorctl("stop", "worker:*")
    assert "stopped" in stopped, stopped
    stopped_at = time.monotonic()
    time.sleep(3)
    # One ping may have been read before the stop and sent just after it: half a period of grace.
    after = [
        t - stopped_at for t in notify_socket.times("WATCHDOG=1") if t > stopped_at + WATCHDOG_USEC / 2e6
    ]
    assert not after, f"WATCHDOG=1 went on without a live worker: {after}"
    assert "0/2 shard(s) live" in notify_socket.statuses()[-1]
    assert notify_socket.times("READY=1") == [ready_at], "READY=1 was sent more than once"
