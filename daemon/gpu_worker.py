"""One worker per shard: pinned to its device, it batch-classifies its own queue until told to stop.

The loop reads as rq's does: bootstrap (put back a predecessor's claims, register), install signal handlers,
then loop {check the stop flag, claim a batch with a finite blocking timeout, run it, commit every answer,
adopt the work of dead shards now and then}, with teardown in `finally`. First SIGTERM/SIGINT finishes the
batch in hand and exits 0; a second one leaves at once (claimed jobs stay in the processing list, and the
next worker to start puts them back on the queue).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from types import FrameType

import redis

from daemon.errors import EXIT_CONFIG, EXIT_MODEL_LOAD, EXIT_OK, ConfigError, JobDropped, ModelLoadError
from daemon.heartbeat import HeartbeatThread
from daemon.inference import Predictor, run_batch
from daemon.logs import setup_logging
from daemon.metrics import WorkerMetrics
from daemon.model import Classifier
from daemon.queues import ShardQueues
from daemon.redis_conn import Backoff, connect
from daemon.settings import Settings, load_settings
from daemon.shard import SHARDS_ENV, Shard, decode_shards, discover_shards, pin_process
from daemon.wire import BatchRecord, Heartbeat, ShardInfo

log = logging.getLogger(__name__)

IDLE_BLOCK_S = 1.0
"""Longest blocking wait for a first job, so the stop flag and the sweep are looked at at least this often."""
SWEEP_INTERVAL_S = 5.0
"""How often a worker looks for dead shards whose claimed or queued jobs it should adopt."""
BATCH_TIME_WEIGHT = 0.2
"""Weight of the newest batch in the moving average of batch seconds the heartbeat reports: a few batches
move it, one slow batch does not."""


class Worker:
    def __init__(
        self,
        settings: Settings,
        shard: Shard,
        queues: ShardQueues,
        predictor: Predictor,
        handle_signals: bool = True,
    ) -> None:
        self.settings = settings
        self.shard = shard
        self.queues = queues
        self.predictor = predictor
        self.handle_signals = handle_signals
        """False when the loop runs in a thread (tests): only the main thread may install handlers."""
        self.prefix = f"{shard.shard_id}:"
        self.input_shape = (settings.model.input_size, settings.model.input_size, 3)
        self.info = ShardInfo(kind=shard.kind, index=shard.index, name=shard.name)
        self.stop_signals = 0
        self.images_served = 0
        self.batch_s: float | None = None
        """Moving average of the seconds a batch takes, claim to commit: the API's wait estimate."""
        self._last_sweep = time.monotonic()
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

    def request_stop(self) -> None:
        """Ask the loop to finish its batch and leave, as a first SIGTERM does."""
        self.stop_signals += 1

    # -- the loop --------------------------------------------------------------------------------------
    def work(self) -> int:
        log.info("%s starting on %s (pid %d)", self.prefix, self.shard.name, os.getpid())
        if self.handle_signals:
            self.install_signal_handlers()
        self.metrics.starts.labels(self.shard.shard_id).inc()
        self.bootstrap()
        heartbeat = HeartbeatThread(self.beat, self.settings.queue.heartbeat_interval_s, self.prefix).start()
        backoff = Backoff()
        try:
            while not self.stop_signals:
                try:
                    payloads = self.queues.claim_batch(IDLE_BLOCK_S)
                    if payloads:
                        self.execute_batch(payloads)
                    self.sweep_dead_shards()
                    backoff.reset()
                except redis.RedisError as exc:
                    log.warning("%s Redis error (%s); retrying in %.1fs", self.prefix, exc, backoff.delay_s)
                    backoff.pause()
        finally:
            heartbeat.stop()
            self.teardown()
        log.info("%s stopped after %d images", self.prefix, self.images_served)
        return EXIT_OK

    def bootstrap(self) -> None:
        """Put back our own orphaned claims and register, waiting (with backoff) for Redis if need be."""
        backoff = Backoff()
        while not self.stop_signals:
            try:
                requeued = self.queues.requeue_orphans()
                if requeued:
                    log.warning("%s requeued %d job(s) claimed by a previous run", self.prefix, requeued)
                self.beat()
                return
            except redis.RedisError as exc:
                log.warning("%s Redis unreachable (%s); retrying in %.1fs", self.prefix, exc, backoff.delay_s)
                backoff.pause()

    def beat(self) -> None:
        self.queues.beat(self.info, Heartbeat(pid=os.getpid(), batch_s=self.batch_s))

    def execute_batch(self, payloads: list[bytes]) -> None:
        """Run one claimed batch and commit every reply plus the release of the claims in one atomic step."""
        started = time.monotonic()
        outcome = run_batch(payloads, self.predictor, self.shard.shard_id, self.input_shape)
        if outcome.computed:
            self.metrics.record_batch(outcome.computed, outcome.infer_s)
        record = BatchRecord(finished_at=time.time(), size=outcome.computed) if outcome.computed else None
        if self.queues.commit(outcome.replies, record):
            self.images_served += outcome.computed
        else:
            log.warning(
                "%s a live shard adopted this batch of %d while we were stalled; it answers them, we do not",
                self.prefix,
                len(payloads),
            )
        if outcome.computed:
            # Only batches that ran count: skipping expired jobs is nearly free and says nothing of the device.
            elapsed = time.monotonic() - started
            previous = self.batch_s
            self.batch_s = (
                elapsed if previous is None else previous + BATCH_TIME_WEIGHT * (elapsed - previous)
            )

    def sweep_dead_shards(self) -> None:
        """Now and then, adopt the claimed and queued jobs of registered shards whose worker has no heartbeat."""
        if time.monotonic() - self._last_sweep < SWEEP_INTERVAL_S:
            return
        self._last_sweep = time.monotonic()
        for dead, moved in self.queues.adopt_dead_shards().items():
            log.warning("%s adopted %d job(s) of dead shard %s", self.prefix, moved, dead)

    def teardown(self) -> None:
        """Stop receiving work, then fail what is still queued so no caller waits for a worker that left."""
        try:
            self.queues.leave()
            dropped = JobDropped(f"worker {self.shard.shard_id} shut down before running the job; retry")
            failed = self.queues.fail_waiting(dropped)
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
    pin_process(
        shard, settings
    )  # before Keras (and so the ML runtime) is imported: model.py imports it lazily
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
    return Worker(settings, shard, ShardQueues(client, shard.shard_id, settings), classifier).work()


if __name__ == "__main__":
    sys.exit(main())
