"""The stress tool's engine and report, against a small real HTTP server answering the way /predict does."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from daemon.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from testkit.harness import REPO, free_port, wait_until
from tools import stress
from tools.loadgen import BOUNDARY, LoadRun, LoadStillRunning, Upload, load_uploads, percentile, run_load


class PredictLike(BaseHTTPRequestHandler):
    """/predict answers 200 after `delay_s` with inferd's headers; /busy answers 503; /close hangs up after.

    It notes when each request arrived and how many it held at once, so tests check what the server saw
    rather than what the client says it did.
    """

    protocol_version = "HTTP/1.1"  # keep-alive, as gunicorn does
    delay_s = 0.0
    versions_from = 0
    """Requests after this many are answered by model version 2 (0: all by version 1)."""
    hold_until = 0
    """The first requests wait until this many have arrived (10 s at most), so that many are held at once."""
    served = 0
    in_flight = 0
    most_in_flight = 0
    arrivals: ClassVar[list[float]] = []
    lock = threading.Condition()

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without this, Nagle + delayed ACK add 40 ms to each.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        assert body.startswith(f"--{BOUNDARY}".encode())
        with PredictLike.lock:
            PredictLike.arrivals.append(time.monotonic())
            PredictLike.served += 1
            PredictLike.in_flight += 1
            PredictLike.most_in_flight = max(PredictLike.most_in_flight, PredictLike.in_flight)
            PredictLike.lock.notify_all()
            number = PredictLike.served
            PredictLike.lock.wait_for(lambda: PredictLike.served >= PredictLike.hold_until, 10)
        if self.path == "/busy":
            self.answer(503, {"success": False, "error": "all 2 shard queue(s) are full"}, {})
            return
        time.sleep(self.delay_s)
        self.answer(
            200,
            {"success": True},
            {
                "X-Inferd-Shard": f"cpu{number % 2}",
                "X-Inferd-Batch-Size": "2",
                "X-Inferd-Model-Version": "2" if 0 < PredictLike.versions_from < number else "1",
            },
        )
        if self.path == "/close":
            # Hang up at once, without saying so: what a keep-alive timeout looks like to a client.
            self.request.shutdown(socket.SHUT_WR)
            self.close_connection = True

    def answer(self, status: int, body: dict[str, object], headers: dict[str, str]) -> None:
        with PredictLike.lock:
            # Before the answer goes out: once the client has it, the request is no longer held here.
            PredictLike.in_flight -= 1
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    PredictLike.delay_s, PredictLike.hold_until, PredictLike.versions_from = 0.0, 0, 0
    PredictLike.served = PredictLike.in_flight = PredictLike.most_in_flight = 0
    PredictLike.arrivals = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), PredictLike)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


PHOTO = Upload.of("photo.png", b"\x89PNG fake pixels")


def test_upload_is_a_multipart_body_with_the_image_field():
    raw = f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n".encode() + PHOTO.body
    (part,) = BytesParser(policy=email_policy).parsebytes(raw).iter_parts()
    assert part.get_param("name", header="content-disposition") == "image"
    assert part.get_filename() == "photo.png" and part.get_content_type() == "image/png"
    assert part.get_content() == b"\x89PNG fake pixels"


def test_images_from_a_folder_skip_other_files(tmp_path: Path):
    (tmp_path / "b.jpg").write_bytes(b"b")
    (tmp_path / "a.PNG").write_bytes(b"a")
    (tmp_path / "notes.txt").write_text("not an image")
    assert [upload.name for upload in load_uploads(tmp_path)] == ["a.PNG", "b.jpg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no image file"):
        load_uploads(tmp_path / "empty")


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, p) for p in (50, 90, 99, 100)] == [50.0, 90.0, 99.0, 100.0]
    assert percentile([7.0], 99) == 7.0
    assert [percentile([1.0, 2.0, 3.0, 4.0], p) for p in (25, 26, 75, 76)] == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_closed_loop_sends_exactly_n_and_reports_statuses_shards_and_batches(server):
    PredictLike.delay_s, PredictLike.hold_until, PredictLike.versions_from = 0.01, 4, 30
    result = run_load(f"{server}/predict", [PHOTO], concurrency=4, requests=40)
    summary = result.summary()
    assert PredictLike.served == 40 and summary.requests == 40
    assert summary.status_counts == {"200": 40} and summary.ok == 40
    assert summary.shards == {"cpu0": 20, "cpu1": 20}
    assert summary.model_versions == {"1": 30, "2": 10}
    assert summary.mean_batch_size == 2.0
    assert 10.0 <= summary.latency_ms["p50"] <= summary.latency_ms["p99"] <= summary.latency_ms["max"]
    # Four clients: the server held four requests at once (it waits for them), and never a fifth.
    assert PredictLike.most_in_flight == 4
    assert summary.throughput_rps == round(40 / result.elapsed_s, 2)


def test_open_loop_starts_requests_on_schedule_whatever_the_latency(server):
    PredictLike.delay_s = 0.3
    started = time.monotonic()
    result = run_load(server, [PHOTO], rate=20, duration_s=1.0, concurrency=16)
    took = time.monotonic() - started
    summary = result.summary()
    assert summary.requests == 20 and summary.ok == 20
    # When the server saw each request: never before it was due (request i at i/20 s), although 16 clients
    # could have sent them all at once, and never so late that a slow answer held the next one back.
    arrived = sorted(at - started for at in PredictLike.arrivals)
    assert len(arrived) == 20
    assert all(at >= i / 20 for i, at in enumerate(arrived)), arrived
    assert all(at < i / 20 + 1.0 for i, at in enumerate(arrived)), arrived  # one client: i x 0.3 s
    # One client in closed loop would need 20 x 0.3 = 6 s; on schedule it is 1 s plus the last latency.
    assert took < 4.0
    assert [round(r.start_s, 3) for r in result.records] == [round(i / 20, 3) for i in range(20)]
    assert summary.max_lag_ms < 500


def test_failures_are_counted_with_their_reason_never_raised(server):
    summary = run_load(f"{server}/busy", [PHOTO], concurrency=2, requests=6).summary()
    assert summary.status_counts == {"503": 6} and summary.ok == 0
    assert summary.errors == {"503: all 2 shard queue(s) are full": 6}

    nobody = f"http://127.0.0.1:{free_port()}/predict"
    summary = run_load(nobody, [PHOTO], concurrency=2, requests=4, timeout_s=2).summary()
    assert summary.status_counts == {"error": 4}
    assert summary.throughput_rps == 0.0
    assert all(error.startswith("no answer: ConnectionRefusedError") for error in summary.errors)


def test_a_connection_the_server_closed_while_idle_costs_no_request(server):
    # The server hangs up right after each answer; 100 ms apart leaves its close time to arrive even on a
    # loaded machine, as after a keep-alive timeout.
    summary = run_load(f"{server}/close", [PHOTO], concurrency=1, rate=10, requests=8).summary()
    assert summary.status_counts == {"200": 8}
    assert PredictLike.served == 8  # each sent once, on a fresh connection


def test_stop_ends_a_long_run_early(server):
    run = LoadRun(server, [PHOTO], concurrency=2, duration_s=60).start()
    wait_until("five answers", lambda: run.completed() >= 5, 10)
    run.stop()
    result = run.wait(timeout_s=10)
    assert 5 <= len(result.records) == PredictLike.served
    assert result.elapsed_s < 10  # of 60


def test_wait_says_when_requests_are_still_in_flight(server):
    PredictLike.delay_s = 3.0
    run = LoadRun(server, [PHOTO], concurrency=2, requests=2).start()
    wait_until("both requests to reach the server", lambda: PredictLike.served == 2, 10)
    with pytest.raises(LoadStillRunning, match="2 request\\(s\\) in flight") as timed_out:
        run.wait(timeout_s=0.5)
    assert timed_out.value.in_flight == 2 and timed_out.value.records == []
    result = run.wait(timeout_s=30)  # the same run, waited for long enough, accounts for both
    assert [r.status for r in result.records] == [200, 200]


def test_cli_prints_a_report_or_json_and_exits_by_outcome(server, tmp_path, capsys):
    image = tmp_path / "photo.png"
    image.write_bytes(b"fake")
    assert stress.main([str(image), "--url", server, "-n", "12", "-c", "3"]) == EXIT_OK
    report = capsys.readouterr().out
    assert report.startswith(f"12 requests to {server}/predict, 3 concurrent, 1 image(s)")
    assert "status       200 x 12" in report
    assert "shards       cpu0 6 (50%)   cpu1 6 (50%)" in report
    assert "model        version 1 x 12" in report

    assert stress.main([str(image), "--url", f"{server}/busy", "-n", "3", "--json"]) == EXIT_FAILED
    summary = json.loads(capsys.readouterr().out)
    assert summary["status_counts"] == {"503": 3} and summary["requests"] == 3

    for wrong in ([str(tmp_path / "missing.png"), "--url", server], [str(image), "--url", server, "-c", "0"]):
        with pytest.raises(SystemExit) as exited:
            stress.main(wrong)
        assert exited.value.code == EXIT_USAGE


def test_plot_writes_a_png(server, tmp_path, capsys):
    image, figure = tmp_path / "photo.png", tmp_path / "latency.png"
    image.write_bytes(b"fake")
    assert stress.main([str(image), "--url", server, "-n", "20", "--plot", str(figure)]) == EXIT_OK
    assert figure.read_bytes().startswith(b"\x89PNG")


def test_nothing_listening_stops_at_once_with_one_line_and_sends_nothing(tmp_path, capsys):
    image = tmp_path / "photo.png"
    image.write_bytes(b"fake")
    with socket.socket() as closed:  # bound but not listening: connecting is refused, as at a dead port
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
        started = time.monotonic()
        code = stress.main([str(image), "--url", url, "-d", "15", "--json"])
    assert code == EXIT_FAILED and time.monotonic() - started < 5
    captured = capsys.readouterr()
    assert captured.out == ""  # no report of thousands of refused requests
    assert captured.err.strip() == f"stress: nothing answers at {url}/predict: Connection refused"


SIGINT_AT_DEFAULT = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
"""Run as `python -c`: SIGINT at its default (which exec keeps), then the program in argv[1:]."""


def stress_process(server: str, image: Path, *args: str) -> subprocess.Popen[str]:
    """tools/stress as an operator runs it, in a process of its own (a Ctrl-C reaches it alone).

    A shell without job control starts background commands with SIGINT ignored, and Python then installs no
    KeyboardInterrupt: a suite run as `.ci/run &` would test a Ctrl-C no operator's terminal delivers. So
    SIGINT is put back to its default by a Python that then execs stress, not by a preexec_fn: this process has threads (TensorFlow's,
    the test server's), and Python code between fork and exec can deadlock on a lock one of them held."""
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            SIGINT_AT_DEFAULT,
            str(REPO / "tools" / "stress"),
            str(image),
            "--url",
            server,
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_the_first_ctrl_c_stops_sending_and_reports_what_was_measured(server, tmp_path):
    PredictLike.delay_s = 0.02
    image = tmp_path / "photo.png"
    image.write_bytes(b"fake")
    proc = stress_process(server, image, "-d", "60", "-c", "2", "--json")
    try:
        wait_until("ten answers", lambda: PredictLike.served >= 10, 30)
        interrupted = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert time.monotonic() - interrupted < 10, "Ctrl-C did not stop a 60 s run"
    assert proc.returncode == EXIT_OK, stderr
    summary = json.loads(stdout)
    assert summary["requests"] == PredictLike.served >= 10  # what was sent was all answered and counted
    assert summary["status_counts"] == {"200": summary["requests"]} and summary["elapsed_s"] < 60


def test_a_duration_over_600_s_never_runs_over_600_s(server, tmp_path):
    """The README: "-d seconds (600 s at most)". Asked for 601 s, stress must not take it (it may refuse at once,
    or hold the run to 600 s); a short check: it exits at once, refusing, and names the limit."""
    image = tmp_path / "photo.png"
    image.write_bytes(b"fake")
    proc = stress_process(server, image, "-d", "601", "-c", "1")
    try:
        _, stderr = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("stress -d 601 was still running after 20 s: it took the 601 s") from None
    assert proc.returncode == EXIT_USAGE and "600" in stderr, stderr
    assert PredictLike.served == 0
