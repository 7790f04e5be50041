"""Two appliances behind a real HAProxy (the config tools/haproxy_config.py prints), under 16 clients.

A box dies (SIGKILL of its whole process tree), stops (SIGTERM), is restarted one after the other, or is
drained for maintenance: every request sent through HAProxy is answered 200. The counts are printed
(`pytest -s` shows them). Each test also checks what makes the zero honest: that the fault met requests in
flight (HAProxy retried some), that a stopping box turned not-ready while its API still accepted, and that
HAProxy saw a failed readiness check rather than a refused connection.
"""

from __future__ import annotations

import csv
import http.server
import io
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

from daemon.ops.run_dir import leftover_processes
from testkit.harness import REPO, Appliance, free_port, wait_until
from testkit.tls import Certificates, make_certificates
from tests.conftest import standin_model
from tests.needs import need_program
from tools.haproxy_config import Box, Checks, render
from tools.loadgen import LoadResult, LoadRun, Upload

pytestmark = pytest.mark.slow
HAPROXY = need_program("haproxy", "Debian's haproxy")

CLIENTS = 16
CHECKS = Checks(inter_ms=300, fall=2, rise=2)
GRACE_S = 2.0
"""api.drain_grace_s of the boxes: above fall x inter (0.6 s) with room for a loaded machine."""


class Proxy:
    """`haproxy -db` on a generated config, in its own process group."""

    def __init__(self, folder: Path, ports: list[int], tls_ca: Path | None = None) -> None:
        self.port, self.stats_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = render(
            [Box("127.0.0.1", port, 1) for port in ports],
            bind=f"127.0.0.1:{self.port}",
            stats=f"127.0.0.1:{self.stats_port}",
            checks=CHECKS,
            maxconn=CLIENTS,
            max_retried_body=1 << 20,
            server_timeout_s=15,
            tls_ca=tls_ca,
        )
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "haproxy.cfg"
        self.config.write_text(config)
        self.log = folder / "haproxy.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def servers(self) -> dict[str, dict[str, str]]:
        """The stats page's CSV rows of the backend's servers, by name (box1, box2)."""
        text = requests.get(f"http://127.0.0.1:{self.stats_port}/;csv", timeout=2).text
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {
            row["svname"]: {**row, "check_status": last_check(row["check_status"])}
            for row in rows
            if row["pxname"] == "appliances" and row["svname"].startswith("box")
        }

    def wait_status(self, server: str, status: str, timeout_s: float = 60) -> dict[str, str]:
        rows: list[dict[str, str]] = []

        def reached() -> bool:
            rows[:] = [self.servers()[server]]
            return rows[0]["status"] == status

        wait_until(f"HAProxy to see {server} {status}", reached, timeout_s, self.output)
        return rows[0]

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(10)


def last_check(check_status: str) -> str:
    """The outcome of a server's last finished health check: while a check runs, HAProxy's stats show the
    last one's outcome prefixed with "* " (its management guide, "check_status"), which a test that
    polls at the wrong instant would otherwise read as an outcome of its own."""
    return check_status.removeprefix("* ")


@contextmanager
def behind_haproxy(
    start_appliance, folder: Path, **overrides: dict[str, Any]
) -> Iterator[tuple[Appliance, Appliance, Proxy]]:
    """Two one-shard appliances and an HAProxy in front of them, both boxes seen UP."""

    def box() -> Appliance:
        api = {"workers": 1, "drain_grace_s": GRACE_S, "request_timeout_s": 20.0}
        started: Appliance = start_appliance(shards=1, api=api, **overrides)
        return started

    first, second = box(), box()
    proxy = Proxy(folder, [first.port, second.port])
    try:
        proxy.wait_status("box1", "UP")
        proxy.wait_status("box2", "UP")
        yield first, second, proxy
    finally:
        proxy.stop()


@pytest.fixture()
def pair(start_appliance, tmp_path) -> Iterator[tuple[Appliance, Appliance, Proxy]]:
    with behind_haproxy(start_appliance, tmp_path) as boxes:
        yield boxes


def load(proxy: Proxy, photo_png: bytes, duration_s: float) -> LoadRun:
    upload = Upload.of("photo.png", photo_png)
    return LoadRun(
        f"{proxy.url}/predict", [upload], concurrency=CLIENTS, duration_s=duration_s, timeout_s=60
    ).start()


