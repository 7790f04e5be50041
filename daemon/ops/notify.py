"""systemd's readiness and watchdog protocol (`Type=notify`), spoken for the whole appliance.

supervisord is the unit's main process (the launcher execs it) and knows nothing of systemd, so this small
supervisord program speaks for it; the unit says `NotifyAccess=all` because the sender is not the main pid.
The launcher starts it only when systemd gave a NOTIFY_SOCKET, and hands the socket to it alone (as
INFERD_NOTIFY_SOCKET): gunicorn would otherwise say READY=1 as soon as it listens.

- `READY=1` once, when /readyz first answers 200 where clients connect (Redis up, a worker live, the API
  accepting), not when supervisord has merely started its programs: `systemctl start` returns when the box
  can serve. With TLS on, the probe speaks https to the front door, trusting the configured certificate
  (daemon/ops/local_client.py says why that, and not a plain health listener).
- `WATCHDOG=1` every half of WATCHDOG_USEC, but only while Redis answers and at least one shard's worker
  has a fresh heartbeat. supervisord restarts single processes by itself; the watchdog is for what it
  cannot mend (no worker able to start, Redis gone for good), where systemd restarts the whole unit.
- `STATUS=` a one-line summary (`systemctl status` shows it): shards live, images/s, drain state.

Messages are datagrams to the socket in NOTIFY_SOCKET (a path, or an abstract name starting with '@').
"""

from __future__ import annotations

import http.client
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType

import redis

from daemon.logs import setup_logging
from daemon.ops.local_client import client_tls, fetch, local_url
from daemon.queue.connection import connect
from daemon.queue.registry import batch_rates, read_drain_state, read_shards
from daemon.settings import Settings, load_settings

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "INFERD_NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "INFERD_WATCHDOG_USEC"
"""systemd's NOTIFY_SOCKET and WATCHDOG_USEC, renamed by the launcher so that no other program answers them."""
STATUS_INTERVAL_S = 2.0
"""How often the status line is refreshed, and readiness looked at, when no watchdog asks for more."""
MIN_INTERVAL_S = 0.1
PROBE_TIMEOUT_S = 2.0


def send(address: str, message: str) -> None:
    """One datagram to systemd's notify socket."""
    target = "\0" + address[1:] if address.startswith("@") else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(target)
        sock.sendall(message.encode())


@dataclass(frozen=True, slots=True)
class Health:
    redis_ok: bool
    live: int
    registered: int
    images_per_s: float
    drain: str | None
    """A drain or shutdown in progress, said in a few words; None when there is none."""

    @property
    def watchdog_ok(self) -> bool:
        return self.redis_ok and self.live > 0

    def status(self, ready: bool) -> str:
        if not self.redis_ok:
            return "Redis unreachable"
        state = "serving" if ready else "starting: waiting for /readyz"
        if self.drain:
            state = self.drain
        return f"{state}; {self.live}/{self.registered} shard(s) live, {self.images_per_s:.1f} img/s"


def read_health(client: redis.Redis) -> Health:
    try:
        states = read_shards(client, with_records=True)
        drain = read_drain_state(client, [state.shard for state in states])
    except redis.RedisError:
        return Health(False, 0, 0, 0.0, None)
    now = time.time()
    words = None
    if drain.unready or drain.box:
        words = f"draining ({drain.unready or drain.box})"
    elif drain.shards:
        words = f"serving, draining {', '.join(sorted(drain.shards))}"
    return Health(
        redis_ok=True,
        live=sum(1 for state in states if state.live),
        registered=len(states),
        images_per_s=sum(batch_rates(state.records, now)[0] for state in states),
        drain=words,
    )


def api_ready(settings: Settings, tls: ssl.SSLContext | None) -> bool:
    """Whether the API's /readyz answers 200 now, through the front door as a client reaches it."""
    try:
        status, _ = fetch(f"{local_url(settings.api)}/readyz", tls, PROBE_TIMEOUT_S)
    except (OSError, http.client.HTTPException):
        return False  # refused while starting
    return status == 200


def interval_s(watchdog_usec: str | None) -> float:
    """Half the watchdog's period (as sd_watchdog_enabled's callers are told to ping), at most the status
    refresh interval."""
    if not watchdog_usec or not watchdog_usec.isdigit() or int(watchdog_usec) == 0:
        return STATUS_INTERVAL_S
    return max(MIN_INTERVAL_S, min(STATUS_INTERVAL_S, int(watchdog_usec) / 2e6))


def notify_loop(settings: Settings, address: str, period_s: float, stop: threading.Event) -> None:
    client = connect(settings, socket_timeout_s=PROBE_TIMEOUT_S)
    tls = client_tls(settings.api)
    ready = False
    while not stop.is_set():
        health = read_health(client)
        if not ready and api_ready(settings, tls):
            ready = True
            send(address, "READY=1\nSTATUS=" + health.status(ready))
            log.info("notify: /readyz answered 200; told systemd READY=1")
        lines = [f"STATUS={health.status(ready)}"]
        if health.watchdog_ok:
            lines.append("WATCHDOG=1")
        try:
            send(address, "\n".join(lines))
        except OSError as exc:
            # systemd is going or gone (the unit is stopping): nothing to tell, nothing to mend by restarting.
            log.warning("notify: cannot reach the notify socket: %s", exc)
        stop.wait(period_s)


def main() -> int:
    setup_logging()
    address = os.environ.get(NOTIFY_SOCKET_ENV)
    if not address:
        log.info("notify: no notify socket (not started by systemd with Type=notify); nothing to do")
        return 0
    settings = load_settings()
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    notify_loop(settings, address, interval_s(os.environ.get(WATCHDOG_USEC_ENV)), stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
