"""Faults under steady load against a real appliance with two CPU shards: nothing lost, nothing hung.

Each test drives load with the stress tool's engine, breaks something while it runs, and then accounts for
every request: a 200, or a clean JSON 503/504 where the fault made that the honest answer. A request with no
HTTP answer at all (status 0) is lost, and one still unanswered when the wait ends fails the test
(`LoadRun.wait` raises). The counts are printed (`pytest -s` shows them).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest
import requests

from tools.harness import wait_until
from tools.loadgen import LoadResult, LoadRun, RequestRecord, Upload

pytestmark = pytest.mark.slow

CLEAN_ERRORS = {503, 504}
FLOWING_OKS = 10
"""200s the load must have had before a fault is injected, so the fault lands on a working appliance."""


def steady_load(appliance, photo_png: bytes, concurrency: int = 6, duration_s: float = 60) -> LoadRun:
    """Start the load and return once it flows (FLOWING_OKS answers with 200)."""
    upload = Upload.of("photo.png", photo_png)
    run = LoadRun(
        f"{appliance.url}/predict", [upload], concurrency=concurrency, duration_s=duration_s, timeout_s=30
    ).start()

    def flowing() -> bool:
        return sum(1 for r in run.records() if r.status == 200) >= FLOWING_OKS

    wait_until(f"{FLOWING_OKS} answers with 200", flowing, 60, appliance.output)
    return run


def account(name: str, result: LoadResult, fault_at: float, recovered_at: float | None) -> Counter[str]:
    """Print and return sent / 200 / clean error / lost, and the time from the fault to the first 200 after."""
    counts: Counter[str] = Counter(sent=len(result.records))
    for record in result.records:
        counts[outcome(record)] += 1
    recovery = f"{recovered_at - fault_at:.1f}s" if recovered_at is not None else "n/a"
    print(
        f"\n[{name}] sent={counts['sent']} ok_200={counts['ok']} clean_error={counts['clean_error']} "
        f"lost={counts['lost']} unclean={counts['unclean']} recovery={recovery}"
    )
    return counts


def outcome(record: RequestRecord) -> str:
    if record.status == 200:
        return "ok"
    if record.status in CLEAN_ERRORS and record.error and not record.error.lstrip().startswith("<"):
        return "clean_error"
    if record.status == 0:
        return "lost"
    return "unclean"


def first_ok_after(run: LoadRun, moment: float, timeout_s: float) -> float:
    """Seconds since the load started at which a request begun after `moment` first got a 200."""
    oks: list[float] = []

    def recovered() -> bool:
        oks[:] = [r.start_s + r.latency_s for r in run.records() if r.status == 200 and r.start_s > moment]
        return bool(oks)

    wait_until(f"a 200 for a request sent after the fault ({moment:.1f}s)", recovered, timeout_s)
    return min(oks)


def test_sigkill_of_a_worker_mid_batch_loses_nothing(start_appliance, photo_png):
    # A long batching window keeps the worker holding claims most of the time, so the kill lands mid-batch.
    appliance = start_appliance(shards=2, batching={"max_wait_ms": 300.0}, api={"request_timeout_s": 30.0})
    run = steady_load(appliance, photo_png, duration_s=25)
    victim = appliance.pid_of("worker:worker-0")
    fault_at = run.elapsed_s()
    os.kill(victim, signal.SIGKILL)
    recovered_at = first_ok_after(run, fault_at, 30)
    appliance.wait_restarted("worker:worker-0", victim)
    appliance.wait_ready(60)
    result = run.wait(60)
    counts = account("sigkill worker", result, fault_at, recovered_at)
    assert counts["lost"] == counts["unclean"] == 0
    assert counts["ok"] == counts["sent"]  # the deadline is long enough for every job to be redone
    log = appliance.output()
    assert "requeued" in log or "adopted" in log, "the killed worker held no claims: the test proved nothing"
    # No claim is left behind, and no answer is waiting for a caller that is gone.
    client = appliance.redis()
    assert client.llen("inferd:processing:cpu0") == client.llen("inferd:processing:cpu1") == 0


def test_redis_stop_and_restart(start_appliance, photo_png):
    appliance = start_appliance(shards=2)
    run = steady_load(appliance, photo_png, duration_s=30)
    stopped = appliance.supervisorctl("stop", "redis")  # returns once Redis has exited
    assert "redis: stopped" in stopped, stopped
    fault_at = run.elapsed_s()  # from here on, every request is sent while Redis is down
    started = time.monotonic()
    down = requests.post(f"{appliance.url}/predict", files={"image": photo_png}, timeout=10)
    assert down.status_code == 503 and down.json()["success"] is False
    # Several times what refusing takes, and far below the 10 s request deadline it would otherwise wait out.
    assert time.monotonic() - started < 3.0, "the API must refuse at once while Redis is down"
    assert down.headers["Retry-After"]
    ready = requests.get(f"{appliance.url}/readyz", timeout=5)
    assert ready.status_code == 503 and ready.json()["ready"] is False
    time.sleep(3)
    restarted_at = run.elapsed_s()
    appliance.supervisorctl("start", "redis")
    recovered_at = first_ok_after(run, restarted_at, 30)
    appliance.wait_ready(30)
    result = run.wait(60)
    counts = account("redis stop/start", result, fault_at, recovered_at)
    assert counts["lost"] == counts["unclean"] == 0
    assert counts["clean_error"] > 0 and counts["ok"] > 0
    during = [r for r in result.records if fault_at < r.start_s < restarted_at]
    assert during and all(r.status == 503 and r.latency_s < 3.0 for r in during), during


def test_sigterm_of_the_appliance_answers_every_waiting_request(start_appliance, photo_png):
    appliance = start_appliance(shards=2, batching={"max_wait_ms": 100.0})
    run = steady_load(appliance, photo_png, concurrency=8, duration_s=60)
    fault_at = run.elapsed_s()
    run.stop()  # no new requests; those in flight must each get an answer
    appliance.terminate()  # SIGTERM to supervisord, as systemd sends it
    exit_code = appliance.wait_exit(60)
    result = run.wait(30)
    counts = account("sigterm appliance", result, fault_at, None)
    assert exit_code == 0
    assert counts["lost"] == counts["unclean"] == 0
    assert counts["ok"] > 0
    assert "Redis is now ready to exit" in appliance.output()


def test_rolling_restart_of_the_api_drops_no_request(start_appliance, photo_png):
    appliance = start_appliance(shards=2)
    run = steady_load(appliance, photo_png, duration_s=20)
    master = appliance.pid_of("api")
    fault_at = run.elapsed_s()
    os.kill(master, signal.SIGHUP)
    time.sleep(6)  # old workers finish their requests while the new ones take over
    result = run.wait(60)
    counts = account("gunicorn HUP", result, fault_at, None)
    assert counts["ok"] == counts["sent"] > 0
    assert appliance.pid_of("api") == master  # the master stayed; only its workers were replaced
