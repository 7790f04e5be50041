"""One batch, from the bytes a shard claimed to the reply each caller gets: pure, with no Redis in sight.

Triage first: a job that does not parse, or whose pixels do not fit the model, is answered with an error;
a job whose caller has passed its deadline is skipped (the caller already has its 504, and computing it would
only waste the device). Jobs that carry an image file are decoded here, by the shard's decoder
(`daemon.images.shard_decode`), straight into the batch the model reads; an image that cannot be decoded is
answered with its own 400, 413 or 415 and the rest go on. The rest go through the model in one call; if that call fails, every one of them is
answered with the failure at once rather than left to time out (as MLServer fails a whole batch).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from daemon.errors import InferdError, InferenceFailed
from daemon.model.classifier import top_k
from daemon.queue.wire import ALL_CLASSES, Job, PixelsGone, Reply, SegmentReader, WireError

log = logging.getLogger(__name__)


class Predictor(Protocol):
    """What a batch needs of a model: `daemon.model.classifier.Classifier`, or a stand-in with a fixed cost in bench."""

    labels: list[str]

    def predict(self, batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]: ...


class BatchDecoder(Protocol):
    """What a batch needs to turn image files into model inputs (`daemon.images.shard_decode`'s decoders)."""

    def decode_batch(
        self, files: Sequence[npt.NDArray[np.uint8]]
    ) -> list[npt.NDArray[np.uint8] | InferdError]: ...


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    replies: dict[str, Reply] = field(default_factory=dict)
    """One reply per job that still has a caller, keyed by job id."""
    computed: int = 0
    """Images that went through the model (0 if the call failed or nothing was left to compute)."""
    infer_s: float = 0.0
    """Seconds the model call (and top-k) took."""
    queue_s: float = 0.0
    """Seconds the computed jobs waited between enqueue and the batch's start, summed over the jobs."""


def run_batch(
    payloads: Sequence[bytes],
    predictor: Predictor,
    shard: str,
    input_shape: tuple[int, int, int],
    model_version: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    read_segment: SegmentReader | None = None,
    decoder: BatchDecoder | None = None,
    model_starts: Callable[[], None] | None = None,
) -> BatchOutcome:
    """Triage the claimed jobs and classify the ones worth computing; every caller still waiting gets a reply.
    Jobs whose pixels wait in shared memory are read with `read_segment`; image files are decoded with
    `decoder`."""
    started = clock()
    replies: dict[str, Reply] = {}
    live: list[Job] = []
    for payload in payloads:
        try:
            job = Job.decode(payload, read_segment)
        except PixelsGone as exc:
            # Its caller timed out and removed them: the answer goes to nobody, and this is no fault.
            log.debug("%s: %s", shard, exc)
            with contextlib.suppress(WireError):
                replies[Job.peek_id(payload)] = Reply.failure(shard, InferenceFailed(str(exc)))
            continue
        except WireError as exc:
            log.error("%s: dropping malformed job: %s", shard, exc)
            with contextlib.suppress(WireError):
                replies[Job.peek_id(payload)] = Reply.failure(shard, InferenceFailed(str(exc)))
            continue
        if job.deadline <= started:
            continue
        if not job.encoded and job.pixels.shape != input_shape:
            error = InferenceFailed(f"job pixels {job.pixels.shape} != model input {input_shape}")
            replies[job.job_id] = Reply.failure(shard, error)
            continue
        live.append(job)
    live, batch = _assemble(
        live,
        input_shape,
        decoder,
        lambda job, error: replies.update({job.job_id: Reply.failure(shard, error)}),
    )
    if not live:
        return BatchOutcome(replies)
    try:
        if model_starts is not None:
            model_starts()
        probabilities = predictor.predict(batch)
        most = max(job.top_k for job in live)
        ranked = top_k(probabilities, predictor.labels, most) if most else [()] * len(live)
    except Exception as exc:
        # A failing model must not take the worker down: its callers get the reason, the next batch a chance.
        log.exception("%s: batch of %d failed", shard, len(live))
        failure = InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}")
        replies.update({job.job_id: Reply.failure(shard, failure) for job in live})
        return BatchOutcome(replies)
    infer_s = clock() - started
    queue_s = [max(0.0, started - job.enqueued_at) for job in live]
    for row, (job, predictions, waited_s) in enumerate(zip(live, ranked, queue_s, strict=True)):
        everything = job.top_k == ALL_CLASSES
        replies[job.job_id] = Reply(
            shard=shard,
            predictions=() if everything else predictions[: job.top_k],
            probabilities=probabilities[row] if everything else None,
            batch_size=len(live),
            queue_ms=waited_s * 1000.0,
            infer_ms=infer_s * 1000.0,
            model_version=model_version,
        )
    return BatchOutcome(replies, computed=len(live), infer_s=infer_s, queue_s=sum(queue_s))


def _assemble(
    jobs: list[Job],
    input_shape: tuple[int, int, int],
    decoder: BatchDecoder | None,
    refuse: Callable[[Job, InferdError], None],
) -> tuple[list[Job], npt.NDArray[np.uint8]]:
    """The jobs that have a model input, and their batch: pixels copied in, image files decoded (each failure
    handed to `refuse`)."""
    encoded = [job for job in jobs if job.encoded]
    inputs: dict[str, npt.NDArray[np.uint8]] = {}
    if encoded:
        if decoder is None:
            results: list[npt.NDArray[np.uint8] | InferdError] = [
                InferenceFailed("this worker has no image decoder") for _ in encoded
            ]
        else:
            results = decoder.decode_batch([job.pixels for job in encoded])
        for job, result in zip(encoded, results, strict=True):
            if isinstance(result, InferdError):
                refuse(job, result)
            else:
                inputs[job.job_id] = result
    kept = [job for job in jobs if not job.encoded or job.job_id in inputs]
    batch = np.empty((len(kept), *input_shape), dtype=np.uint8)
    for row, job in enumerate(kept):
        batch[row] = inputs.get(job.job_id, job.pixels)
    return kept, batch