def account(name: str, result: LoadResult) -> Counter[str]:
    counts: Counter[str] = Counter(sent=len(result.records))
    for record in result.records:
        counts["answered_200" if record.status == 200 else "failed"] += 1
    failures = Counter(f"{r.status}: {r.error}" for r in result.records if r.status != 200)
    print(
        f"\n[{name}] sent={counts['sent']} answered_200={counts['answered_200']} failed={counts['failed']} {dict(failures)}"
    )
    return counts


def retries(proxy: Proxy, server: str) -> int:
    row = proxy.servers()[server]
    return int(row["wretr"] or 0) + int(row["wredis"] or 0)


def kill_tree(appliance: Appliance) -> None:
    """SIGKILL supervisord and every program it started, all at once (no parent-death signal gets a say)."""
    pids = [appliance.pid, *leftover_processes(appliance.run_dir)]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert appliance.wait_exit(10) is not None


def sigterm(appliance: Appliance) -> None:
    os.kill(appliance.pid, signal.SIGTERM)  # supervisord alone, as systemd's KillMode=mixed does


def wait_served(proxy: Proxy, server: str, more: int = 5) -> None:
    """Until HAProxy has sent `server` `more` further requests: the load is on that box now."""
    before = int(proxy.servers()[server]["stot"])
    wait_until(
        f"HAProxy to send {server} {more} more requests",
        lambda: int(proxy.servers()[server]["stot"]) >= before + more,
        60,
        proxy.output,
    )


def test_sigkill_of_one_box_fails_no_request(pair, photo_png):
    first, _second, proxy = pair
    run = load(proxy, photo_png, duration_s=16)
    wait_served(proxy, "box1")
    kill_tree(first)
    killed_at = run.elapsed_s()
    down = proxy.wait_status("box1", "DOWN", 30)
    result = run.wait(90)
    counts = account("sigkill one box", result)
    assert counts["failed"] == 0 and counts["sent"] > 0
    assert any(r.start_s > killed_at + 2 for r in result.records), "the load ended before the box was gone"
    assert retries(proxy, "box1") > 0, "no request was in flight on the killed box: the test proved nothing"
    assert down["check_status"] in ("L4CON", "L4TOUT", "L7RSP", "SOCKERR"), down["check_status"]


@pytest.mark.timeout(900)  # four appliance starts on a loaded 2-core machine
def test_sigterm_turns_not_ready_first_then_a_rolling_restart_fails_no_request(pair, photo_png):
    first, second, proxy = pair

    # One box stops: not ready while its API still accepts, HAProxy moves away, it finishes and exits 0.
    run = load(proxy, photo_png, duration_s=120)
    wait_served(proxy, "box1")
    sigterm(first)
    not_ready: list[requests.Response] = []

    def draining_while_accepting() -> bool:
        ready = requests.get(f"{first.url}/readyz", timeout=2)
        not_ready[:] = [ready]
        return ready.status_code == 503 and requests.get(f"{first.url}/healthz", timeout=2).status_code == 200

    wait_until("the stopping box's /readyz to answer 503 while its API accepts", draining_while_accepting, 10)
    assert not_ready[0].json()["reason"].startswith("draining (shutdown)")
    down = proxy.wait_status("box1", "DOWN", 10)
    assert down["check_status"] == "L7STS", f"HAProxy saw {down['check_status']}, not the 503 of /readyz"
    assert requests.get(f"{first.url}/healthz", timeout=2).status_code == 200, (
        "the API stopped before the grace"
    )
    assert first.wait_exit(60) == 0
    run.stop()
    counts = account("sigterm one box", run.wait(90))
    assert counts["failed"] == 0 and counts["sent"] > 0

    first.start()
    proxy.wait_status("box1", "UP")

    # Both restarted, one after the other, under load.
    run = load(proxy, photo_png, duration_s=300)
    for number, box in ((1, first), (2, second)):
        wait_served(proxy, f"box{number}")
        sigterm(box)
        proxy.wait_status(f"box{number}", "DOWN", 15)
        assert box.wait_exit(60) == 0
        box.start()
        proxy.wait_status(f"box{number}", "UP")
    wait_served(proxy, "box2")  # the box restarted last is back in the load
    run.stop()
    result = run.wait(90)
    counts = account("rolling restart of both boxes", result)
    assert counts["failed"] == 0 and counts["sent"] > 0
    served = {row: int(proxy.servers()[row]["stot"]) for row in ("box1", "box2")}
    assert all(served.values()), served


