"""Health, readiness and Prometheus metrics of a running appliance."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.slow


def metric(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$"
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"{name}{labels} not in /metrics:\n{text}"
    return float(found.group(1))


def test_health_ready_and_metrics(start_appliance, photo_png):
    appliance = start_appliance(shards=2)
    assert requests.get(f"{appliance.url}/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(f"{appliance.url}/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["live_shards"] == ["cpu0", "cpu1"]

    for _ in range(10):
        ok = requests.post(f"{appliance.url}/predict", files={"image": photo_png}, timeout=30)
        assert ok.status_code == 200
    bad = requests.post(f"{appliance.url}/predict", files={"image": b""}, timeout=30)
    assert bad.status_code == 400

    text = requests.get(f"{appliance.url}/metrics", timeout=5).text
    # Summed over both gunicorn processes and both model workers (multiprocess mode).
    assert metric(text, "inferd_requests_total", '{status="200"}') == 10
    assert metric(text, "inferd_requests_total", '{status="400"}') == 1
    assert metric(text, "inferd_request_seconds_count") == 11
    assert metric(text, "inferd_queue_wait_seconds_count") == 10
    images = metric(text, "inferd_images_total", '{shard="cpu0"}') + metric(
        text, "inferd_images_total", '{shard="cpu1"}'
    )
    assert images == 10  # warm-up batches are not counted; every served image is, once
    assert metric(text, "inferd_batch_size_count", '{shard="cpu0"}') >= 1
    assert metric(text, "inferd_worker_starts_total", '{shard="cpu1"}') == 1
    assert metric(text, "inferd_queue_depth", '{shard="cpu0"}') == 0
    assert metric(text, "inferd_shard_live", '{shard="cpu1"}') == 1
    assert metric(text, "inferd_redis_up") == 1

    # A worker killed and restarted by supervisord shows as a second start of its shard.
    appliance.supervisorctl("restart", "worker:worker-1")
    appliance.wait_ready()
    text = requests.get(f"{appliance.url}/metrics", timeout=5).text
    assert metric(text, "inferd_worker_starts_total", '{shard="cpu1"}') == 2


def test_inferd_log_level_reaches_every_process_of_the_appliance(start_appliance, photo_png):
    # CHANGELOG: INFERD_LOG_LEVEL is honoured the same way by every process. Set to WARNING in the launcher's
    # environment, it must be in every program supervisord runs, and their INFO lines must be gone.
    appliance = start_appliance(shards=1, env={"INFERD_LOG_LEVEL": "WARNING"})
    answer = requests.post(f"{appliance.url}/predict", files={"image": ("p.png", photo_png)}, timeout=30)
    assert answer.status_code == 200
    # Every Python program of the appliance (nginx rewrites its environ area; Redis does not read it).
    programs = ["worker:worker-0", "api", "api2", "shard_watch"]
    for program in programs:
        pid = appliance.pid_of(program)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"INFERD_LOG_LEVEL=WARNING" in environ, program
    output = appliance.log_text()
    # The worker's INFO line on start ("... serving on cpu0 (pid N)"), the API's Python loggers, notify's and
    # the drain program's: each logs at INFO at the default level.
    assert " serving on " not in output, output[-2000:]
    assert not re.search(r"\bINFO\b.*(notify|drain):", output), output[-2000:]
