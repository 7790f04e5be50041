"""The front door (nginx) against real sockets: slow and idle clients, oversized and short bodies, a forged
arrival stamp, TLS, and a SIGKILL of the API's gunicorn master under load.

Most tests share one appliance (starting one costs tens of seconds on a loaded two-core machine) with a small
body limit, so an oversized upload is cheap, and a short client timeout, so a stalled body is given up soon.
The hostile sockets come from testkit/slow_clients.py: bounded in count and time, to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import ssl
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from testkit.config import write_settings
from testkit.harness import Appliance, wait_until
from testkit.images import encode_image
from testkit.slow_clients import Attack, SlowClients
from tests.conftest import TINY_INPUT, tiny_sections
from tests.needs import need
from tests.process.test_worker_exit_codes import run_inferd
from tools.loadgen import LoadRun, Upload

pytestmark = pytest.mark.slow

MAX_BODY = 200_000
CLIENT_TIMEOUT_S = 2.0
IMAGE = encode_image(np.full((TINY_INPUT, TINY_INPUT, 3), 90, dtype=np.uint8))


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory, tiny_model: tuple[Path, Path]) -> Iterator[Appliance]:
    folder = tmp_path_factory.mktemp("front-door")
    sections = tiny_sections(
        tiny_model,
        api={"max_body_bytes": MAX_BODY, "client_timeout_s": CLIENT_TIMEOUT_S},
        devices={"cpu_workers": 2},
    )
    started = Appliance(
        folder,
        write_settings(folder, sections),
        sections["api"]["port"],
        Path(sections["paths"]["run_dir"]),
        2,
    )
    started.start()
    yield started
    started.stop()


def predict(url: str, **kwargs: object) -> requests.Response:
    files = {"image": ("grey.png", IMAGE, "image/png")}
    return requests.post(f"{url}/predict", files=files, timeout=60, **kwargs)  # type: ignore[arg-type]


def seconds(call: object) -> tuple[float, requests.Response]:
    started = time.monotonic()
    response = call()  # type: ignore[operator]
    return time.monotonic() - started, response


def exchange(port: int, data: bytes, read_s: float) -> tuple[float, bytes]:
    """Send `data` on a raw socket, then read until the server closes or `read_s` passes; returns the seconds
    until the first byte of the answer came (or the connection closed) and every byte that came."""
    started = time.monotonic()
    first: float | None = None
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=read_s) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                first = time.monotonic() - started if first is None else first
                received += chunk
        except TimeoutError:
            pass
        except ConnectionResetError:
            pass  # nginx may reset after its answer when the request left bytes it did not read
    return (time.monotonic() - started if first is None else first), received


def test_slow_and_silent_clients_do_not_delay_a_request_or_a_probe(appliance):
    attack = Attack(slow_headers=60, slow_bodies=60, silent=300)
    with SlowClients(appliance.port, attack, duration_s=120) as clients:
        wait_until(
            "the hostile sockets to be open", lambda: clients.open_count() >= 400, 30, appliance.output
        )
        predicts = [seconds(lambda: predict(appliance.url)) for _ in range(5)]
        probes = [seconds(lambda: requests.get(f"{appliance.url}/healthz", timeout=30)) for _ in range(5)]
        still_open = clients.open_count()
    print(
        f"\n[slow clients] predict {[round(s, 3) for s, _ in predicts]} healthz {[round(s, 3) for s, _ in probes]}"
    )
    assert still_open >= 400, "the attack was not in place while we measured: the test proved nothing"
    assert [r.status_code for _, r in predicts + probes] == [200] * 10
    # Targets: < 1 s and < 100 ms; the bounds are looser for a loaded two-core CI machine, and still far below
    # the 60 s a request waited behind these sockets before the front door.
    assert max(s for s, _ in predicts) < 3.0
    assert sorted(s for s, _ in probes)[2] < 0.5


def test_two_thousand_idle_keepalive_connections_do_not_stop_service(appliance):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need(
        hard >= 3000,
        f"the open-files hard limit ({hard}) cannot hold 2,000 client sockets",
        "raise it: ulimit -Hn",
    )
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 3000), hard))
    try:
        with SlowClients(appliance.port, Attack(idle_keepalive=2000), duration_s=60) as clients:
            assert clients.idle_answered == 2000, (clients.idle_answered, clients.failed_connects)
            elapsed, response = seconds(lambda: predict(appliance.url))
            assert response.status_code == 200 and elapsed < 3.0, (response.status_code, elapsed)
            assert clients.open_count() == 2000
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_oversized_upload_gets_the_413_json_through_requests(appliance):
    # Before the front door, the API closed the connection without reading the body and `requests`, still
    # writing it, saw BrokenPipeError instead of the answer.
    response = requests.post(
        f"{appliance.url}/predict",
        data=b"\x89" * (MAX_BODY * 5),
        headers={"Content-Type": "image/png"},
        timeout=60,
    )
    assert response.status_code == 413
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json() == {
        "success": False,
        "error": f"the request body is larger than the {MAX_BODY}-byte limit",
    }


def test_expect_100_continue_with_an_oversized_length_gets_413_and_no_100(appliance):
    head = (
        "POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
        f"Content-Length: {MAX_BODY + 1}\r\nExpect: 100-continue\r\n\r\n"
    )
    elapsed, answer = exchange(appliance.port, head.encode(), read_s=10)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b" 100 " not in answer
    assert b'"success": false' in answer
    assert elapsed < 5


def test_a_body_shorter_than_its_length_is_given_up_after_the_client_timeout(appliance):
    head = b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
    elapsed, answer = exchange(appliance.port, head + b"\x89PNG", read_s=30)
    # nginx closes a connection whose body stalls for api.client_timeout_s; it sends no status for a
    # timeout (nginx answers 408 only by closing), and the API never sees the request.
    assert answer == b"", answer[:200]
    assert CLIENT_TIMEOUT_S - 0.5 < elapsed < CLIENT_TIMEOUT_S + 8, elapsed


def test_a_header_that_stops_halfway_is_given_up_after_the_client_timeout(appliance):
    # A slowloris client: half a request line and one header, then silence. nginx must close it once
    # api.client_timeout_s passes (client_header_timeout), not after its own 60 s default.
    elapsed, answer = exchange(appliance.port, b"POST /predict HTTP/1.1\r\nHost: te", read_s=30)
    # nginx may answer 408 or close without a word; either way nothing reached the API.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert CLIENT_TIMEOUT_S - 0.5 < elapsed < CLIENT_TIMEOUT_S + 8, elapsed


def test_a_chunked_upload_is_buffered_and_classified(appliance):
    chunks = iter([IMAGE[:50], IMAGE[50:]])  # a generator body: requests sends it chunked
    response = requests.post(
        f"{appliance.url}/predict", data=chunks, headers={"Content-Type": "image/png"}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True


def test_a_chunked_upload_over_the_limit_gets_413(appliance):
    chunks = iter([b"\x89" * 100_000] * 5)
    response = requests.post(
        f"{appliance.url}/predict", data=chunks, headers={"Content-Type": "image/png"}, timeout=60
    )
    assert response.status_code == 413 and response.json()["success"] is False


def test_a_client_cannot_forge_its_arrival_time(appliance):
    # A stamp from 1970 would put the request's deadline in the past; from 2100, far in the future. nginx
    # replaces either with its own, so the request is served as any other.
    for forged in ("0", "4102444800.000"):
        response = predict(appliance.url, headers={"X-Inferd-Arrived": forged})
        assert response.status_code == 200, (forged, response.text)


def test_nginx_errors_are_json(appliance):
    _, answer = exchange(appliance.port, b"NOT HTTP AT ALL\r\n\r\n", read_s=10)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert answer.rstrip().endswith(b'{"success": false, "error": "malformed HTTP request"}')


def test_a_sigkilled_gunicorn_master_costs_no_request(appliance):
    run = LoadRun(
        f"{appliance.url}/predict",
        [Upload.of("grey.png", IMAGE)],
        concurrency=16,
        duration_s=20,
        timeout_s=30,
    ).start()
    appliance.wait_until("the load to be answered", lambda: run.completed() >= 16, 60)
    master = appliance.pid_of("api")
    os.kill(master, signal.SIGKILL)
    killed_at = run.elapsed_s()
    appliance.wait_restarted("api", master)
    result = run.wait(90)
    statuses = Counter(record.status for record in result.records)
    print(f"\n[kill -9 gunicorn master] {dict(statuses)}")
    after = [r for r in result.records if r.start_s > killed_at]
    assert after, "no request was sent after the kill: the test proved nothing"
    assert statuses == {200: len(result.records)}, [r.error for r in result.records if r.status != 200][:5]


def make_certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_tls_on_the_api_port(tmp_path, tiny_model):
    cert, key = make_certificate(tmp_path)
    sections = tiny_sections(tiny_model, api={"tls_cert_file": str(cert), "tls_key_file": str(key)})
    port = sections["api"]["port"]
    tls = Appliance(tmp_path, write_settings(tmp_path, sections), port, Path(sections["paths"]["run_dir"]), 1)
    assert tls.url == f"https://127.0.0.1:{port}", "the harness reads the scheme from the settings"
    try:
        tls.start()
        response = predict(tls.url, verify=str(cert))
        assert response.status_code == 200, response.text
        context = ssl.create_default_context(cafile=str(cert))
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
        ):
            assert sock.version() in ("TLSv1.2", "TLSv1.3")
        plain = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
        assert plain.status_code == 400
        assert plain.json() == {"success": False, "error": "this port speaks TLS: use https://"}
    finally:
        tls.stop()


def test_a_tls_setting_without_its_pair_an_unreadable_key_or_a_refused_certificate_stops_the_start(
    tmp_path, tiny_model
):
    cert, key = make_certificate(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = make_certificate(other)
    not_a_certificate = tmp_path / "not-a-cert.pem"
    not_a_certificate.write_text(
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    )
    cases = [
        ({"tls_cert_file": str(cert)}, "api.tls_key_file", "check"),
        (
            {"tls_cert_file": str(cert), "tls_key_file": str(tmp_path / "missing.pem")},
            "api.tls_key_file",
            "check",
        ),
        # Readable files that nginx itself refuses (`nginx -t` as the start prepares the front door): a key of
        # another certificate, a certificate that is not one.
        ({"tls_cert_file": str(cert), "tls_key_file": str(other_key)}, str(other_key), "run"),
        ({"tls_cert_file": str(not_a_certificate), "tls_key_file": str(key)}, str(not_a_certificate), "run"),
    ]
    for api, named, command in cases:
        config = write_settings(tmp_path, tiny_sections(tiny_model, api=api))
        result = run_inferd(config, command, timeout_s=120)
        assert result.returncode == 78, (api, command, result.stderr)
        assert named in result.stderr, result.stderr  # the key, or the file nginx refused


SMALL_MAX_CONNECTIONS = 256
"""The least api.max_connections the settings allow: the front door fills with a few hundred sockets."""


def soft_open_files(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no open-files line in /proc/{pid}/limits")


def test_a_full_front_door_closes_idle_kept_alive_connections_first(
    tmp_path: Path, tiny_model: tuple[Path, Path]
) -> None:
    # docs/settings.md: api.max_connections bounds the connections the front door holds, idle kept-alive ones
    # are closed first when it is full, and the launcher raises the open-files limit to match.
    sections = tiny_sections(tiny_model, api={"max_connections": SMALL_MAX_CONNECTIONS})
    started = Appliance(
        tmp_path,
        write_settings(tmp_path, sections),
        sections["api"]["port"],
        Path(sections["paths"]["run_dir"]),
        1,
    )
    wanted = SMALL_MAX_CONNECTIONS + 1024  # daemon.ops.front_door.OPEN_FILES_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need(hard >= wanted, f"the open-files hard limit ({hard}) is below {wanted}", "raise it: ulimit -Hn")
    # The appliance inherits a soft limit below what it needs: only the launcher can raise it.
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted - 200, hard))
    try:
        started.launch()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    idle: list[socket.socket] = []
    try:
        started.wait_ready(90)
        nginx_pid = int((started.run_dir / "nginx.pid").read_text())
        assert soft_open_files(started.pid) >= wanted, "supervisord did not inherit a raised open-files limit"
        assert soft_open_files(nginx_pid) >= wanted
        total = SMALL_MAX_CONNECTIONS + 150
        for _ in range(total):
            sock = socket.create_connection(("127.0.0.1", started.port), timeout=10)
            idle.append(sock)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: idle\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200"), f"idle connection {len(idle)} got no answer"
        # A new request still gets through: the front door made room by letting idle connections go.
        elapsed, response = seconds(lambda: predict(started.url))
        assert response.status_code == 200 and elapsed < 5.0, (response.status_code, elapsed)
        closed = []
        for number, sock in enumerate(idle):
            sock.setblocking(False)
            try:
                closed.append(number) if sock.recv(4096) == b"" else None
            except BlockingIOError:
                pass
            except OSError:
                closed.append(number)
        # Beyond the limit, the server closed idle connections, the oldest first, and kept the newest.
        assert len(closed) >= total - SMALL_MAX_CONNECTIONS, (len(closed), total)
        assert len(closed) < total
        assert closed == list(range(len(closed))), closed[:20]
    finally:
        for sock in idle:
            sock.close()
        started.stop()
