"""Faults under steady load against a real appliance with two CPU shards: nothing lost, nothing hung.

Each test drives load with the stress tool's engine, breaks something while it runs, and then accounts for
every request: a 200, or a clean JSON 503/504 where the fault made that the honest answer. A request with no
HTTP answer at all (status 0) is lost, and one still unanswered when the wait ends fails the test
(`LoadRun.wait` raises). The counts are printed (`pytest -s` shows them).

Where the fault must land on work in hand (a worker killed mid-batch, the appliance stopped with callers
waiting), the model is a stand-in that spends BATCH_MS per batch: a burst of requests is sent, the test
waits until Redis holds every one of them with a batch claimed, and only then strikes. What was in hand is
read from Redis right before the signal, so the test proves its own premise instead of hoping for it.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest
import requests

from daemon.ops.front_door import instance_workers
from daemon.queue.keys import processing_key, queue_key
from daemon.queue.wire import JOB_HEADER, JOB_VERSION_ENCODED_SEGMENT, JOB_VERSION_SEGMENT
from testkit.harness import Appliance, wait_until
from testkit.proctree import ProcessId, children
from tests.conftest import standin_model
from tools.loadgen import LoadResult, LoadRun, RequestRecord, Upload

pytestmark = pytest.mark.slow

CLEAN_ERRORS = {503, 504}
FLOWING_OKS = 10
"""200s the load must have had before a fault is injected, so the fault lands on a working appliance."""
BATCH_MS = 3000.0
"""The stand-in's time per batch: far longer than reading Redis and sending a signal takes, however loaded
the machine, so a batch seen claimed is still in the model when the signal lands."""
BURST = 6
"""Requests sent at once, each on its own connection, for the faults that must land on work in hand."""


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
    wait_until(
        "five requests sent while Redis is down to be answered",
        lambda: sum(1 for r in run.records() if r.start_s > fault_at) >= 5,
        30,
        appliance.output,
    )
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


def burst(appliance: Appliance, photo_png: bytes, count: int = BURST) -> LoadRun:
    """`count` requests sent at once, one per connection (each thread sends one), with a long client timeout."""
    upload = Upload.of("photo.png", photo_png)
    return LoadRun(
        f"{appliance.url}/predict", [upload], concurrency=count, requests=count, timeout_s=120
    ).start()


def held(client, shard: str) -> tuple[int, int]:
    """(jobs claimed in the batch in hand, jobs waiting on the queue) of `shard`."""
    return int(client.llen(processing_key(shard))), int(client.llen(queue_key(shard)))


def wait_all_held_with_a_batch_claimed(
    appliance: Appliance, shards: list[str], victim: str, count: int = BURST
) -> None:
    """Until every one of `count` requests is a job in Redis (none answered yet) and `victim` has a batch in
    the model. With no wait for company (max_wait_ms = 0), a claimed batch is a batch being computed."""
    client = appliance.redis()

    def all_held() -> bool:
        states = {shard: held(client, shard) for shard in shards}
        return sum(sum(pair) for pair in states.values()) == count and states[victim][0] >= 1

    wait_until(f"{count} jobs in Redis with a batch of {victim} in the model", all_held, 60, appliance.output)


def segments_named(payloads: list[bytes]) -> list[str]:
    """The shared-memory segments these jobs name (pixels or an image file; a job carrying them names none)."""
    return [
        bytes(payload[JOB_HEADER.size :]).decode()
        for payload in payloads
        if JOB_HEADER.unpack_from(payload)[1] in (JOB_VERSION_SEGMENT, JOB_VERSION_ENCODED_SEGMENT)
    ]


def reply_keys_left(appliance: Appliance, shards: list[str]) -> list[bytes]:
    """Reply keys nobody took, once no job is left anywhere (so no answer can still be on its way)."""
    client = appliance.redis()
    wait_until(
        "every queue and processing list to be empty",
        lambda: all(held(client, shard) == (0, 0) for shard in shards),
        30,
        appliance.output,
    )
    return sorted(client.scan_iter(match="inferd:reply:*"))


def test_sigterm_of_the_appliance_answers_every_request_in_flight(start_appliance, tmp_path, photo_png):
    appliance = start_appliance(
        shards=1,
        model={"path": standin_model(tmp_path, BATCH_MS)},
        batching={"max_wait_ms": 0},
        api={"request_timeout_s": 40.0},
    )
    run = burst(appliance, photo_png)
    wait_all_held_with_a_batch_claimed(appliance, ["cpu0"], "cpu0")
    claimed, queued = held(appliance.redis(), "cpu0")
    assert run.in_flight() == BURST and run.completed() == 0
    appliance.terminate()  # SIGTERM to supervisord, as systemd sends it, with every caller still waiting
    exit_code = appliance.wait_exit(90)
    result = run.wait(30)
    counts = account("sigterm appliance", result, 0.0, None)
    print(f"[sigterm appliance] at the signal: {claimed} job(s) in the model, {queued} queued")
    assert exit_code == 0
    # Every request in flight at the signal is computed and answered: the API drains before the worker stops.
    assert [r.status for r in result.records] == [200] * BURST, result.records
    assert counts["ok"] == BURST
    log = appliance.log_text()
    assert "queued job(s) cleanly on shutdown" not in log  # the worker had nothing left to drop
    assert "Redis is now ready to exit" in log


def api_workers(master: int) -> set[ProcessId]:
    return children(master)


def test_rolling_restart_of_the_api_replaces_every_worker_and_drops_no_request(
    start_appliance, tmp_path, photo_png
):
    appliance = start_appliance(shards=2, model={"path": standin_model(tmp_path, 5)})
    run = steady_load(appliance, photo_png, duration_s=90)
    master = appliance.pid_of("api")
    before = api_workers(master)
    # api.workers (2) is shared between the front door's two gunicorn instances; "api" is the first.
    assert len(before) == instance_workers(2, 0), before
    fault_at = run.elapsed_s()
    os.kill(master, signal.SIGHUP)

    def replaced() -> bool:
        now = api_workers(master)
        return len(now) == len(before) and not now & before

    wait_until("every gunicorn worker to be replaced after HUP", replaced, 60, appliance.output)
    after = api_workers(master)
    recovered_at = first_ok_after(run, run.elapsed_s(), 30)  # requests sent now reach the new workers
    run.stop()
    result = run.wait(60)
    counts = account("gunicorn HUP", result, fault_at, recovered_at)
    print(f"[gunicorn HUP] workers {sorted(p.pid for p in before)} -> {sorted(p.pid for p in after)}")
    assert counts["ok"] == counts["sent"] > FLOWING_OKS
    assert any(r.start_s < fault_at < r.start_s + r.latency_s for r in result.records), "none was in flight"
    assert appliance.pid_of("api") == master  # the master stayed; only its workers were replaced


def test_a_lone_worker_killed_mid_batch_requeues_its_claims_on_restart_and_answers_each_once(
    start_appliance, tmp_path, photo_png
):
    appliance = start_appliance(
        shards=1,
        model={"path": standin_model(tmp_path, BATCH_MS)},
        batching={"max_wait_ms": 0},
        api={"request_timeout_s": 60.0},
    )
    victim = appliance.pid_of("worker:worker-0")
    run = burst(appliance, photo_png)
    wait_all_held_with_a_batch_claimed(appliance, ["cpu0"], "cpu0")
    claimed, queued = held(appliance.redis(), "cpu0")
    in_the_model = segments_named(appliance.redis().lrange(processing_key("cpu0"), 0, -1))
    os.kill(victim, signal.SIGKILL)
    appliance.wait_restarted("worker:worker-0", victim)
    result = run.wait(120)
    account("sigkill lone worker", result, 0.0, None)
    print(f"[sigkill lone worker] at the kill: {claimed} job(s) in the model, {queued} queued")
    assert claimed >= 1
    assert [r.status for r in result.records] == [200] * BURST, result.records
    # The claimed jobs carried only their segments' names, and ran again from them after the kill; their
    # owners removed the segments once answered.
    assert len(in_the_model) == claimed
    assert appliance.pixel_segments() == []
    # The path taken: with no live shard to hand them to, the restarted worker put the claims back itself.
    log = appliance.log_text()
    assert f"cpu0: requeued {claimed} job(s) claimed by a previous run" in log
    assert "moved to" not in log and "adopted" not in log
    assert reply_keys_left(appliance, ["cpu0"]) == []  # no job was answered twice


def test_a_worker_killed_mid_batch_has_its_claims_adopted_by_the_live_shard_and_answered_once(
    start_appliance, tmp_path, photo_png
):
    appliance = start_appliance(
        shards=2,
        model={"path": standin_model(tmp_path, BATCH_MS)},
        batching={"max_wait_ms": 0},
        api={"request_timeout_s": 60.0},
    )
    victim = appliance.pid_of("worker:worker-0")
    run = burst(appliance, photo_png)
    wait_all_held_with_a_batch_claimed(appliance, ["cpu0", "cpu1"], "cpu0")
    claimed, queued = held(appliance.redis(), "cpu0")
    os.kill(victim, signal.SIGKILL)
    appliance.wait_restarted("worker:worker-0", victim)
    result = run.wait(120)
    account("sigkill worker, adopted", result, 0.0, None)
    print(f"[sigkill worker, adopted] at the kill: cpu0 had {claimed} job(s) in the model, {queued} queued")
    assert claimed >= 1
    assert [r.status for r in result.records] == [200] * BURST, result.records
    # The path taken: cpu0's claims and queue went to cpu1, which answered every caller; the restarted cpu0
    # found nothing of its predecessor's to requeue.
    assert {r.shard for r in result.records} == {"cpu1"}
    log = appliance.log_text()
    moved_by_watch = f"{claimed + queued} waiting job(s) moved to cpu1" in log
    adopted_by_sweep = f"cpu1: adopted {claimed + queued} job(s) of dead shard cpu0" in log
    assert moved_by_watch or adopted_by_sweep, log
    assert "requeued" not in log
    assert reply_keys_left(appliance, ["cpu0", "cpu1"]) == []  # no job was answered twice
