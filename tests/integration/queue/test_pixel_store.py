"""Pixels in shared memory against real files, a real tmpfs and a real Redis: lifetimes, fallback, isolation.

The full tmpfs is a real one: a 400 KB tmpfs mounted in a private mount namespace (`unshare`), which holds
two 224x224 jobs and refuses the third with ENOSPC part-way through its write. The hostile folders are real
too: owned by `nobody` (os.chown; the suite runs as root where it can), symlinks to a victim's folder, and
foreign entries inside.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from daemon.dispatcher import Dispatcher
from daemon.errors import Draining
from daemon.gpu_worker import Worker
from daemon.model.classifier import Classifier
from daemon.queue.faces import ApiQueues, ShardQueues
from daemon.queue.keys import reply_key
from daemon.queue.pixel_store import (
    FOLDER_RECORD,
    PixelStore,
    create_folder,
    make_folder,
    remove_folder,
    room_note,
    segment_folder,
)
from daemon.queue.wire import Job, WireError, new_job_id
from daemon.shard import cpu_shards
from daemon.worker.inference import run_batch
from testkit.harness import REPO, wait_until
from tests.integration.test_dispatcher import register
from tests.needs import need, need_program
from tools import flush_queues

SHAPE = (224, 224, 3)


def a_job(shape: tuple[int, int, int] = SHAPE, deadline_in_s: float = 30.0) -> Job:
    pixels = np.random.default_rng(len(shape)).integers(0, 255, shape, dtype=np.uint8)
    return Job(new_job_id(), time.monotonic() + deadline_in_s, time.monotonic(), 3, pixels)


def test_a_staged_job_crosses_redis_as_a_header_and_its_segment_name(tmp_path):
    store = PixelStore(make_folder(tmp_path))
    job = a_job()
    staged = store.stage(job)
    assert staged.segment == job.job_id
    payload = staged.encode()
    assert len(payload) == 44 + 32  # against 150,572 with the pixels inline
    assert store.folder is not None and oct(store.folder.stat().st_mode & 0o777) == "0o700"
    decoded = Job.decode(payload, store.read)
    assert np.array_equal(decoded.pixels, job.pixels)
    store.release(staged)
    assert os.listdir(store.folder) == []
    with pytest.raises(WireError, match="gone"):
        Job.decode(payload, store.read)


def test_a_job_cannot_name_a_file_outside_the_segment_folder(tmp_path):
    store = PixelStore(make_folder(tmp_path))
    staged = store.stage(a_job())
    hostile = staged.encode()[:44] + b"../../../../etc/passwd".ljust(32, b"/")
    with pytest.raises(WireError, match="not a segment name"):
        Job.decode(hostile, store.read)
    with pytest.raises(WireError, match="not a segment name"):
        store.read("../" + staged.job_id[3:], SHAPE)


def test_a_full_tmpfs_sends_the_job_through_redis_whole_and_keeps_no_partial_segment(tmp_path):
    need_program("unshare", "util-linux")
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, text=True, check=False)
    need(
        probe.returncode == 0,
        f"unprivileged mount namespaces are off here: {probe.stderr.strip()}",
        "sysctl kernel.unprivileged_userns_clone=1, or a container run with --privileged",
    )
    # Runs inside the namespace, where the 400 KB tmpfs is: stage five jobs, report what crossed.
    script = tmp_path / "stage.py"
    script.write_text(f"""
import json, logging, os, time
import numpy as np
from pathlib import Path
from daemon.queue.pixel_store import PixelStore, make_folder
from daemon.queue.wire import Job, new_job_id
logging.basicConfig()
store = PixelStore(make_folder(Path({str(mount_point)!r})))
report = []
for i in range(5):
    pixels = np.full({SHAPE}, i, dtype=np.uint8)
    job = Job(new_job_id(), time.monotonic() + 30, time.monotonic(), 3, pixels)
    payload = store.stage(job).encode()
    same = bool((Job.decode(payload, store.read).pixels == pixels).all())
    report.append({{"bytes": len(payload), "same": same}})
