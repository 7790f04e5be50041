"""systemd's notify protocol against a real appliance: the test is systemd, holding the NOTIFY_SOCKET.

READY=1 must come only once /readyz answers 200, WATCHDOG=1 keep coming while the box is healthy and stop
when no worker is left, and STATUS= say how many shards live; all of it with the front door speaking only TLS
too, where the tools must reach it as well.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

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
    time.sleep(2)
    beats = [t for t in notify_socket.times("WATCHDOG=1") if t > ready_at]
    assert len(beats) >= 2, f"{len(beats)} WATCHDOG=1 in 2 s with WATCHDOG_USEC={WATCHDOG_USEC}"
    assert any("serving; 1/1 shard(s) live" in status for status in notify_socket.statuses())
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
