"""Hostile HTTP clients for the front-door tests and probes: slow headers, slow bodies, silent and idle sockets.

One thread drives every socket without blocking, so a few thousand cost no more than a few. Each attack is
bounded: only 127.0.0.1, a fixed count per kind, and a duration after which every socket is closed. A
connection the server closes is opened again at the next tick, as a real attacker would, so the pressure
stays constant for the whole duration; `reopened` says how often the server cut one off.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"
TICK_S = 1.0 / 3.0
"""How often each slow socket sends its next byte: 3 bytes/s."""
CONNECT_TIMEOUT_S = 10.0
SLOW_BODY_LENGTH = 100_000
"""Content-Length the slow bodies announce: they never get near it."""


@dataclass(frozen=True, slots=True)
class Attack:
    """How many sockets of each kind to hold open at once."""

    slow_headers: int = 0
    """Send a request line and then one header byte per tick, never finishing the headers."""
    slow_bodies: int = 0
    """Send complete headers announcing SLOW_BODY_LENGTH bytes, then one body byte per tick."""
    silent: int = 0
    """Connect and send nothing."""
    idle_keepalive: int = 0
    """Make one complete GET /healthz (HTTP/1.1, keep-alive), read the answer, then stay idle."""


@dataclass
class _Conn:
    kind: str
    sock: socket.socket | None = None
    payload: bytes = b""
    sent: int = 0


@dataclass
class SlowClients:
    """Holds an `Attack` against 127.0.0.1:`port` from `start()` until `stop()` or `duration_s`."""

    port: int
    attack: Attack
    duration_s: float = 60.0
    opened: int = 0
    reopened: int = 0
    failed_connects: int = 0
    idle_answered: int = 0
    _conns: list[_Conn] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> SlowClients:
        kinds = (
            ["slow_header"] * self.attack.slow_headers
            + ["slow_body"] * self.attack.slow_bodies
            + ["silent"] * self.attack.silent
            + ["idle"] * self.attack.idle_keepalive
        )
        self._conns = [_Conn(kind) for kind in kinds]
        for conn in self._conns:
            self._open(conn)
        self._settle_idle()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)
        self._thread.start()
        return self

    def open_count(self) -> int:
        return sum(1 for conn in self._conns if conn.sock is not None)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for conn in self._conns:
            self._close(conn)

    def __enter__(self) -> SlowClients:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _payload(self, kind: str) -> bytes:
        if kind == "slow_header":
            return b"GET /healthz HTTP/1.1\r\nHost: attacker\r\nX-Slow: " + b"a" * 100_000
        if kind == "slow_body":
            head = (
                "POST /predict HTTP/1.1\r\nHost: attacker\r\nContent-Type: image/png\r\n"
                f"Content-Length: {SLOW_BODY_LENGTH}\r\n\r\n"
            )
            return head.encode() + b"\x89" * SLOW_BODY_LENGTH
        if kind == "idle":
            return b"GET /healthz HTTP/1.1\r\nHost: attacker\r\n\r\n"
        return b""

    def _open(self, conn: _Conn) -> None:
        try:
            sock = socket.create_connection((HOST, self.port), timeout=CONNECT_TIMEOUT_S)
        except OSError:
            self.failed_connects += 1
            conn.sock = None
            return
        conn.sock, conn.payload, conn.sent = sock, self._payload(conn.kind), 0
        self.opened += 1
        if conn.kind == "slow_body":
            # The headers go at once; only the body dribbles.
            head_end = conn.payload.index(b"\r\n\r\n") + 4
            self._send(conn, head_end)
        elif conn.kind == "idle":
            self._send(conn, len(conn.payload))
        sock.setblocking(False)

    def _settle_idle(self) -> None:
        """Read each idle socket's answer, so what stays open is a kept-alive connection between requests."""
        for conn in self._conns:
            if conn.kind != "idle" or conn.sock is None:
                continue
            conn.sock.settimeout(CONNECT_TIMEOUT_S)
            try:
                if conn.sock.recv(4096).startswith(b"HTTP/1.1 200"):
                    self.idle_answered += 1
            except OSError:
                self._close(conn)
                continue
            conn.sock.setblocking(False)

    def _send(self, conn: _Conn, count: int) -> None:
        assert conn.sock is not None
        try:
            conn.sent += conn.sock.send(conn.payload[conn.sent : conn.sent + count])
        except BlockingIOError:
            pass
        except OSError:
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.close()
            conn.sock = None

    def _closed_by_server(self, conn: _Conn) -> bool:
        assert conn.sock is not None
        try:
            data = conn.sock.recv(65536)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return data == b"" or conn.kind != "idle"  # an answer to a slow request ends it too

    def _run(self) -> None:
        ends = time.monotonic() + self.duration_s
        while not self._stop.wait(TICK_S) and time.monotonic() < ends:
            for conn in self._conns:
                if conn.sock is not None and self._closed_by_server(conn):
                    self._close(conn)
                if conn.sock is None:
                    if conn.kind == "idle":
                        continue  # an idle socket the server let go is not reopened: it was idle
                    self.reopened += 1
                    self._open(conn)
                    continue
                if conn.kind in ("slow_header", "slow_body") and conn.sent < len(conn.payload):
                    self._send(conn, 1)
