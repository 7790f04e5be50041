"""supervisord's knowledge used at once: a killed worker's shard stops getting jobs, a killed supervisord
takes its programs with it, and one run dir serves one appliance at a time."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from daemon.errors import EXIT_ALREADY_RUNNING
from daemon.ops.run_dir import LEFTOVER_GRACE_S
from testkit.harness import INFERD, REPO, Appliance, wait_until
from testkit.proctree import descendants, read_stat

pytestmark = pytest.mark.slow


def post(appliance: Appliance, image: bytes, timeout_s: float = 30) -> requests.Response:
    return requests.post(f"{appliance.url}/predict", files={"image": ("p.png", image)}, timeout=timeout_s)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose; it only waits for its (gone) parent to reap it.
    stat = read_stat(pid)
    return stat is not None and stat.state != "Z"


def test_a_killed_workers_queued_jobs_go_to_a_live_shard_at_once(start_appliance, photo_png):
    # A long heartbeat TTL: without supervisord's event, the dead shard would look live for 30 s. Stealing off:
    # it would route around the frozen shard before the kill, and this test is about the kill.
    appliance = start_appliance(
        shards=2, queue={"heartbeat_ttl_s": 30.0, "steal": False}, api={"request_timeout_s": 25.0}
    )
    victim = appliance.pid_of("worker:worker-0")
    os.kill(victim, signal.SIGSTOP)  # cpu0 stops taking jobs, but its heartbeat key lives on
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(post, appliance, photo_png) for _ in range(8)]
        client = appliance.redis()
        wait_until("jobs to wait on the frozen shard", lambda: client.llen("inferd:queue:cpu0") >= 2, 10)
        waiting = client.llen("inferd:queue:cpu0")
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        answers = [future.result() for future in futures]
    elapsed = time.monotonic() - killed_at
    print(
        f"\n[killed worker] {waiting} queued job(s) on the dead shard, all 8 answered {elapsed:.1f}s after the kill"
    )
    assert [a.status_code for a in answers] == [200] * 8
    # Every one was answered by the live shard: the dead one's jobs were handed over, not left for its restart.
    assert {a.headers["X-Inferd-Shard"] for a in answers} == {"cpu1"}
    assert elapsed < 15  # far inside the 30 s heartbeat TTL that would otherwise have held them
    assert "shard_watch: worker of cpu0 exited" in appliance.log_text()


def test_a_killed_supervisord_takes_its_programs_along_and_a_new_launcher_recovers(
    start_appliance, photo_png
):
    first = start_appliance(shards=1)
    tree = [pid for pid in descendants(first.pid) if pid != first.pid]
    assert len(tree) >= 4  # redis, the listener, gunicorn (master and workers), the worker
    os.kill(first.pid, signal.SIGKILL)
    assert first.wait_exit(10) is not None
    # They leave by themselves (the parent-death signal), before a new launcher's cleanup (which would signal
    # them itself after LEFTOVER_GRACE_S) could have a say: nobody else signals them here.
    wait_until(
        "the killed supervisord's programs to leave by themselves",
        lambda: not [pid for pid in tree if alive(pid)],
        LEFTOVER_GRACE_S - 5,
        first.output,
    )
    second = Appliance(first.folder, first.config, first.port, first.run_dir, first.shards, first.env)
    try:
        second.start(timeout_s=120)
        assert "of a previous appliance" not in second.log_text()  # nothing was left for its cleanup
        assert post(second, photo_png).status_code == 200
    finally:
        second.stop()


def test_a_second_launcher_on_the_same_run_dir_is_refused_and_the_first_serves_on(start_appliance, photo_png):
    first = start_appliance(shards=1)
    second = subprocess.run(
        [*INFERD, "--config", str(first.config), "run"],
        cwd=REPO,
        env=first.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == EXIT_ALREADY_RUNNING
    assert f"another inferd (pid {first.pid}) is running with run dir" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1
    assert post(first, photo_png).status_code == 200