def inferd(appliance: Appliance, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.launcher", "--config", str(appliance.config), *args],
        cwd=REPO,
        env=appliance.env,
        capture_output=True,
        text=True,
        timeout=120,
    )


SLOW_BATCH_MS = 500.0


@pytest.fixture()
def slow_pair(start_appliance, tmp_path) -> Iterator[tuple[Appliance, Appliance, Proxy]]:
    # The drain must close on work in hand however loaded the machine is. Each box's worker answers two jobs per
    # 0.5 s batch (a stand-in model), so the 8 direct clients keep jobs queued unless all of them take over
    # 1.5 s to send their next request. The tiny model with a 300 ms batching window answered faster than the
    # clients sent: beside two CPU hogs the queue was once empty at the close (queued 0, in flight 0).
    model = {"path": standin_model(tmp_path, SLOW_BATCH_MS)}
    with behind_haproxy(start_appliance, tmp_path, model=model, batching={"max_batch_size": 2}) as boxes:
        yield boxes


def test_drain_under_load_answers_what_was_queued_and_moves_new_work_away(slow_pair, photo_png):
    first, _second, proxy = slow_pair
    upload = Upload.of("photo.png", photo_png)
    through_proxy = load(proxy, photo_png, duration_s=300)
    # Direct clients of the drained box see what it does without a balancer in front.
    direct = LoadRun(f"{first.url}/predict", [upload], concurrency=8, duration_s=300, timeout_s=60).start()
    wait_served(proxy, "box1")
    wait_until("direct clients to be answered", lambda: direct.completed() >= 8, 60, first.output)
    drained = inferd(first, "drain", "--json")
    drain_done_at = direct.elapsed_s()
    assert drained.returncode == 0, drained.stdout + drained.stderr
    report = json.loads(drained.stdout)
    print(f"\n[inferd drain] {report} {drained.stderr.strip()}")
    (shard,) = report["shards"]
    assert shard["left"] == 0 and shard["queued"] + shard["in_flight"] > 0, "nothing was queued at the close"
    assert proxy.servers()["box1"]["status"] == "DOWN", "admission closed before HAProxy moved away"

    refused = requests.post(f"{first.url}/predict", files={"image": photo_png}, timeout=30)
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "5"  # as the README says
    assert "draining" in refused.json()["error"]
    wait_until(
        "a direct client to be answered after the drain",
        lambda: any(r.start_s > drain_done_at for r in direct.records()),
        30,
        first.output,
    )
    direct.stop()
    direct_result = direct.wait(90)
    undrained = inferd(first, "undrain")
    assert undrained.returncode == 0, undrained.stderr
    proxy.wait_status("box1", "UP")
    wait_served(proxy, "box1", more=1)  # the undrained box gets work back
    through_proxy.stop()
    counts = account("drain one box behind HAProxy", through_proxy.wait(90))
    assert counts["failed"] == 0 and counts["sent"] > 0

    direct_counts = account("drain, direct clients of the drained box", direct_result)
    statuses = Counter(r.status for r in direct_result.records)
    assert set(statuses) <= {200, 503}, statuses
    after = [r for r in direct_result.records if r.start_s > drain_done_at]
    assert after and all(r.status == 503 and "draining" in (r.error or "") for r in after)
    assert direct_counts["answered_200"] > 0


@contextmanager
def https_box(certificates: Certificates) -> Iterator[int]:
    """A stand-in box whose front door speaks only TLS (the site CA's certificate for inferd.example): every
    GET and POST gets 200. HAProxy's side of TLS is what is under test; nginx's is tests/process/test_notify."""

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates.chain, certificates.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_a_tls_only_box_is_checked_and_served_over_tls_given_its_ca(tmp_path):
    certificates = make_certificates(tmp_path / "tls")
    with https_box(certificates) as port:
        plain = Proxy(tmp_path / "plain", [port])
        try:
            row = plain.wait_status("box1", "DOWN")
            print(f"\n[without --tls-ca] box1 {row['status']} {row['check_status']}")
        finally:
            plain.stop()
        tls = Proxy(tmp_path / "tls-proxy", [port], tls_ca=certificates.ca)
        try:
            tls.wait_status("box1", "UP")
            answer = requests.post(f"{tls.url}/predict", data=b"x", timeout=10)
            assert answer.status_code == 200, tls.output()
        finally:
            tls.stop()
