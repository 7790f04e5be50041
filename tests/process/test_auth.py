"""Bearer-token auth end to end: the real appliance (nginx, gunicorn, Redis, a worker) with
`api.auth_token_file` set; a stranger's upload is refused at the front door before its body is read."""

from __future__ import annotations

import os
import select
import socket
from contextlib import suppress
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from testkit.proctree import children
from tests.tiny_model import TINY_LABELS

pytestmark = pytest.mark.slow

TOKEN = "appliance-token-1234"


def test_predict_needs_the_token_and_only_what_passed_the_front_door_is_counted(
    start_appliance, tmp_path, photo_png
):
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    token_file.chmod(0o600)
    # The readiness wait itself shows the probes stay open: it calls /readyz without a token.
    appliance = start_appliance(shards=1, api={"auth_token_file": str(token_file)})
    upload = {"image": ("photo.png", photo_png, "image/png")}

    refused = requests.post(f"{appliance.url}/predict", files=upload, timeout=30)
    assert refused.status_code == 401, refused.text
    assert refused.json() == {"success": False, "error": "missing or wrong bearer token"}
    assert refused.headers["WWW-Authenticate"] == "Bearer"

    # Lower-case scheme on purpose: RFC 7235 makes it case-insensitive, and clients do send it so.
    auth = {"Authorization": f"bearer {TOKEN}"}
    answered = requests.post(f"{appliance.url}/predict", files=upload, headers=auth, timeout=30)
    assert answered.status_code == 200, answered.text
    body = answered.json()
    assert body["success"] is True
    assert body["predictions"] and {p["label"] for p in body["predictions"]} <= set(TINY_LABELS)

    assert requests.get(f"{appliance.url}/metrics", timeout=10).status_code == 401
    scraped = requests.get(f"{appliance.url}/metrics", headers=auth, timeout=10)
    assert scraped.status_code == 200
    requests_by_status = {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(scraped.text)
        for sample in family.samples
        if sample.name == "inferd_requests_total"
    }
    # The refused upload never reached the API: the front door answered it (see the test below).
    assert requests_by_status == {"200": 1.0}


BODY_BYTES = 20_000_000
"""A large upload within the default api.max_body_bytes: what a stranger's flood would send, many times."""
CHUNK = 64 * 1024


def files_open_under(pids: list[int], folder: Path) -> set[str]:
    """The files under `folder` that these processes hold open (a spilled body is unlinked, but open)."""
    found = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in os.listdir(fd_dir):
            with suppress(OSError):
                target = os.readlink(fd_dir / fd)
                if target.startswith(f"{folder}/"):
                    found.add(target)
    return found


def status_line(sock: socket.socket) -> str:
    return sock.recv(65536).decode(errors="replace").split("\r\n", 1)[0]


def test_a_strangers_body_is_refused_before_it_is_read_or_stored(start_appliance, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    token_file.chmod(0o600)  # a token file every user can read is refused at start
    appliance = start_appliance(shards=1, api={"auth_token_file": str(token_file)})
    nginx = [child.pid for child in children(appliance.pid_of("nginx"))]
    assert nginx, "no nginx worker found"
    headers = (
        f"POST /predict HTTP/1.1\r\nHost: inferd\r\nContent-Type: image/png\r\nContent-Length: {BODY_BYTES}\r\n"
    ).encode()

    # A client that asks first (Expect: 100-continue) is told 401 instead of "100 Continue": it sends nothing.
    with socket.create_connection(("127.0.0.1", appliance.port), timeout=10) as sock:
        sock.sendall(headers + b"Expect: 100-continue\r\n\r\n")
        assert status_line(sock) == "HTTP/1.1 401 Unauthorized", "the front door asked for the body"

    # A client that just sends: the 401 comes while the body is still on its way, and nothing of it is kept.
    opened: set[str] = set()
    sent = 0
    answer = ""
    with socket.create_connection(("127.0.0.1", appliance.port), timeout=10) as sock:
        sock.sendall(headers + b"\r\n")
        chunk = b"\0" * CHUNK
        while sent < BODY_BYTES and not answer:
            opened |= files_open_under(nginx, appliance.run_dir)
            try:
                sent += sock.send(chunk[: BODY_BYTES - sent])
            except OSError:
                break  # the server closed after its answer: read it below
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                answer = status_line(sock)
        if not answer:
            sock.settimeout(30)
            answer = status_line(sock)
    print(f"\n[no token] answered {answer!r} after {sent} of {BODY_BYTES} body bytes sent")
    assert answer == "HTTP/1.1 401 Unauthorized"
    assert not opened, f"nginx stored the body: {opened}"
    assert sent < BODY_BYTES, "the answer came only after the whole body was sent"

    # With the token the same upload is read whole and reaches the API, which finds no image in its zeros.
    with socket.create_connection(("127.0.0.1", appliance.port), timeout=60) as sock:
        sock.sendall(headers + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
        sock.sendall(b"\0" * BODY_BYTES)
        sock.settimeout(60)
        assert status_line(sock) == "HTTP/1.1 415 Unsupported Media Type"
