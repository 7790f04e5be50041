"""A full or missing /dev/shm costs speed, never an answer (README, "Pixels beside Redis"): through the API and a
worker, on a real tmpfs too small for the queue, and with no tmpfs at all.

The tmpfs is a real one, mounted for the test (the tests run as root, as `./setup.sh test` does on CI); a box
where it cannot be mounted fails the test (tests/needs.py), never skips it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon.queue.keys import queue_key
from daemon.queue.wire import JOB_HEADER
from testkit.harness import Appliance, wait_until
from tests.conftest import standin_model
from tests.needs import need
from tools.loadgen import LoadRun, Upload

pytestmark = pytest.mark.slow

INPUT = 224
WHOLE_JOB = JOB_HEADER.size + INPUT * INPUT * 3
"""A job carrying its 150 KB of pixels in Redis; one whose pixels sit in shared memory is 76 bytes."""
TMPFS_SIZE = "1m"
"""Room for 6 segments of 150 KB: the burst's other jobs must go through Redis whole."""
BURST = 14
BATCH_MS = 300.0
"""One job per batch, 0.3 s each: the burst waits in the queue, pixels written, long enough to look at it."""


@pytest.fixture()
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs, open to all as /dev/shm is, unmounted after the test."""
    mount_point = tmp_path / "shm"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=1777", "inferd-test", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    need(
        mounted.returncode == 0,
        f"mounting a {TMPFS_SIZE} tmpfs failed ({mounted.stderr.strip()})",
        "run the tests as root, with mount(8), where mounting a tmpfs is allowed",
    )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def burst_through(appliance: Appliance, photo_png: bytes) -> list[bytes]:
    """Send BURST requests at once, assert that each is answered; returns the jobs seen waiting meanwhile."""
    client = appliance.redis()
    upload = Upload.of("photo.png", photo_png)
    run = LoadRun(
        f"{appliance.url}/predict", [upload], concurrency=BURST, requests=BURST, timeout_s=60
    ).start()
    seen: list[bytes] = []

    def most_of_the_burst_waiting_or_answered() -> bool:
        waiting: list[bytes] = client.lrange(queue_key("cpu0"), 0, -1)  # type: ignore[assignment]
        if len(waiting) > len(seen):
            seen[:] = waiting
        return len(seen) >= BURST - 4 or run.completed() == BURST

    wait_until(
        "the burst to wait in cpu0's queue", most_of_the_burst_waiting_or_answered, 30, appliance.output
    )
    statuses = [record.status for record in run.wait(90).records]
    assert statuses == [200] * BURST, f"every caller is answered:\n{appliance.output()[-3000:]}"
    assert len(seen) >= BURST - 4, "most of the burst waited in the queue at once"
    return seen


def start_small(
    start_appliance: Callable[..., Appliance], tmp_path: Path, shared_memory_dir: Path
) -> Appliance:
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class{i}\n" for i in range(10)))
    return start_appliance(
        shards=1,
        model={"path": standin_model(tmp_path, BATCH_MS), "labels": labels, "input_size": INPUT},
        batching={"max_wait_ms": 0, "max_batch_size": 1},
        queue={"shared_memory_dir": str(shared_memory_dir), "max_depth": 64},
        api={"request_timeout_s": 30.0},
    )


def test_a_tmpfs_too_small_for_the_queue_sends_the_rest_through_redis_and_answers_all(
    start_appliance, tmp_path, photo_png, small_tmpfs
):
    appliance = start_small(start_appliance, tmp_path, small_tmpfs)
    assert f"{small_tmpfs} holds 1 MB, less than the" in appliance.log_text(), (
        "the start names the small tmpfs"
    )
    waiting = burst_through(appliance, photo_png)
    sizes = sorted({len(job) for job in waiting})
    print(f"\n[{TMPFS_SIZE} tmpfs] {len(waiting)} jobs waiting, sizes {sizes}")
    assert WHOLE_JOB in sizes, "the jobs the tmpfs had no room for went through Redis whole"
    assert any(len(job) < 100 for job in waiting), "the jobs that fit went through shared memory"
    assert f"pixels: cannot write to shared memory in {appliance.segment_folder()}" in appliance.log_text()
    assert "No space left on device" in appliance.log_text()
    # Nothing stays behind: every segment removed once answered, the tmpfs empty again (no partial file).
    assert appliance.pixel_segments() == []
    stats = os.statvfs(small_tmpfs)
    assert stats.f_bfree == stats.f_blocks or stats.f_blocks - stats.f_bfree <= 1, "the tmpfs is empty again"


def test_with_no_shared_memory_dir_every_job_goes_through_redis_and_is_answered(
    start_appliance, tmp_path, photo_png
):
    missing = tmp_path / "no-such-shm"
    appliance = start_small(start_appliance, tmp_path, missing)
    assert f"pixels: no folder of our own in {missing}" in appliance.log_text()
    assert appliance.segment_folder() is None
    waiting = burst_through(appliance, photo_png)
    assert {len(job) for job in waiting} == {WHOLE_JOB}, "every job carried its pixels through Redis"
