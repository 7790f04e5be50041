"""Job pixels in shared memory: a file per job in the appliance's own folder on a tmpfs, only a header in Redis.

A 224x224 job is 150 KB of pixels, and Redis spent most of its CPU per job copying them (bench/redis_cost.py
measures it). With `queue.pixels = "shared_memory"` the API writes each job's uint8 pixels to
`<queue.shared_memory_dir>/inferd-<uid>-<random>/<job id>` (folder 0700, file 0600) and the job in Redis
carries its header and the segment's name (`wire.JOB_VERSION_SEGMENT`); the worker reads them back with one
read.

The folder is shared with no one. /dev/shm is writable by every local user, so nothing there is trusted by
its name alone:
- `inferd run` makes it fresh at each start (`create_folder`): a random name, `mkdir` 0700, which fails
  rather than adopt anything already there; its name goes to `<run_dir>/FOLDER_RECORD` (the run dir is 0700),
  where the API, the workers and the tools learn it (`segment_folder`). Another user cannot guess the name
  before the start, nor rename or replace the folder after it (/dev/shm is sticky).
- Every process opens it once with O_DIRECTORY|O_NOFOLLOW and checks the open folder with fstat (ours,
  mode 0700: `open_private_folder`); a symlink, a file or another user's folder in its place is refused.
  Segments are then created, read, listed and removed through that descriptor (`dir_fd=`, O_NOFOLLOW), so
  nothing outside the folder is ever touched, whatever is renamed meanwhile.
- Every OSError is handled where it happens: a job whose pixels cannot be written goes through Redis whole;
  an entry the sweep cannot remove (a foreign folder inside, say) is left and named once in the log.
- The previous run's folder is removed at the next start, through the same checks (`remove_folder`).

The folder is the appliance's, not a shard's: any shard reads any job's segment, so a job adopted from a dead
shard or stolen from an overdue one (`daemon.queue.scripts.CLAIM_SCRIPT`) runs from the segment it names.

Lifetimes, one owner each:
- The API process that wrote a segment removes it when its caller's answer arrives, fails or times out
  (`Dispatcher`, in `finally`).
- A worker never removes one: after a worker crash the job is requeued or adopted and runs again from the
  same segment.
- A sweep (each worker, every few seconds) removes segments older than the request deadline plus
  ORPHAN_MARGIN_S: their owner died (a killed gunicorn worker) or its answer can no longer be read.
- `inferd run` starts on a new, empty folder (no process of the appliance is alive then) and removes the
  previous one; `flush_queues --purge` sweeps it.

A job whose pixels cannot be written (no such folder, the tmpfs full or too small: ENOSPC, a container's
64 MB /dev/shm) goes through Redis whole, as with `queue.pixels = "redis"`; the caller never sees the
difference.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from daemon.queue.wire import SEGMENT_NAME, Job, PixelsGone, WireError
from daemon.settings import Settings

log = logging.getLogger(__name__)

ORPHAN_MARGIN_S = 10.0
"""Past the request deadline, how long a segment may stay before the sweep takes it for an orphan."""
FALLBACK_LOG_INTERVAL_S = 60.0
"""At most one warning this often about jobs that went through Redis because shared memory refused them."""


FOLDER_RECORD = "pixel-folder"
"""The file in the run dir that names this run's folder (its name only: it lies in queue.shared_memory_dir)."""
FOLDER_NAME = re.compile(r"inferd-[0-9]+-[0-9a-f]{32}")
FOLDER_MODE = 0o700


def segment_folder(settings: Settings) -> Path | None:
    """The folder the appliance running on this run dir made for its segments, or None when it made none."""
    try:
        name = (settings.paths.run_dir / FOLDER_RECORD).read_text().strip()
    except OSError:
        return None
    if not FOLDER_NAME.fullmatch(name):
        return None  # never a path: the record names a folder in shared_memory_dir and nothing else
    return settings.queue.shared_memory_dir / name


def make_folder(parent: Path) -> Path:
    """A new folder private to this user in `parent`, under a name no one could have taken before."""
    while True:
        folder = parent / f"inferd-{os.geteuid()}-{secrets.token_hex(16)}"
        try:
            os.mkdir(folder, FOLDER_MODE)
        except FileExistsError:
            continue  # someone holds that name (a guess, or chance): never adopt it
        os.chmod(folder, FOLDER_MODE)  # the umask may have taken bits off; no one else can have it yet
        return folder