report.append(sorted(os.listdir(store.folder)))
print(json.dumps(report))
""")
    shell = f"mount -t tmpfs -o size=400k inferd-test {mount_point} && exec {sys.executable} {script}"
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", shell],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 0, done.stderr
    *jobs, left = json.loads(done.stdout.splitlines()[-1])
    assert [job["bytes"] for job in jobs] == [76, 76, 150_572, 150_572, 150_572]
    assert all(job["same"] for job in jobs)
    assert len(left) == 2  # the two that fit; the third's partial write was removed
    assert "No space left on device" in done.stderr and "go through Redis whole" in done.stderr


def test_two_appliances_on_one_host_keep_their_segments_apart(make_settings, tmp_path):
    first = make_settings(paths={"run_dir": str(tmp_path / "a")}, queue={"shared_memory_dir": str(tmp_path)})
    second = make_settings(paths={"run_dir": str(tmp_path / "b")}, queue={"shared_memory_dir": str(tmp_path)})
    assert segment_folder(first) != segment_folder(second)
    assert {segment_folder(first).parent, segment_folder(second).parent} == {tmp_path}  # type: ignore[union-attr]
    ours, theirs = PixelStore.for_settings(first), PixelStore.for_settings(second)
    kept = ours.stage(a_job())
    theirs.stage(a_job())
    assert theirs.clear() == 1  # what the second's start-up does
    assert os.listdir(ours.folder) == [kept.segment]


def test_the_sweep_takes_only_segments_past_the_deadline_and_margin(tmp_path):
    store = PixelStore(make_folder(tmp_path), max_age_s=60)
    old, fresh = store.stage(a_job()), store.stage(a_job())
    an_hour_ago = time.time() - 3600
    os.utime(store.folder / str(old.segment), (an_hour_ago, an_hour_ago))  # type: ignore[operator]
    assert store.sweep() == 1
    assert os.listdir(store.folder) == [fresh.segment]


def test_a_refused_job_ends_its_pipelined_wait_at_once(redis_settings, redis_client):
    register(redis_client, "cpu0")
    redis_client.set("inferd:draining", "operator")
    queues = ApiQueues(redis_client, redis_settings.queue, redis_settings.batching)
    job = a_job(deadline_in_s=600)  # a missing refusal marker would hold the wait for ten minutes
    raised: list[BaseException] = []

    def submit() -> None:
        try:
            queues.submit_and_await(job)
        except Draining as exc:
            raised.append(exc)

    waiting = threading.Thread(target=submit, daemon=True)
    waiting.start()
    wait_until("the pipelined submit to be refused", lambda: not waiting.is_alive(), 30)
    assert len(raised) == 1
    assert not redis_client.exists(reply_key(job.job_id))  # the wait took the marker


def test_jobs_served_from_shared_memory_leave_no_segment_and_a_removed_one_is_answered(
    redis_settings, redis_client
):
    store = PixelStore.for_settings(redis_settings)
    assert store.enabled  # shared memory is the default
    queues = ShardQueues(redis_client, "cpu0", redis_settings)
    classifier = Classifier(redis_settings.model)
    worker = Worker(redis_settings, cpu_shards(1)[0], queues, classifier, handle_signals=False, pixels=store)
    serving = threading.Thread(target=worker.work, daemon=True)
    serving.start()
    try:
        api = ApiQueues(redis_client, redis_settings.queue, redis_settings.batching)
        wait_until("the worker to register", lambda: bool(api.registered_shards()), 30)
        dispatcher = Dispatcher(api, redis_settings.api.request_timeout_s, store)
        size = redis_settings.model.input_size
        reply = dispatcher.dispatch(a_job((size, size, 3)))
        assert len(reply.predictions) == 3
        assert os.listdir(store.folder) == []
    finally:
        worker.request_stop()
        serving.join(10)
    # A job whose caller gave up (and removed its pixels) is answered, not fatal to the batch.
    gone, kept = store.stage(a_job((size, size, 3))), store.stage(a_job((size, size, 3)))
    store.release(gone)
    outcome = run_batch(
        [gone.encode(), kept.encode()], classifier, "cpu0", (size, size, 3), read_segment=store.read
    )
    assert outcome.replies[gone.job_id].error_kind == "InferenceFailed"
    assert outcome.replies[kept.job_id].error_kind is None and outcome.computed == 1
    store.clear()


def test_purge_sweeps_orphaned_segments_and_leaves_live_ones(redis_settings, redis_client):
    store = PixelStore.for_settings(redis_settings)
    orphan, live = store.stage(a_job()), store.stage(a_job())
    an_hour_ago = time.time() - 3600
    os.utime(store.folder / str(orphan.segment), (an_hour_ago, an_hour_ago))  # type: ignore[operator]
    flush_queues.flush(redis_client, redis_settings, [], dry_run=False)
    assert os.listdir(store.folder) == [live.segment]
    store.clear()


def test_a_tmpfs_too_small_for_the_queues_is_named_at_start(make_settings, tmp_path):
    roomy = make_settings(queue={"shared_memory_dir": str(tmp_path)})
    assert room_note(roomy, 1) is None
    crowded = make_settings(queue={"shared_memory_dir": str(tmp_path), "max_depth": 10**9})
    assert "jobs beyond it go through Redis whole" in str(room_note(crowded, 8))
    missing = make_settings(queue={"shared_memory_dir": str(tmp_path / "none")})
    assert "every job's pixels go through Redis" in str(room_note(missing, 1))
    assert room_note(make_settings(queue={"pixels": "redis", "max_depth": 10**9}), 8) is None


def test_the_sweep_reads_age_from_file_times_not_this_process_clock(tmp_path, monkeypatch):
    store = PixelStore(make_folder(tmp_path), max_age_s=60)
    fresh = store.stage(a_job())
    # A wall clock read by Python that is hours ahead (a step, or a skewed clock) removes nothing live.
    monkeypatch.setattr(time, "time", lambda: 1e12)
    assert store.sweep() == 0
    assert os.listdir(store.folder) == [fresh.segment]


# -- a folder no one else can touch ------------------------------------------------------------------------
NOBODY = 65534


def need_root() -> None:
    need(os.geteuid() == 0, "giving a folder to another user (os.chown) needs root", "run the tests as root")


def victim_folder(tmp_path: Path) -> tuple[Path, list[str]]:
    """Someone else's folder with files in it, old enough for any sweep: what must never be deleted."""
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in ("a" * 32, "notes.txt"):
        (victim / name).write_text("not yours")
        an_hour_ago = time.time() - 3600
        os.utime(victim / name, (an_hour_ago, an_hour_ago))
    return victim, sorted(os.listdir(victim))


