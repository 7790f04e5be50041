"""Redis connections built from settings: a unix socket by default, TCP with a password otherwise."""

from __future__ import annotations

import time

import redis

from daemon.settings import Settings

CONNECT_TIMEOUT_S = 1.0
"""A Redis that does not accept a connection within this is treated as down (API answers 503 at once)."""


def connect(
    settings: Settings, socket_timeout_s: float | None, max_connections: int | None = None
) -> redis.Redis:
    """A client whose commands fail fast when Redis is gone; blocking calls must stay under the timeout."""
    password = settings.secrets.redis_password
    socket = settings.redis_socket
    pool: redis.ConnectionPool
    if socket is not None:
        pool = redis.ConnectionPool(
            connection_class=redis.UnixDomainSocketConnection,
            path=str(socket),
            password=password,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=socket_timeout_s,
            max_connections=max_connections,
        )
    else:
        pool = redis.ConnectionPool(
            host=settings.redis.host,
            port=settings.redis.port,
            password=password,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=socket_timeout_s,
            max_connections=max_connections,
        )
    return redis.Redis(connection_pool=pool)


class Backoff:
    """Capped exponential pause between retries of Redis calls, so a worker neither spins nor sleeps long."""

    START_S = 0.1
    """First pause after an error; doubles on each further error."""
    CAP_S = 2.0
    """Longest pause, so service resumes within this long after Redis returns."""

    def __init__(self) -> None:
        self.delay_s = self.START_S

    def pause(self) -> None:
        time.sleep(self.delay_s)
        self.delay_s = min(self.delay_s * 2, self.CAP_S)

    def reset(self) -> None:
        self.delay_s = self.START_S
