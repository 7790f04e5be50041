"""Pixels in shared memory when processes die: no segment outlives its use, and no job loses its pixels.

A killed gunicorn worker cannot remove the segments of the requests it held: the workers' sweep must,
once they are older than the request deadline plus ORPHAN_MARGIN_S. (A killed shard's jobs re-run from
their segments: tests/process/test_faults.py checks that with the lone worker killed mid-batch.)
"""

from __future__ import annotations

import os
import signal

import pytest

from daemon.ops.front_door import API_INSTANCES
from testkit.harness import wait_until
from testkit.proctree import children
from tests.conftest import standin_model
from tools.loadgen import LoadRun, Upload

pytestmark = pytest.mark.slow

BURST = 6
BATCH_MS = 3000.0
"""Each batch holds the lone shard long enough that the burst's jobs wait with their segments written."""
TIMEOUT_S = 8.0
"""The request deadline: the sweep takes segments older than this plus ORPHAN_MARGIN_S for orphans."""


def test_segments_left_by_killed_api_workers_are_swept(start_appliance, tmp_path, photo_png):
    appliance = start_appliance(
        shards=1,
        model={"path": standin_model(tmp_path, BATCH_MS)},
        batching={"max_wait_ms": 0, "max_batch_size": 1},
        api={"request_timeout_s": TIMEOUT_S},
    )
    upload = Upload.of("photo.png", photo_png)
    run = LoadRun(
        f"{appliance.url}/predict", [upload], concurrency=BURST, requests=BURST, timeout_s=60
    ).start()
    # Batches of one, 3 s each: most of the burst waits in the queue, each job's pixels in its segment.
    wait_until(
        f"{BURST} pixel segments in shared memory",
        lambda: len(appliance.pixel_segments()) == BURST,
        TIMEOUT_S,
        appliance.output,
    )
    orphans = appliance.pixel_segments()
    masters = [appliance.pid_of("api" if i == 0 else f"api{i + 1}") for i in range(API_INSTANCES)]
    for worker in {child for master in masters for child in children(master)}:
        os.kill(worker.pid, signal.SIGKILL)
    # Their owners are dead: nothing but the sweep removes them now. (The front door may resend the
    # requests to the respawned workers, whose new segments are theirs to remove.)
    left = set(orphans) & set(appliance.pixel_segments())
    result = run.wait(90)
    print(
        f"\n[killed API workers] {len(left)} orphaned segment(s); statuses {[r.status for r in result.records]}"
    )
    assert len(left) >= BURST - 1, "the kill landed while the burst's jobs waited with their segments"
    wait_until(
        "the sweep to remove every orphaned segment",
        lambda: not left & set(appliance.pixel_segments()),
        TIMEOUT_S + 30,
        appliance.output,
    )
    assert "orphaned pixel segment(s)" in appliance.output()
    # The appliance still serves, through shared memory, and keeps nothing once answered.
    again = LoadRun(f"{appliance.url}/predict", [upload], concurrency=1, requests=1, timeout_s=60).start()
    assert [r.status for r in again.wait(60).records] == [200]
    assert appliance.pixel_segments() == []
