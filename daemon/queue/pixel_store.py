"""Job pixels in shared memory: a file per job in the appliance's own folder on a tmpfs, only a header in Redis.

A 224x224 job is 150 KB of pixels, and Redis spent most of its CPU per job copying them (bench/redis_cost.py
measures it). With `queue.pixels = "shared_memory"` the API writes each job's uint8 pixels to
`<queue.shared_memory_dir>/inferd-<uid>-<hash of the run dir>/<job id>` (folder 0700, file 0600) and the job
in Redis carries its header and the segment's name (`wire.JOB_VERSION_SEGMENT`); the worker reads them back
with one read. Everything runs on one host, and the run dir names the appliance, so two appliances on one
host keep apart.

Lifetimes, one owner each:
- The API process that wrote a segment removes it when its caller's answer arrives, fails or times out
  (`Dispatcher`, in `finally`).
- A worker never removes one: after a worker crash the job is requeued or adopted and runs again from the
  same segment.
- A sweep (each worker, every few seconds) removes segments older than the request deadline plus
  ORPHAN_MARGIN_S: their owner died (a killed gunicorn worker) or its answer can no longer be read.
- `inferd run` clears the folder at start (no process of the appliance is alive then); `flush_queues --purge`
  sweeps it.

A job whose pixels cannot be written (no such folder, the tmpfs full or too small: ENOSPC, a container's
64 MB /dev/shm) goes through Redis whole, as with `queue.pixels = "redis"`; the caller never sees the
difference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import stat
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


def segment_folder(settings: Settings) -> Path:
    """The appliance's own folder of segments: named after its user and its run dir, so two never collide."""
    run_dir = str(settings.paths.run_dir.resolve())
    digest = hashlib.sha256(run_dir.encode()).hexdigest()[:16]
    return settings.queue.shared_memory_dir / f"inferd-{os.getuid()}-{digest}"


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

    def __init__(self, folder: Path, enabled: bool = True, max_age_s: float = 60.0) -> None:
        self.folder = folder
        self.enabled = enabled
        self.max_age_s = max_age_s
        """A segment older than this is an orphan (the request deadline plus ORPHAN_MARGIN_S)."""
        self._folder_checked = False
        self._warned_at = float("-inf")

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
        return cls(Path("."), enabled=False)

    # -- the API's side ---------------------------------------------------------------------------------
    def stage(self, job: Job) -> Job:
        """`job` naming a fresh segment that holds its pixels, or `job` itself (pixels inline) when shared
        memory is off or refuses them."""
        if not self.enabled:
            return job
        path = self.folder / job.job_id
        try:
            self._ensure_folder()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            self._fall_back(exc)
            return job
        try:
            with os.fdopen(fd, "wb") as segment:
                segment.write(np.ascontiguousarray(job.pixels, dtype=np.uint8).data)
        except OSError as exc:
            # ENOSPC most likely, possibly after a part was written: none of it may stay.
            self._remove(path)
            self._fall_back(exc)
            return job
        return dataclasses.replace(job, segment=job.job_id)

    def release(self, job: Job) -> None:
        """Remove the job's segment, if it has one (its owner is done with it)."""
        if job.segment is not None:
            self._remove(self.folder / job.segment)

    def _ensure_folder(self) -> None:
        if self._folder_checked:
            return
        with contextlib.suppress(FileExistsError):
            self.folder.mkdir(mode=0o700)
        # Whatever stands at that name must be our own private folder, not a link or another user's.
        info = os.lstat(self.folder)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise PermissionError(f"{self.folder} is not a folder private to this user")
        self._folder_checked = True

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
    def read(self, segment: str, shape: tuple[int, int, int]) -> npt.NDArray[np.uint8]:
        """The pixels of a segment, in `shape`; PixelsGone when it was removed, WireError when it is wrong."""
        if not SEGMENT_NAME.fullmatch(segment):
            raise WireError(f"{segment!r} is not a segment name")
        try:
            pixels = np.fromfile(self.folder / segment, dtype=np.uint8)
        except FileNotFoundError:
            raise PixelsGone(f"pixels segment {segment} is gone: its caller gave up on it") from None
        except OSError as exc:
            raise WireError(f"cannot read pixels segment {segment}: {exc.strerror or exc}") from None
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
            os.utime(self.folder)
            return self.folder.stat().st_mtime
        except OSError:
            return None  # no folder yet: nothing was ever written

    def clear(self) -> int:
        """Remove every segment (at start, when no process of the appliance can own one)."""
        return self._remove_where(lambda modified: True)

    def _remove_where(self, old_enough: Callable[[float], bool]) -> int:
        removed = 0
        try:
            entries = list(os.scandir(self.folder))
        except OSError:
            return 0  # no folder yet: nothing was ever written
        for entry in entries:
            try:
                modified = entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue  # removed by its owner meanwhile
            if old_enough(modified) and self._remove(Path(entry.path)):
                removed += 1
        return removed

    @staticmethod
    def _remove(path: Path) -> bool:
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True
