"""The dispatcher: hands each job to one live shard and waits for its answer within the request's deadline.

It is the one collaborator of the API's /predict (tests give the resource a fake instead). The choice of
shard is global and atomic: one Lua call shared by every API process picks the next live shard in a
round-robin (or the shortest queue, `queue.dispatch = "shortest_queue"`, for GPUs of unequal speed), checks
its queue limit and pushes the job (`daemon.queue.scripts.ENQUEUE_SCRIPT`). A shard whose worker has no fresh
heartbeat gets nothing; a full queue is a 503 at once, never a wait.

With pixels in shared memory (`daemon.queue.pixel_store`), the dispatcher owns each job's segment: it writes it
before the job is queued and removes it once the answer is in, refused or timed out.

A job may carry the upload's file for the shard to decode. When its file cannot go to shared memory (the
tmpfs full, or `queue.pixels = "redis"`) and is larger than the model input's pixels, the dispatcher decodes it
here and sends the pixels instead: Redis's memory bound is sized for pixel jobs, never for 20 MB files.

A request of several images (KServe V2 infer) submits every job first and only then awaits the answers, so
the images spread over the shards and run side by side; the answers come back in the jobs' order.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from daemon.errors import DeadlineExceeded, InferdError
from daemon.queue.faces import ApiQueues
from daemon.queue.pixel_store import PixelStore
from daemon.queue.registry import DrainState
from daemon.queue.wire import Job, Reply


class Dispatch(Protocol):
    """What the API needs of a dispatcher (a fake in the API's unit tests)."""

    def dispatch(self, job: Job) -> Reply: ...

    def dispatch_many(self, jobs: Sequence[Job]) -> list[Reply]: ...

    def shard_status(self) -> dict[str, str]: ...

    def failures(self) -> dict[str, str]: ...

    def drain_state(self) -> DrainState: ...


class Dispatcher:
    """Submits jobs through the API's face of the queues and awaits their answers."""

    def __init__(
        self,
        queues: ApiQueues,
        request_timeout_s: float,
        pixels: PixelStore | None = None,
        decode_here: Callable[[bytes], npt.NDArray[np.uint8]] | None = None,
        inline_file_limit: int = 0,
    ) -> None:
        self._queues = queues
        self._request_timeout_s = request_timeout_s
        self._pixels = pixels or PixelStore.disabled()
        self._decode_here = decode_here
        self._inline_file_limit = inline_file_limit
        """Largest file a job may carry through Redis itself (the size of the model input's pixels)."""

    def _stage(self, job: Job) -> Job:
        staged = self._pixels.stage(job)
        if staged.segment is None and staged.encoded and staged.pixels.nbytes > self._inline_file_limit:
            if self._decode_here is None:
                raise InferdError("an image file too large for Redis, and no decoder in this process")
            return dataclasses.replace(
                staged, pixels=self._decode_here(staged.pixels.tobytes()), encoded_size=None
            )
        return staged

    def dispatch(self, job: Job) -> Reply:
        """The job's successful reply; raises the error a shard answered, a 503 if no shard could take the job,
        or a 504 if no answer came before `job.deadline`. The job goes out and its answer is waited for in
        one round trip to Redis."""
        staged = self._stage(job)
        try:
            shard, reply = self._queues.submit_and_await(staged)
            return self._answered(shard, reply)
        finally:
            self._pixels.release(staged)

    def dispatch_many(self, jobs: Sequence[Job]) -> list[Reply]:
        """Every job's successful reply, in order, the jobs running concurrently; the first failure raises as
        `dispatch` does (jobs already queued still run, and their answers expire unread)."""
        staged: list[Job] = []
        try:
            shards = []
            for job in jobs:
                staged.append(self._stage(job))
                shards.append(self._queues.submit(staged[-1]))
            return [
                self._answered(shard, self._queues.await_reply(job.job_id, job.deadline - time.monotonic()))
                for job, shard in zip(jobs, shards, strict=True)
            ]
        finally:
            # Answered, refused or given up on: a job still queued finds its pixels gone and is answered
            # with that, which nobody reads.
            for job in staged:
                self._pixels.release(job)

    def _answered(self, shard: str, reply: Reply | None) -> Reply:
        if reply is None:
            raise DeadlineExceeded(
                f"no answer from shard {shard} within {self._request_timeout_s:g}s; "
                "the appliance is overloaded or a worker is stuck"
            )
        reply.raise_if_error()
        return reply

    def shard_status(self) -> dict[str, str]:
        """Every registered shard and its status, live, down or stuck (raises redis errors for /readyz)."""
        return self._queues.shard_status()

    def failures(self) -> dict[str, str]:
        """Shards whose worker refused to start or hung, with the reason each gave."""
        return self._queues.failures()

    def drain_state(self) -> DrainState:
        """Whether an operator or a shutdown drained the box or some shards (raises redis errors for /readyz)."""
        return self._queues.drain_state()
