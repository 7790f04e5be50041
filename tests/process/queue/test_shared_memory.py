"""Pixels in shared memory when processes die, or another local user interferes: no segment outlives its use,
no job loses its pixels, and nothing outside the appliance's own folder is ever deleted.

A killed gunicorn worker cannot remove the segments of the requests it held: the workers' sweep must,
once they are older than the request deadline plus ORPHAN_MARGIN_S. (A killed shard's jobs re-run from
their segments: tests/process/test_faults.py checks that with the lone worker killed mid-batch.)
"""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from daemon.ops.front_door import API_INSTANCES
from daemon.queue.keys import queue_key
from daemon.queue.wire import JOB_HEADER
from testkit.config import short_folder
from testkit.harness import wait_until
from testkit.proctree import children
from tests.conftest import TINY_INPUT, standin_model
from tests.needs import need
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
    assert "orphaned pixel segment(s)" in appliance.log_text()
    # The appliance still serves, through shared memory, and keeps nothing once answered.
    again = LoadRun(f"{appliance.url}/predict", [upload], concurrency=1, requests=1, timeout_s=60).start()
    assert [r.status for r in again.wait(60).records] == [200]
    assert appliance.pixel_segments() == []


def test_with_queue_pixels_redis_jobs_cross_redis_whole_and_are_answered(
    start_appliance, tmp_path, photo_png
):
    """`queue.pixels = "redis"`, through the API and a worker: no segment is written, each queued job carries
    its pixels in Redis, and every caller gets its answer."""
    appliance = start_appliance(
        shards=1,
        model={"path": standin_model(tmp_path, BATCH_MS)},
        batching={"max_wait_ms": 0, "max_batch_size": 1},
        queue={"pixels": "redis"},
    )
    client = appliance.redis()
    upload = Upload.of("photo.png", photo_png)
    run = LoadRun(f"{appliance.url}/predict", [upload], concurrency=3, requests=3, timeout_s=60).start()
    queued: list[bytes] = []

    def jobs_waiting() -> bool:
        queued[:] = client.lrange(queue_key("cpu0"), 0, -1)
        return len(queued) >= 1

    wait_until("a job waiting in cpu0's queue", jobs_waiting, 20, appliance.output)
    whole = JOB_HEADER.size + TINY_INPUT * TINY_INPUT * 3  # a segment's name instead would be 76 bytes
    assert [len(job) for job in queued] == [whole] * len(queued)
    assert appliance.pixel_segments() == []
    result = run.wait(60)
    assert [r.status for r in result.records] == [200] * 3
    assert appliance.pixel_segments() == []


# -- another local user against the shared-memory folder ---------------------------------------------------
NOBODY = 65534
AN_HOUR_AGO = time.time() - 3600


def predictable_name(run_dir: Path) -> str:
    """The folder name inferd used before it drew one at random: anyone who knew the run dir could take it."""
    digest = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
    return f"inferd-{os.geteuid()}-{digest}"


def planted(folder: Path, owner: int) -> list[str]:
    """Files an hour old (past any sweep's age) in `folder`, owned by `owner`: none may be deleted."""
    for name in ("a" * 32, "notes.txt"):
        (folder / name).write_text("not inferd's")
        os.chown(folder / name, owner, owner)
        os.utime(folder / name, (AN_HOUR_AGO, AN_HOUR_AGO))
    return sorted(os.listdir(folder))


def nothing_deleted(theirs: dict[Path, list[str]]) -> None:
    for where, names in theirs.items():
        assert sorted(os.listdir(where)) == names, f"files in {where} were deleted"
        assert all((where / name).read_text() == "not inferd's" for name in names)


@pytest.mark.parametrize("attack", ["folder of another user", "symlink in its place", "foreign entry inside"])
def test_another_user_cannot_stop_the_appliance_or_make_it_delete_their_files(
    start_appliance, tmp_path, photo_png, attack
):
    need(
        os.geteuid() == 0,
        "playing another local user (os.chown to nobody) needs root",
        "run the tests as root",
    )
    shm = tmp_path / "shm"
    shm.mkdir()
    os.chmod(shm, 0o1777)  # as /dev/shm: anyone may create, only the owner may remove
    run_dir = short_folder()
    victim = tmp_path / "victim"
    victim.mkdir()
    theirs = {victim: planted(victim, NOBODY)}
    place = shm / predictable_name(run_dir)
    if attack == "folder of another user":
        place.mkdir(mode=0o700)
        theirs[place] = planted(place, NOBODY)
        os.chown(place, NOBODY, NOBODY)
    elif attack == "symlink in its place":
        place.symlink_to(victim)
    else:
        # A folder of ours (a previous run's) with a folder of someone else's inside it.
        place.mkdir(mode=0o700)
        (place / "inside").mkdir()
        theirs[place / "inside"] = planted(place / "inside", NOBODY)
        os.chown(place / "inside", NOBODY, NOBODY)
        os.utime(place / "inside", (AN_HOUR_AGO, AN_HOUR_AGO))
    appliance = start_appliance(
        shards=1, paths={"run_dir": str(run_dir)}, queue={"shared_memory_dir": str(shm)}
    )
    upload = Upload.of("photo.png", photo_png)

    def one_request() -> list[int]:
        run = LoadRun(f"{appliance.url}/predict", [upload], concurrency=1, requests=1, timeout_s=60)
        return [r.status for r in run.start().wait(60).records]

    assert one_request() == [200]
    nothing_deleted(theirs)
    folder = appliance.segment_folder()
    assert folder is not None and folder != place, "the appliance made a folder of its own"
    info = os.lstat(folder)
    assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) == 0o700
    if attack == "foreign entry inside":
        # The same inside the folder the running appliance uses: its sweep meets it every few seconds.
        worker = appliance.pid_of("worker")
        (folder / "inside").mkdir()
        theirs[folder / "inside"] = planted(folder / "inside", NOBODY)
        os.chown(folder / "inside", NOBODY, NOBODY)
        os.utime(folder / "inside", (AN_HOUR_AGO, AN_HOUR_AGO))
        (folder / "link").symlink_to(victim / "notes.txt")
        os.utime(folder / "link", (AN_HOUR_AGO, AN_HOUR_AGO), follow_symlinks=False)
        wait_until(
            "a sweep to remove the link", lambda: not os.path.lexists(folder / "link"), 30, appliance.output
        )
        assert appliance.pid_of("worker") == worker, "the sweep's error did not crash the worker"
        assert "cannot remove inside" in appliance.log_text()
        assert one_request() == [200]
    nothing_deleted(theirs)
