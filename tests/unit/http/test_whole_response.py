"""daemon.http.whole_response: gunicorn's real Response sends the head and the first chunk in one call."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser

from daemon.http import whole_response


class RecordingSocket:
    """A real socket whose sendall calls are counted: one call is what a kill cannot split."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.sends: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))
        self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


@pytest.fixture()
def gunicorn_write() -> Iterator[None]:
    original = wsgi.Response.write
    yield
    wsgi.Response.write = original


def respond(body_chunks: list[bytes], headers: list[tuple[str, str]]) -> list[bytes]:
    """Run one request through gunicorn's own parser and Response; return the server's sendall calls."""
    client, server = socket.socketpair()
    with client, server:
        client.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        cfg = Config()
        recorder = RecordingSocket(server)
        request = next(iter(RequestParser(cfg, recorder, ("127.0.0.1", 1))))
        response, _environ = wsgi.create(request, recorder, ("127.0.0.1", 1), "unix:/x", cfg)
        response.start_response("200 OK", headers)
        for chunk in body_chunks:
            response.write(chunk)
        response.close()
        return recorder.sends


BODY = b'{"success": true, "predictions": []}'


def test_gunicorn_alone_splits_head_and_body(gunicorn_write):
    # What the module exists for: without it, a kill between these two calls leaves a head with no body.
    sends = respond([BODY], [("Content-Length", str(len(BODY)))])
    assert len(sends) == 2 and sends[1] == BODY


def test_head_and_body_leave_in_one_send(gunicorn_write):
    whole_response.install()
    sends = respond([BODY], [("Content-Length", str(len(BODY)))])
    assert len(sends) == 1
    head, _, body = sends[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and body == BODY


def test_later_chunks_and_chunked_framing_are_gunicorns(gunicorn_write):
    whole_response.install()
    whole_response.install()  # a HUP re-reads the config: installing twice must not wrap twice
    sends = respond([b"first", b"second"], [])
    assert b"Transfer-Encoding: chunked" in sends[0] and sends[0].endswith(b"5\r\nfirst\r\n")
    assert sends[1:] == [b"6\r\nsecond\r\n", b"0\r\n\r\n"]


def test_gunicorn_conf_installs_it(gunicorn_write, monkeypatch, tmp_path):
    import importlib

    import daemon.http.gunicorn_conf as conf

    monkeypatch.setenv("INFERD_RUN_DIR", str(tmp_path))
    importlib.reload(conf)
    assert getattr(wsgi.Response.write, "head_with_first_chunk", False)
