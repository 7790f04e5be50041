"""A response's head and its first body chunk leave the API in one send, so a killed API never sends half an answer.

gunicorn writes the status line and headers with one `sendall` and the body with another. A gthread worker
runs many threads on one GIL, so a thread can be paused between the two calls for a whole switch interval.
If the process is killed there (the OOM killer, an operator's SIGKILL of the whole appliance), nginx has
already relayed the head and can only close the connection: the client reads a 200 whose body never comes,
and no balancer can replay it, because an answer has begun. Sent in one call, a small answer (every /predict
answer is) reaches nginx whole or not at all; "not at all" is a 502 that HAProxy's `retry-on 502` replays
on another box.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gunicorn.http import wsgi

Write = Callable[[Any, bytes], None]


class _HeadCollector:
    """Stands in for the client socket while gunicorn frames the head and the first chunk."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.parts.append(bytes(data))


def _head_with_first_chunk(gunicorn_write: Write) -> Write:
    def write(response: Any, data: bytes) -> None:
        if response.headers_sent:
            gunicorn_write(response, data)
            return
        # gunicorn does the framing (headers, Content-Length cut, chunked encoding); we only hold its sends.
        client, collector = response.sock, _HeadCollector()
        response.sock = collector
        try:
            gunicorn_write(response, data)
        finally:
            response.sock = client
        client.sendall(b"".join(collector.parts))

    write.head_with_first_chunk = True  # type: ignore[attr-defined]
    return write


def install() -> None:
    """Make gunicorn's responses send head and first chunk together; idempotent (a HUP re-reads the config)."""
    if not getattr(wsgi.Response.write, "head_with_first_chunk", False):
        wsgi.Response.write = _head_with_first_chunk(wsgi.Response.write)