def create_folder(settings: Settings) -> Path | None:
    """At start: remove the previous run's folder, make this run's and record its name; None (every job
    through Redis) when shared memory is off or its folder cannot be made."""
    record = settings.paths.run_dir / FOLDER_RECORD
    previous = segment_folder(settings)
    if previous is not None:
        remove_folder(previous)
    try:
        record.unlink(missing_ok=True)
        if settings.queue.pixels != "shared_memory":
            return None
        folder = make_folder(settings.queue.shared_memory_dir)
        fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(folder.name + "\n")
    except OSError as exc:
        log.warning(
            "pixels: no folder of our own in %s (%s): every job's pixels go through Redis",
            settings.queue.shared_memory_dir,
            exc.strerror or exc,
        )
        return None
    return folder


def open_private_folder(folder: Path) -> int:
    """A descriptor of `folder`, checked to be a real folder (not a link) owned by us and open to no one
    else; PermissionError when it is not."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    info = os.fstat(fd)
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.geteuid()
        or stat.S_IMODE(info.st_mode) != FOLDER_MODE
    ):
        os.close(fd)
        raise PermissionError(f"{folder} is not a folder private to this user (owner, mode {FOLDER_MODE:o})")
    return fd


def remove_folder(folder: Path) -> int:
    """Remove a previous run's folder and the segments in it; returns how many there were. Anything that is
    not our private folder, or an entry that will not go, is left where it is and logged."""
    store = PixelStore(folder)
    try:
        store.open()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.warning("pixels: left %s alone: %s", folder, exc.strerror or exc)
        return 0
    try:
        removed = store.clear()
        os.rmdir(folder)
    except OSError as exc:
        log.warning("pixels: left %s in place: %s", folder, exc.strerror or exc)
    finally:
        store.close()
    return removed


def room_note(settings: Settings, shard_count: int) -> str | None:
    """A warning when the tmpfs cannot hold a segment for every job the queues admit (jobs beyond it go
    through Redis whole), or None when it can or shared memory is off."""
    if settings.queue.pixels != "shared_memory":
        return None
    jobs = shard_count * (settings.queue.max_depth + settings.batching.max_batch_size)
    needed = jobs * settings.model.input_size**2 * 3
    where = settings.queue.shared_memory_dir
    try:
        stats = os.statvfs(where)
    except OSError as exc:
        return f"{where} is not usable ({exc.strerror}): every job's pixels go through Redis"
    size = stats.f_blocks * stats.f_frsize
    if size >= needed:
        return None
    return (
        f"{where} holds {size / 2**20:.0f} MB, less than the {needed / 2**20:.0f} MB that {jobs} queued and "
        "claimed jobs need: jobs beyond it go through Redis whole (give the container a larger /dev/shm, "
        "e.g. docker --shm-size)"
    )


class PixelStore:
    """Writes, reads and removes job segments in one folder; a disabled store keeps every job whole."""

    def __init__(self, folder: Path | None, enabled: bool = True, max_age_s: float = 60.0) -> None:
        self.folder = folder
        self.enabled = enabled and folder is not None
        self.max_age_s = max_age_s
        """A segment older than this is an orphan (the request deadline plus ORPHAN_MARGIN_S)."""
        self._fd: int | None = None
        self._opening = threading.Lock()
        self._warned_at = float("-inf")
        self._left: set[str] = set()
        """Entries the sweep could not remove, each logged once."""

    @classmethod
    def for_settings(cls, settings: Settings) -> PixelStore:
        return cls(
            segment_folder(settings),
            enabled=settings.queue.pixels == "shared_memory",
            max_age_s=settings.api.request_timeout_s + ORPHAN_MARGIN_S,
        )

    @classmethod
    def disabled(cls) -> PixelStore:
        """A store that keeps every job's pixels inline (the tests' and the benchmark's direct clients)."""
        return cls(None, enabled=False)

    # -- the API's side ---------------------------------------------------------------------------------
    def stage(self, job: Job) -> Job:
        """`job` naming a fresh segment that holds its pixels, or `job` itself (pixels inline) when shared
        memory is off or refuses them."""
        if not self.enabled:
            return job
        try:
            fd = self._open_entry(job.job_id, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        except OSError as exc:
            self._fall_back(exc)
            return job
        try:
            with os.fdopen(fd, "wb") as segment:
                segment.write(np.ascontiguousarray(job.pixels, dtype=np.uint8).data)
        except OSError as exc:
            # ENOSPC most likely, possibly after a part was written: none of it may stay.
            self._remove(job.job_id)
            self._fall_back(exc)
            return job
        return dataclasses.replace(job, segment=job.job_id)

    def release(self, job: Job) -> None:
        """Remove the job's segment, if it has one (its owner is done with it)."""
        if job.segment is not None:
            self._remove(job.segment)

    def _fall_back(self, exc: OSError) -> None:
        now = time.monotonic()
        if now - self._warned_at >= FALLBACK_LOG_INTERVAL_S:
            self._warned_at = now
            log.warning(
                "pixels: cannot write to shared memory in %s (%s): jobs go through Redis whole until it "
                "has room (warned at most every %.0fs)",
                self.folder,
                exc.strerror or exc,
                FALLBACK_LOG_INTERVAL_S,
            )

    # -- a worker's side --------------------------------------------------------------------------------
    def read(self, segment: str, shape: tuple[int, int, int] | None) -> npt.NDArray[np.uint8]:
        """The pixels of a segment, in `shape` (None: its bytes as written, an image file still encoded);
        PixelsGone when it was removed, WireError when it is wrong."""
        if not SEGMENT_NAME.fullmatch(segment):
            raise WireError(f"{segment!r} is not a segment name")
        try:
            with os.fdopen(self._open_entry(segment, os.O_RDONLY), "rb") as handle:
                pixels = np.fromfile(handle, dtype=np.uint8)
        except FileNotFoundError:
            raise PixelsGone(f"pixels segment {segment} is gone: its caller gave up on it") from None
        except OSError as exc:
            raise WireError(f"cannot read pixels segment {segment}: {exc.strerror or exc}") from None
        if shape is None:
            return pixels
        height, width, channels = shape
        if pixels.size != height * width * channels:
            raise WireError(f"pixels segment {segment} holds {pixels.size} bytes, the job says {shape}")
        return pixels.reshape(shape)

    # -- cleaning up --------------------------------------------------------------------------------------
    def sweep(self) -> int:
        """Remove segments older than `max_age_s`, whose owner died or can no longer read the answer."""
        now = self._file_clock()
        if now is None:
            return 0
        return self._remove_where(lambda modified: modified < now - self.max_age_s)

    def _file_clock(self) -> float | None:
        """The time the filesystem stamps on files now, read back from the folder just touched: ages are
        differences of two file times, never a file time against this process's wall clock."""
        try:
            fd = self._folder_fd()
            os.utime(fd)  # through the checked descriptor: never a path a link could redirect
            return os.fstat(fd).st_mtime
        except OSError:
            return None  # no folder, or not ours: nothing of ours is in it

    def clear(self) -> int:
        """Remove every segment (at start, when no process of the appliance can own one)."""
        return self._remove_where(lambda modified: True)

    def _remove_where(self, old_enough: Callable[[float], bool]) -> int:
        removed = 0
        try:
            fd = self._folder_fd()
            names = os.listdir(fd)
        except OSError:
            return 0  # no folder, or not ours: nothing of ours is in it
        for name in names:
            try:
                modified = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mtime
            except OSError:
                continue  # removed by its owner meanwhile
            if old_enough(modified) and self._remove(name):
                removed += 1
        return removed

    # -- the folder, through one checked descriptor -------------------------------------------------------
    def open(self) -> None:
        """Open and check the folder now (it is otherwise opened at first use); OSError when it is not ours."""
        self._folder_fd()

    def _folder_fd(self) -> int:
        if self._fd is None:
            if self.folder is None:
                raise FileNotFoundError("no shared-memory folder")
            with self._opening:  # the API's threads stage at once: one descriptor, never a leaked second
                if self._fd is None:
                    self._fd = open_private_folder(self.folder)
        return self._fd

    def _open_entry(self, name: str, flags: int) -> int:
        """Open the segment `name` in the folder, never following a link."""
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self._folder_fd())

    def _remove(self, name: str) -> bool:
        """Remove the entry `name` from the folder; False when it was gone or will not go (logged once)."""
        try:
            os.unlink(name, dir_fd=self._folder_fd())
        except FileNotFoundError:
            return False
        except OSError as exc:
            if name not in self._left:
                self._left.add(name)
                log.warning("pixels: cannot remove %s from %s: %s", name, self.folder, exc.strerror or exc)
            return False
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
