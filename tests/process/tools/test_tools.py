"""The operator tools, run as an operator runs them (tools/<name>), against a whole real appliance."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from daemon.errors import EXIT_OK, EXIT_SHARD_DOWN
from daemon.queue.keys import draining_key, processing_key, queue_key
from testkit.harness import REPO, wait_until
from tools.flush_queues import DROP_MESSAGE

pytestmark = pytest.mark.slow


def tool(name: str, appliance, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "tools" / name), "--config", str(appliance.config), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.fixture()
def photo_file(tmp_path: Path, photo_png: bytes) -> Path:
    path = tmp_path / "astronaut.png"
    path.write_bytes(photo_png)
    return path


def test_gpu_status_and_stress_on_two_shards_then_one_worker_stopped(start_appliance, photo_file):
    appliance = start_appliance(shards=2)
    status = tool("gpu_status", appliance)
    assert status.returncode == EXIT_OK, status.stdout + status.stderr
    rows = status.stdout.splitlines()
    for number, row in enumerate(rows[1:3]):
        cells = row.split()
        assert cells[0] == f"cpu{number}" and cells[1] == "CPU" and cells[2:6] == ["-"] * 4
        assert cells[8] == "live" and int(cells[9]) == appliance.pid_of(f"worker:worker-{number}")
    assert rows[-1] == "2 shard(s): 2 live, 0 down"

    load = tool("stress", appliance, str(photo_file), "-n", "40", "-c", "4", "--json")
    assert load.returncode == EXIT_OK, load.stdout + load.stderr
    summary = json.loads(load.stdout)
    assert summary["requests"] == 40 and summary["status_counts"] == {"200": 40}
    assert set(summary["shards"]) == {"cpu0", "cpu1"} and sum(summary["shards"].values()) == 40
    assert 1.0 <= summary["mean_batch_size"] <= 4  # never more than the 4 requests in flight
    assert summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"] <= summary["latency_ms"]["max"]

    # The batches the stress run caused now show in each shard's last-minute figures.
    after = json.loads(tool("gpu_status", appliance, "--json").stdout)
    assert all(shard["images_per_s"] > 0 and shard["mean_batch_size"] >= 1 for shard in after["shards"])
    assert sum(shard["images_per_s"] for shard in after["shards"]) == pytest.approx(40 / 60, abs=0.02)

    assert "stopped" in appliance.supervisorctl("stop", "worker:worker-1")
    status = tool("gpu_status", appliance)
    assert status.returncode == EXIT_SHARD_DOWN, status.stdout
    cpu1 = next(row for row in status.stdout.splitlines() if row.startswith("cpu1"))
    assert "DOWN" in cpu1
    assert status.stdout.splitlines()[-1] == "2 shard(s): 1 live, 1 down (cpu1)"


def test_stress_reports_the_batch_size_the_appliance_ran(start_appliance, photo_file):
    """Eight clients, one shard taking batches of four and waiting long for them: every batch is four."""
    appliance = start_appliance(shards=1, batching={"max_batch_size": 4, "max_wait_ms": 5000})
    load = tool("stress", appliance, str(photo_file), "-n", "16", "-c", "8", "--json")
    assert load.returncode == EXIT_OK, load.stdout + load.stderr
    summary = json.loads(load.stdout)
    assert summary["status_counts"] == {"200": 16}
    assert summary["mean_batch_size"] == 4.0


def _six_callers_waiting(
    appliance, client, pool: ThreadPoolExecutor, photo_png: bytes
) -> list[Future[requests.Response]]:
    """Six /predict callers sent while the shard's worker is frozen, returned once all six jobs wait."""

    def classify(i: int) -> requests.Response:
        files = {"image": (f"photo{i}.png", photo_png, "image/png")}
        return requests.post(f"{appliance.url}/predict", files=files, timeout=60)

    futures = [pool.submit(classify, i) for i in range(6)]
    # A worker frozen inside its blocking claim still gets one job moved for it by Redis: in flight.
    wait_until("6 jobs waiting for the frozen worker", lambda: _waiting(client) == 6, 20, appliance.output)
    return futures


