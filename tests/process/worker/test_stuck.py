"""Liveness means progress: a worker whose model call hangs is found, restarted, and its callers answered.

The model is the stand-in (daemon/model/standin.py) told to block forever on a given batch, with the GIL released,
as a wedged device call does: the worker's heartbeat thread keeps running, which is exactly the case where a
heartbeat alone would keep the shard "live" forever.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client import CollectorRegistry, generate_latest

from daemon.errors import EXIT_STUCK
from daemon.metrics.inferd import QueueCollector
from daemon.queue.keys import heartbeat_key
from daemon.queue.registry import read_shards
from testkit.config import run_tool
from testkit.harness import PYTHON, Service, wait_until
from tests.process.test_worker_process import push_job

pytestmark = pytest.mark.slow


def standin(tmp_path, hang_after_batches: int) -> str:
    path = tmp_path / "hangs.json"
    path.write_text(
        json.dumps({"inferd_standin": 1, "batch_ms": 5, "hang_after_batches": hang_after_batches})
    )
    return str(path)


def post(url: str, image: bytes, timeout_s: float = 60) -> requests.Response:
    return requests.post(f"{url}/predict", files={"image": ("p.png", image)}, timeout=timeout_s)


def metric(url: str, line_start: str) -> float:
    for line in requests.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_hung_model_is_reported_stuck_its_caller_answered_and_the_shard_recovers(
    start_appliance, tmp_path, photo_png
):
    appliance = start_appliance(
        shards=1,
        model={"path": standin(tmp_path, hang_after_batches=0)},
        queue={"stuck_after_s": 1.5},
        api={"request_timeout_s": 4.0},
    )
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(post, appliance.url, photo_png)
        seen: dict[str, object] = {}

        def reported_stuck() -> bool:
            body = requests.get(f"{appliance.url}/readyz", timeout=5).json()
            seen.update(body)
            return bool(body.get("shards", {}).get("cpu0") == "stuck")

        wait_until("/readyz to report cpu0 stuck", reported_stuck, 15, appliance.output)
        assert seen["ready"] is False and seen["live_shards"] == []
        result = answer.result()
    assert result.status_code == 504  # its caller is answered at its deadline, not left hanging
    assert "the model call is stuck" in appliance.log_text()
    assert (
        "exited: worker-0 (exit status 70; not expected)" in appliance.log_text()
    )  # so supervisord restarts it
    assert metric(appliance.url, 'inferd_worker_stuck_total{shard="cpu0"}') >= 1
    # Once the job's deadline has passed the restarted worker skips it, stops hanging, and serves again.
    wait_until("cpu0 to be live again", lambda: appliance.live_shards() == ["cpu0"], 30, appliance.output)


def test_jobs_held_by_a_stuck_worker_are_all_answered(start_appliance, tmp_path, photo_png):
    appliance = start_appliance(
        shards=2,
        model={"path": standin(tmp_path, hang_after_batches=2)},
        queue={"stuck_after_s": 1.5},
        api={"request_timeout_s": 45.0},
        batching={"max_wait_ms": 0},
    )
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post(appliance.url, photo_png), range(16)))
    print(f"\n[stuck worker] 16 requests answered in {time.monotonic() - started:.1f}s")
    assert [a.status_code for a in answers] == [200] * 16
    stuck = sum(
        metric(appliance.url, f'inferd_worker_stuck_total{{shard="{shard}"}}') for shard in ("cpu0", "cpu1")
    )
    assert stuck >= 1


def test_a_hung_worker_exits_70_and_every_reader_calls_its_shard_stuck(
    make_settings, redis_socket, redis_client, tmp_path
):
    """No supervisord here to restart it: the state the worker leaves is read as the operator would."""
    settings = make_settings(
        redis={"managed": False, "socket": str(redis_socket)},
        model={"path": standin(tmp_path, hang_after_batches=0)},
        queue={"stuck_after_s": 1.5},
        batching={"max_wait_ms": 0},
    )
    argv = [PYTHON, "-m", "daemon.gpu_worker", "--config", str(settings.source), "--shard-index", "0"]
    worker = Service("worker", argv, tmp_path / "worker.log").start()
    try:
        worker.wait_until("cpu0 to beat", lambda: bool(redis_client.exists(heartbeat_key("cpu0"))), 60)
        push_job(redis_client)
        code = worker.wait_exit(30)
    finally:
        worker.stop()
    assert code == EXIT_STUCK, worker.output()
    assert "the model call is stuck; restarting the worker" in worker.log_text()

    assert [state.status for state in read_shards(redis_client)] == ["stuck"]
    registry = CollectorRegistry()
    registry.register(QueueCollector(redis_client))
    exposition = generate_latest(registry).decode()
    assert 'inferd_shard_status{shard="cpu0",status="stuck"} 1.0' in exposition, exposition
    status = run_tool("gpu_status", settings.source, "--json", timeout_s=30)
    assert json.loads(status.stdout)["shards"][0]["status"] == "stuck", status.stdout + status.stderr
