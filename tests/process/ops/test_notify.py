"""systemd's notify protocol against a real appliance: the test is systemd, holding the NOTIFY_SOCKET.

READY=1 must come only once /readyz answers 200, WATCHDOG=1 keep coming while the box is healthy and stop
when no worker is left or Redis is gone, and STATUS= say how many shards live; all of it with the front door
speaking only TLS too, where the tools must reach it as well.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from testkit.config import short_folder
from testkit.harness import REPO, free_port, wait_until
from testkit.tls import make_certificates

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
        self.datagrams: list[tuple[float, list[str]]] = []
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
            lines = data.decode().splitlines()
            self.datagrams.append((arrived, lines))
            self.messages.extend((arrived, line) for line in lines)

    def times(self, line: str) -> list[float]:
        return [arrived for arrived, text in list(self.messages) if text == line]

    def since(self, start: float) -> list[list[str]]:
        """The datagrams that arrived after `start`, each as its lines: one is one tick of the notifier."""
        return [lines for arrived, lines in list(self.datagrams) if arrived > start]

    def statuses(self) -> list[str]:
        return [text for _, text in list(self.messages) if text.startswith("STATUS=")]

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture()
def notify_socket() -> Iterator[NotifySocket]:
    # Unix socket paths are limited to 107 bytes: a short folder under /tmp.
    listener = NotifySocket(short_folder("notify-") / "notify")
    yield listener
    listener.close()


def test_ready_after_readyz_then_watchdog_while_healthy_and_none_without_workers_or_redis(
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

    wait_until(
        "four WATCHDOG=1 within 3 s of READY=1 (WATCHDOG_USEC=1 s: one every 0.5 s)",
        lambda: len([t for t in notify_socket.times("WATCHDOG=1") if t > ready_at]) >= 4,
        3,
        appliance.output,
    )
    wait_until(
        "STATUS= to say both shards serve",
        lambda: any("serving; 2/2 shard(s) live" in status for status in notify_socket.statuses()),
        30,
        appliance.output,
    )

    stopped = appliance.supervisorctl("stop", "worker:*")
    assert "stopped" in stopped, stopped
    without_watchdog_ping(notify_socket, "0/2 shard(s) live", appliance)
    assert notify_socket.times("READY=1") == [ready_at], "READY=1 was sent more than once"

    # Back to health, then Redis gone: the workers still run, but nobody can tell whether they serve.
    started = appliance.supervisorctl("start", "worker:*")
    assert "started" in started, started
    resumed = time.monotonic()
    wait_until(
        "WATCHDOG=1 again once the workers are back",
        lambda: any("WATCHDOG=1" in lines for lines in notify_socket.since(resumed)),
        60,
        appliance.output,
    )
    stopped = appliance.supervisorctl("stop", "redis")
    assert "stopped" in stopped, stopped
    without_watchdog_ping(notify_socket, "Redis unreachable", appliance)


TICKS_WITHOUT_PING = 6
"""Notifier ticks (0.5 s apart) that must pass without WATCHDOG=1: systemd's limit would be long gone by then."""


def without_watchdog_ping(notify_socket: NotifySocket, status: str, appliance) -> None:
    """Once the notifier says `status`, wait for TICKS_WITHOUT_PING of its ticks: none may carry WATCHDOG=1."""
    asked = time.monotonic()
    said: list[float] = []

    def says_it() -> bool:
        said[:] = [
            t
            for t, lines in list(notify_socket.datagrams)
            if t > asked and any(line.startswith("STATUS=") and status in line for line in lines)
        ]
        return bool(said)

    wait_until(
        f"the notifier to say {status!r}",
        says_it,
        30,
        lambda: f"last statuses: {notify_socket.statuses()[-3:]}\n{appliance.output()}",
    )
    # Ticks before this one may have read the health just before the change: they are not counted.
    first = said[0] - 1e-6
    wait_until(
        f"{TICKS_WITHOUT_PING} notifier ticks after it said {status!r}",
        lambda: len(notify_socket.since(first)) >= TICKS_WITHOUT_PING,
        TICKS_WITHOUT_PING * WATCHDOG_USEC / 2e6 + 10,
        appliance.output,
    )
    pinged = [lines for lines in notify_socket.since(first) if "WATCHDOG=1" in lines]
    assert not pinged, f"WATCHDOG=1 went on after the notifier said {status!r}: {pinged}"


def test_a_tls_only_appliance_tells_systemd_it_is_ready_and_the_tools_reach_it(
    start_appliance, notify_socket, tmp_path, photo_png
):
    # A certificate for the host's name, from a site CA, as an operator would install it: not for 127.0.0.1.
    certificates = make_certificates(tmp_path / "tls")
    env = {"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    api = {"tls_cert_file": str(certificates.chain), "tls_key_file": str(certificates.key)}
    # Not waited for by the harness: READY=1 itself is the readiness under test.
    appliance = start_appliance(shards=1, env=env, ready=False, api=api)
    wait_until(
        "READY=1 on the notify socket", lambda: bool(notify_socket.times("READY=1")), 90, appliance.output
    )
    ready_at = notify_socket.times("READY=1")[0]
    wait_until(
        "two WATCHDOG=1 within 2 s of READY=1",
        lambda: len([t for t in notify_socket.times("WATCHDOG=1") if t > ready_at]) >= 2,
        2,
        appliance.output,
    )
    wait_until(
        "STATUS= to say the shard serves",
        lambda: any("serving; 1/1 shard(s) live" in status for status in notify_socket.statuses()),
        30,
        appliance.output,
    )
    plain = requests.get(appliance.url.replace("https:", "http:") + "/readyz", timeout=10)
    assert plain.status_code == 400, "the port speaks only TLS"

    image = tmp_path / "photo.png"
    image.write_bytes(photo_png)
    config = str(appliance.config)

    def tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
        # Only what an operator in another shell has: the settings file, no certificate in the environment.
        argv = [sys.executable, "-m", f"tools.{name}", "--config", config, *args]
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
        return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)

    def stress(*args: str) -> subprocess.CompletedProcess[str]:
        return tool("stress", "-n", "5", *args, str(image))

    # The tools that talk to Redis, not HTTP, are untouched by TLS: one stands for them.
    status = tool("gpu_status")
    assert status.returncode == 0 and "cpu0" in status.stdout, status.stdout + status.stderr

    found = stress("--json")
    assert found.returncode == 0, found.stdout + found.stderr
    summary = json.loads(found.stdout)
    assert summary["url"] == f"{appliance.url}/predict" and summary["url"].startswith("https://")
    assert summary["ok"] == 5 and summary["status_counts"] == {"200": 5}
    # Given the URL by hand, the system's CAs do not know the site's CA: refused before any load, with a hint.
    by_hand = stress("--url", appliance.url)
    assert by_hand.returncode == 1
    assert "does not trust" in by_hand.stderr and "--cacert" in by_hand.stderr, by_hand.stderr
    pinned = stress("--json", "--url", appliance.url, "--cacert", str(certificates.chain))
    assert pinned.returncode == 0 and json.loads(pinned.stdout)["ok"] == 5, pinned.stdout + pinned.stderr
