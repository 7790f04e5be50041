"""One worker per shard: pinned to its device, it batch-classifies its own queue until told to stop.

The loop reads as rq's does: bootstrap, install signal handlers, then loop {check the stop flag, claim a
batch with a finite blocking timeout, run it, hand each caller its answer}, with teardown in `finally`.
First SIGTERM/SIGINT finishes the batch in hand and exits 0; a second one leaves at once (claimed jobs stay
in the processing list, and the next worker to start puts them back on the queue).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Protocol

import numpy as np
import numpy.typing as npt
import redis

from daemon.batching import BatchClaimer, adopt_orphans
from daemon.dispatcher import shard_liveness
from daemon.errors import (
    EXIT_CONFIG,
    EXIT_MODEL_LOAD,
    EXIT_OK,
    ConfigError,
    InferenceFailed,
    JobDropped,
    ModelLoadError,
)
from daemon.logs import setup_logging
from daemon.metrics import WorkerMetrics
from daemon.model import Classifier, top_k
from daemon.redis_conn import connect
from daemon.replies import answer_jobs, fail_queued
from daemon.settings import Settings, load_settings
from daemon.shard import SHARDS_ENV, Shard, decode_shards, discover_shards, pin_process
from daemon.wire import (
    SHARDS_KEY,
    Job,
    Reply,
    WireError,
    heartbeat_key,
    now,
)

log = logging.getLogger(__name__)

IDLE_BLOCK_S = 1.0
"""Longest blocking wait for a first job, so the stop flag and the sweep are looked at at least this often."""
BACKOFF_START_S = 0.1
"""First pause after a Redis error; doubles on each further error."""
BACKOFF_MAX_S = 2.0
"""Cap of the reconnect backoff, so service resumes within this long after Redis returns."""
SWEEP_INTERVAL_S = 5.0
"""How often a worker looks for dead shards whose claimed or queued jobs it should adopt."""


class Predictor(Protocol):
    """What the loop needs of a model: `daemon.model.Classifier`, or a stand-in with a fixed cost in bench."""

    labels: list[str]

    def predict(self, batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]: ...


class Worker:
    def __init__(self, settings: Settings, shard: Shard, client: redis.Redis, classifier: Predictor) -> None:
        self.settings = settings
        self.shard = shard
        self.client = client
        self.classifier = classifier
        self.prefix = f"{shard.shard_id}:"
        self.claimer = BatchClaimer(
            client, shard.shard_id, settings.batching.max_batch_size, settings.batching.max_wait_ms / 1000.0
        )
        self.stop_signals = 0
        self._stop_heartbeat = threading.Event()
        self._last_sweep = time.monotonic()
        self.images_served = 0
        self.metrics = WorkerMetrics(shard.shard_id)

    # -- signals: handlers only record; the loop acts --------------------------------------------------
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)

    def _request_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_signals += 1
        if self.stop_signals >= 2:
            # Second signal: leave now. Claimed jobs stay in the processing list and are requeued on restart.
            os._exit(1)

    # -- the loop --------------------------------------------------------------------------------------
    def work(self) -> int:
        log.info("%s starting on %s (pid %d)", self.prefix, self.shard.name, os.getpid())
        self.install_signal_handlers()
        self.metrics.starts.labels(self.shard.shard_id).inc()
        self.bootstrap_with_backoff()
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        heartbeat.start()
        backoff = BACKOFF_START_S
        try:
            while not self.stop_signals:
                try:
                    payloads = self.claimer.claim_batch(IDLE_BLOCK_S)
                    if payloads:
                        self.execute_batch(payloads)
                    self.sweep_dead_shards()
                    backoff = BACKOFF_START_S
                except redis.RedisError as exc:
                    log.warning("%s Redis error (%s); retrying in %.1fs", self.prefix, exc, backoff)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            self._stop_heartbeat.set()
            heartbeat.join(timeout=2)
            self.teardown()
        log.info("%s stopped after %d images", self.prefix, self.images_served)
        return EXIT_OK

    def bootstrap_with_backoff(self) -> None:
        """Put back our own orphaned claims and register, waiting (with backoff) for Redis if need be."""
        backoff = BACKOFF_START_S
        while not self.stop_signals:
            try:
                requeued = self.claimer.requeue_orphans()
                if requeued:
                    log.warning("%s requeued %d job(s) claimed by a previous run", self.prefix, requeued)
                self.beat()
                return
            except redis.RedisError as exc:
                log.warning("%s Redis unreachable (%s); retrying in %.1fs", self.prefix, exc, backoff)
                time.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def beat(self) -> None:
        """Say we are alive; registering again each time lets a restarted (empty) Redis learn of us."""
        info = {"kind": self.shard.kind, "index": self.shard.index, "name": self.shard.name}
        beat = {"pid": os.getpid(), "images": self.images_served}
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(SHARDS_KEY, self.shard.shard_id, json.dumps(info))
        pipe.set(
            heartbeat_key(self.shard.shard_id),
            json.dumps(beat),
            px=int(self.settings.queue.heartbeat_ttl_s * 1000),
        )
        pipe.execute()

    def _heartbeat_loop(self) -> None:
        # A thread, so a long batch on a slow device does not make a healthy worker look dead.
        while not self._stop_heartbeat.wait(self.settings.queue.heartbeat_interval_s):
            try:
                self.beat()
            except redis.RedisError as exc:
                log.debug("%s heartbeat failed: %s", self.prefix, exc)

    def execute_batch(self, payloads: list[bytes]) -> None:
        """Run one batch and commit every reply plus the release of the claims in one transaction."""
        started = now()
        replies: dict[str, Reply] = {}
        live: list[Job] = []
        for payload in payloads:
            try:
                job = Job.decode(payload)
            except WireError as exc:
                log.error("%s dropping malformed job: %s", self.prefix, exc)
                with contextlib.suppress(WireError):
                    replies[Job.peek_id(payload)] = Reply.failure(
                        self.shard.shard_id, InferenceFailed(str(exc))
                    )
                continue
            if job.deadline <= started:
                continue  # the caller has already answered 504; computing it would only waste the device
            live.append(job)
        expected = (self.settings.model.input_size, self.settings.model.input_size, 3)
        for job in [job for job in live if job.pixels.shape != expected]:
            replies[job.job_id] = Reply.failure(
                self.shard.shard_id,
                InferenceFailed(f"job pixels {job.pixels.shape} != model input {expected}"),
            )
        live = [job for job in live if job.pixels.shape == expected]
        if live:
            replies.update(self.classify(live, started))
        self.commit(replies, batch_size=len(live))

    def classify(self, jobs: list[Job], started: float) -> dict[str, Reply]:
        batch = np.stack([job.pixels for job in jobs])
        try:
            probabilities = self.classifier.predict(batch)
            predictions = top_k(probabilities, self.classifier.labels, max(job.top_k for job in jobs))
        except Exception as exc:
            # One failure fails the whole batch's callers at once rather than leaving them to time out.
            log.exception("%s batch of %d failed", self.prefix, len(jobs))
            failure = InferenceFailed(f"inference failed: {type(exc).__name__}: {exc}")
            return {job.job_id: Reply.failure(self.shard.shard_id, failure) for job in jobs}
        infer_ms = (now() - started) * 1000.0
        self.metrics.record_batch(len(jobs), infer_ms / 1000.0)
        return {
            job.job_id: Reply(
                shard=self.shard.shard_id,
                predictions=ranked[: job.top_k],
                batch_size=len(jobs),
                queue_ms=max(0.0, (started - job.enqueued_at) * 1000.0),
                infer_ms=infer_ms,
            )
            for job, ranked in zip(jobs, predictions, strict=True)
        }

    def commit(self, replies: dict[str, Reply], batch_size: int) -> None:
        """Answers, the release of our claims and the batch record, in one atomic step: all or none."""
        record = json.dumps({"t": time.time(), "n": batch_size}) if batch_size else ""
        answer_jobs(self.client, self.shard.shard_id, replies, self.settings.queue.answer_ttl_s, True, record)
        self.images_served += batch_size

    def sweep_dead_shards(self) -> None:
        """Adopt the claimed and queued jobs of registered shards whose worker has no heartbeat."""
        if time.monotonic() - self._last_sweep < SWEEP_INTERVAL_S:
            return
        self._last_sweep = time.monotonic()
        for other, alive in shard_liveness(self.client).items():
            if alive or other == self.shard.shard_id:
                continue
            moved = adopt_orphans(self.client, other, self.shard.shard_id)
            if moved:
                log.warning("%s adopted %d job(s) of dead shard %s", self.prefix, moved, other)

    def teardown(self) -> None:
        """Stop receiving work, then fail what is still queued so no caller waits for a worker that left."""
        try:
            self.client.delete(heartbeat_key(self.shard.shard_id))
            dropped = JobDropped(f"worker {self.shard.shard_id} shut down before running the job; retry")
            failed = fail_queued(self.client, self.shard.shard_id, dropped, self.settings.queue.answer_ttl_s)
            if failed:
                log.info("%s failed %d queued job(s) cleanly on shutdown", self.prefix, failed)
        except redis.RedisError as exc:
            log.warning("%s could not tidy up in Redis: %s", self.prefix, exc)


def pick_own_shard(settings: Settings, shard_index: int) -> Shard:
    encoded = os.environ.get(SHARDS_ENV)
    shards = decode_shards(encoded) if encoded else discover_shards(settings)
    if not 0 <= shard_index < len(shards):
        raise ConfigError(f"--shard-index {shard_index} is outside the {len(shards)} discovered shard(s)")
    return shards[shard_index]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="inferd worker: batch-classifies one shard's queue")
    parser.add_argument("--config", help="settings file (default: INFERD_CONFIG or conf/settings.toml)")
    parser.add_argument(
        "--shard-index", type=int, default=0, help="which discovered shard this worker serves"
    )
    args = parser.parse_args(argv)
    setup_logging()
    try:
        settings = load_settings(args.config)
        shard = pick_own_shard(settings, args.shard_index)
    except ConfigError as exc:
        log.error("worker: configuration error: %s", exc.message)
        return EXIT_CONFIG
    pin_process(shard, settings)  # before Keras (and so the ML runtime) is imported
    try:
        classifier = Classifier(settings.model)
        classifier.warm_up(settings.batching.max_batch_size)
    except ModelLoadError as exc:
        log.error("%s: %s", shard.shard_id, exc.message)
        return EXIT_MODEL_LOAD
    except Exception:
        # A model that loads but cannot run a batch will not start working on a retry either.
        log.exception("%s: the model failed its warm-up batch", shard.shard_id)
        return EXIT_MODEL_LOAD
    client = connect(settings, socket_timeout_s=IDLE_BLOCK_S + 5.0)
    return Worker(settings, shard, client, classifier).work()


if __name__ == "__main__":
    sys.exit(main())