def test_flush_queues_answers_waiting_callers_503_at_once_and_keeps_other_keys(start_appliance, photo_png):
    # A long heartbeat TTL keeps the frozen worker "live", so jobs queue behind it instead of being refused.
    appliance = start_appliance(shards=1, queue={"heartbeat_ttl_s": 60}, api={"request_timeout_s": 30})
    client = appliance.redis()
    client.set("billing:invoice:42", "paid")
    worker = appliance.pid_of("worker:worker-0")
    os.kill(worker, signal.SIGSTOP)
    pool = ThreadPoolExecutor(max_workers=6)
    try:
        futures = _six_callers_waiting(appliance, client, pool, photo_png)
        queued = client.llen(queue_key("cpu0"))

        dry = tool("flush_queues", appliance, "--purge", "--dry-run")
        assert dry.returncode == EXIT_OK, dry.stderr
        assert dry.stdout.splitlines()[1].split()[:2] == ["cpu0", str(queued)]
        assert client.llen(queue_key("cpu0")) == queued

        flushed = tool("flush_queues", appliance, "--purge")
        assert flushed.returncode == EXIT_OK, flushed.stderr
        assert f"dropped {queued} queued job(s)" in flushed.stdout
        # Every dropped caller is answered while the worker is still frozen: a clean 503, no hang.
        wait_until(f"{queued} callers answered", lambda: sum(f.done() for f in futures) >= queued, 10)
        # A wrong extra answer (the claimed job dropped too) would be a 503 counted below, after the resume.
        dropped = [future for future in futures if future.done()]
        assert len(dropped) == queued
        for future in dropped:
            response = future.result()
            assert response.json() == {"success": False, "error": DROP_MESSAGE}
            assert response.headers["Retry-After"] == "1"
    finally:
        os.kill(worker, signal.SIGCONT)
        pool.shutdown(wait=True)
    # The job the worker had already claimed was left alone and is answered once the worker runs again.
    statuses = sorted(f.result().status_code for f in futures)
    assert statuses == [200] * (6 - queued) + [503] * queued
    assert client.get("billing:invoice:42") == b"paid"
    after = requests.post(f"{appliance.url}/predict", files={"image": ("p.png", photo_png)}, timeout=30)
    assert after.status_code == 200


def test_flush_queues_drain_finishes_every_waiting_job_and_drops_none(start_appliance, photo_png):
    appliance = start_appliance(shards=1, queue={"heartbeat_ttl_s": 60}, api={"request_timeout_s": 30})
    client = appliance.redis()
    worker = appliance.pid_of("worker:worker-0")
    os.kill(worker, signal.SIGSTOP)
    pool = ThreadPoolExecutor(max_workers=6)
    drain: subprocess.Popen[str] | None = None
    try:
        futures = _six_callers_waiting(appliance, client, pool, photo_png)
        queued = client.llen(queue_key("cpu0"))
        drain = subprocess.Popen(
            [
                str(REPO / "tools" / "flush_queues"),
                "--config",
                str(appliance.config),
                "--drain",
                "--json",
                "--shard",
                "cpu0",
                "--timeout",
                "60",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # While the worker is frozen the drain waits, and drops nothing: no caller is answered.
        wait_until("the shard marked draining", lambda: client.get(draining_key("cpu0")) is not None, 20)
        assert drain.poll() is None and not any(f.done() for f in futures)
        assert _waiting(client) == 6
    finally:
        os.kill(worker, signal.SIGCONT)
    try:
        assert drain is not None
        out, err = drain.communicate(timeout=60)
        assert drain.returncode == EXIT_OK, err
        assert json.loads(out)["shards"] == [
            {"shard": "cpu0", "queued": queued, "in_flight": 6 - queued, "left": 0}
        ]
        assert _waiting(client) == 0
        assert sorted(f.result().status_code for f in futures) == [200] * 6
    finally:
        if drain is not None and drain.poll() is None:
            drain.kill()
        pool.shutdown(wait=True)


def _waiting(client) -> int:
    return int(client.llen(queue_key("cpu0"))) + int(client.llen(processing_key("cpu0")))