def test_each_start_makes_a_new_private_folder_and_removes_the_previous_one(make_settings, tmp_path):
    settings = make_settings(queue={"shared_memory_dir": str(tmp_path)})
    first = segment_folder(settings)
    assert first is not None and first.parent == tmp_path
    PixelStore.for_settings(settings).stage(a_job())
    second = create_folder(settings)  # the next `inferd run` on this run dir
    assert second is not None and second != first and segment_folder(settings) == second
    assert not first.exists(), "the previous run's folder and its segment were removed"
    info = os.lstat(second)
    assert info.st_uid == os.geteuid() and oct(info.st_mode & 0o777) == "0o700"
    assert (settings.paths.run_dir / FOLDER_RECORD).read_text().strip() == second.name


def test_a_name_already_taken_is_never_adopted(tmp_path, monkeypatch):
    need_root()
    taken = tmp_path / f"inferd-{os.geteuid()}-{'0' * 32}"
    taken.mkdir(mode=0o777)
    os.chown(taken, NOBODY, NOBODY)
    (taken / "planted").write_text("theirs")
    names = iter(["0" * 32, "1" * 32])
    monkeypatch.setattr("daemon.queue.pixel_store.secrets.token_hex", lambda size: next(names))
    folder = make_folder(tmp_path)
    assert folder.name.endswith("1" * 32)
    assert os.lstat(folder).st_uid == os.geteuid()
    assert os.listdir(taken) == ["planted"] and os.lstat(taken).st_uid == NOBODY


@pytest.mark.parametrize("impostor", ["symlink", "another user's folder", "a folder open to others"])
def test_whatever_stands_in_the_folders_place_is_refused_and_nothing_in_it_is_touched(
    tmp_path, impostor, caplog
):
    if impostor == "another user's folder":
        need_root()
    victim, before = victim_folder(tmp_path)
    place = tmp_path / f"inferd-{os.geteuid()}-{'2' * 32}"
    if impostor == "symlink":
        place.symlink_to(victim)
    else:
        # Their own folder at the name, with their files in it: as much theirs as the victim's.
        place.mkdir()
        for name in before:
            (place / name).write_text("not yours")
            os.utime(place / name, (time.time() - 3600, time.time() - 3600))
        os.chmod(place, 0o777 if impostor == "a folder open to others" else 0o700)
        if impostor == "another user's folder":
            os.chown(place, NOBODY, NOBODY)
    store = PixelStore(place, max_age_s=0)
    job = a_job()
    assert store.stage(job) is job, "the job goes through Redis whole"
    assert "go through Redis whole" in caplog.text
    assert store.sweep() == 0 and store.clear() == 0
    assert remove_folder(place) == 0
    assert sorted(os.listdir(victim)) == before and all(
        (victim / name).read_text() == "not yours" for name in before
    )
    assert os.path.lexists(place), "what stood there was left alone"
    if impostor != "symlink":
        assert sorted(os.listdir(place)) == before


def test_a_foreign_entry_inside_is_left_and_named_once_and_the_store_keeps_serving(tmp_path, caplog):
    victim, before = victim_folder(tmp_path)
    store = PixelStore(make_folder(tmp_path), max_age_s=60)
    folder = store.folder
    assert folder is not None
    (folder / "b").mkdir()  # a folder inside, which unlink cannot remove
    (folder / "b" / "kept").write_text("")
    (folder / "c").symlink_to(victim / before[0])
    if os.geteuid() == 0:
        os.chown(folder / "b", NOBODY, NOBODY)
    an_hour_ago = time.time() - 3600
    for name in ("b", "c"):
        os.utime(folder / name, (an_hour_ago, an_hour_ago), follow_symlinks=False)
    assert store.sweep() == 1  # the link (not what it points at); the folder inside stays
    assert store.sweep() == 0
    assert caplog.text.count("cannot remove b") == 1
    assert sorted(os.listdir(folder)) == ["b"]
    assert sorted(os.listdir(victim)) == before
    staged = store.stage(a_job())
    assert staged.segment is not None
    assert np.array_equal(store.read(staged.segment, SHAPE), a_job().pixels)


def test_a_record_naming_a_symlink_removes_nothing_at_start(make_settings, tmp_path):
    settings = make_settings(queue={"shared_memory_dir": str(tmp_path)})
    victim, before = victim_folder(tmp_path)
    ours = segment_folder(settings)
    assert ours is not None
    remove_folder(ours)
    ours.symlink_to(victim)  # someone put a link where the previous run's folder was
    assert create_folder(settings) is not None
    assert sorted(os.listdir(victim)) == before
