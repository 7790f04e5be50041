"""One worker per shard: pinned to its device, it batch-classifies its own queue until told to stop.

The loop reads as rq's does: bootstrap (put back a predecessor's claims, register), install signal handlers,
then loop {check the stop flag, claim a batch with a finite blocking timeout, run it, commit every answer,
adopt the work of dead shards now and then}, with teardown in `finally`. First SIGTERM/SIGINT finishes the
batch in hand and exits 0; a second one leaves at once (claimed jobs stay in the processing list, and the
next worker to start puts them back on the queue).

Before any of that, `start_serving` (daemon.worker.startup) makes sure the shard computes where it should: once pinned and with its
runtime loaded, the worker asks the runtime what it sees (`daemon.worker.device`). A worker that cannot serve (its
runtime sees no GPU, its model does not load, warm-up runs out of device memory) says why in one log line,
leaves a "failed" registry entry with that reason for /readyz, /metrics and gpu_status, and exits with a code
supervisord does not retry.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from dataclasses import replace
from types import FrameType

import redis

from daemon.errors import (
    EXIT_CONFIG,
    EXIT_DEVICE,
    EXIT_MODEL_LOAD,
    EXIT_OK,
    EXIT_STUCK,
    ConfigError,
    DeviceUnavailable,
    JobDropped,
    ModelLoadError,
    UsageArgumentParser,
)
from daemon.images.shard_decode import BatchDecoder, decoder_for_shard
from daemon.logs import setup_logging
from daemon.metrics.inferd import WorkerMetrics
from daemon.metrics.triton import TritonBatchMetrics
from daemon.model.active_model import applied, with_active_model
from daemon.queue.connection import Backoff, connect
from daemon.queue.faces import ShardQueues
from daemon.queue.pixel_store import PixelStore
from daemon.queue.wire import STUCK, BatchRecord, Heartbeat, ShardInfo, SwapResult
from daemon.settings import Settings, load_settings
from daemon.shard import SHARDS_ENV, Shard, decode_shards, discover_shards, pin_process
from daemon.worker.batching import Batcher
from daemon.worker.heartbeat import HeartbeatThread
from daemon.worker.inference import Predictor, run_batch
from daemon.worker.model_swap import Loaded, Swapper
from daemon.worker.pace import BatchPace
from daemon.worker.startup import check_device, refuse, shard_info, start_serving

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
        info: ShardInfo | None = None,
        pixels: PixelStore | None = None,
        decoder: BatchDecoder | None = None,
        warm_batch: tuple[int, float] | None = None,
    ) -> None:
        """`warm_batch`: (jobs, seconds) of a timed warm batch, the pace until real batches are timed."""
        self.settings = settings
        self.pixels = pixels or PixelStore.for_settings(settings)
        """Where jobs' shared-memory pixels are read from, and orphaned ones swept."""
        self.decoder = decoder or decoder_for_shard(
            settings.model, settings.api.max_image_pixels, None, os.cpu_count() or 1
        )
        """Turns the image files of a batch into model inputs (on the device where it can)."""
        self.shard = shard
        self.queues = queues
        self.batcher = Batcher(queues, settings.batching)
        """How this shard's batches are formed (daemon.worker.batching)."""
        self.predictor = predictor
        self.handle_signals = handle_signals
        """False when the loop runs in a thread (tests): only the main thread may install handlers."""
        self.prefix = f"{shard.shard_id}:"
        self.input_shape = (settings.model.input_size, settings.model.input_size, 3)
        info = info or replace(shard_info(shard), device=shard.name)
        self.info = replace(info, model_version=settings.model.version)
        """What the registry shows of this shard: the device as its runtime reported it (`start_serving`),
        and the version of the model it computes with."""
        self.stop_signals = 0
        self.images_served = 0
        self.batches_served = 0
        self.batch_started: float | None = None
        """When the batch in hand began (monotonic), None between batches: the heartbeat's test of progress."""
        self.batch_jobs = 0
        """Jobs in the batch in hand: its expected time grows with them."""
        self.pace = BatchPace(settings.queue.stuck_after_s)
        """This shard's recent batch times: when a batch is overdue, and when it is wedged."""
        if warm_batch is not None:
            self.pace.record(*warm_batch)
        self.batch_s: float | None = None
        """Moving average of the seconds a batch takes, claim to commit: the API's wait estimate."""
        self._last_sweep = time.monotonic()
        self.metrics = WorkerMetrics(shard.shard_id)
        self.triton_metrics = TritonBatchMetrics(settings.model)
        self.swapper = Swapper(queues, settings, self.prefix)

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
        log.info("%s serving on %s (pid %d)", self.prefix, self.info.device or self.shard.name, os.getpid())
        if self.handle_signals:
            self.install_signal_handlers()
        self.metrics.starts.labels(self.shard.shard_id).inc()
        self.bootstrap()
        heartbeat = HeartbeatThread(self.beat, self.settings.queue.heartbeat_interval_s, self.prefix).start()
        backoff = Backoff()
        try:
            while not self.stop_signals:
                try:
                    payloads = self.batcher.claim_batch(IDLE_BLOCK_S, self.pace.overdue_rule())
                    if payloads:
                        self.execute_batch(payloads)
                    loaded = self.swapper.poll(self.settings.model.version)
                    if loaded is not None:
                        self.take_up(loaded)
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
        """Say we are alive, if we are making progress: a model call that hangs (in native code, where the
        heartbeat thread still runs) must not keep the shard looking live while every caller times out."""
        started = self.batch_started
        if started is not None:
            running = time.monotonic() - started
            if running > self.stuck_after_s():
                self.leave_stuck(running, since=time.time() - running)
        self.queues.beat(self.info, Heartbeat(pid=os.getpid(), batch_s=self.batch_s))

    def stuck_after_s(self) -> float:
        """How long the batch in hand may run before the worker is taken for wedged (`daemon.worker.pace`)."""
        return self.pace.stuck_after_s(self.batch_jobs)

    def leave_stuck(self, running_s: float, since: float) -> None:
        """Called from the heartbeat thread: say why and since when (unix time the batch began), take the
        shard out of dispatch, and leave at once so supervisord restarts us; supervisord's event hands our
        claimed batch to a live shard meanwhile (other shards have taken what waited behind it already)."""
        began = time.strftime("%H:%M:%S", time.gmtime(since))
        reason = (
            f"stuck since {began} UTC: a batch of {self.batch_jobs} has been in the model for {running_s:.1f}s "
            f"(limit {self.stuck_after_s():.1f}s): the model call is stuck; restarting the worker"
        )
        log.error("%s %s", self.prefix, reason)
        self.metrics.stuck.labels(self.shard.shard_id).inc()
        try:
            self.queues.mark_failed(replace(self.info, state=STUCK, reason=reason, since=round(since, 3)))
        except redis.RedisError as exc:
            log.warning("%s could not record the stuck state: %s", self.prefix, exc)
        # The main thread is inside the model call and cannot be interrupted: only leaving the process frees it.
        os._exit(EXIT_STUCK)

    def _model_starts(self) -> None:
        self.batch_started = time.monotonic()

    def execute_batch(self, payloads: list[bytes]) -> None:
        """Run one claimed batch and commit every reply plus the release of the claims in one atomic step."""
        self.batch_jobs = len(payloads)
        started = time.monotonic()
        try:
            outcome = run_batch(
                payloads,
                self.predictor,
                self.shard.shard_id,
                self.input_shape,
                self.settings.model.version,
                read_segment=self.pixels.read,
                decoder=self.decoder,
                # The wedge clock starts at the model call: the pace is the model's, and decoding a batch
                # of large photos in the shard is slow work, not a hung device.
                model_starts=self._model_starts,
            )
        finally:
            self.batch_started = None
        if outcome.computed:
            self.metrics.record_batch(outcome.computed, outcome.infer_s)
            self.triton_metrics.record_batch(outcome.computed, outcome.infer_s, outcome.queue_s)
        record = BatchRecord(finished_at=time.time(), size=outcome.computed) if outcome.computed else None
        if self.queues.commit(outcome.replies, record):
            self.images_served += outcome.computed
            self.batches_served += 1
        else:
            log.warning(
                "%s a live shard adopted this batch of %d while we were stalled; it answers them, we do not",
                self.prefix,
                len(payloads),
            )
        if self.batcher.stolen_from is not None:
            self.metrics.stolen.labels(self.shard.shard_id, self.batcher.stolen_from).inc(self.batcher.stolen)
            log.debug(
                "%s took %d job(s) waiting behind %s's overdue batch",
                self.prefix,
                self.batcher.stolen,
                self.batcher.stolen_from,
            )
        if outcome.computed:
            # Only batches that ran count: skipping expired jobs is nearly free and says nothing of the device.
            elapsed = time.monotonic() - started
            self.pace.record(outcome.computed, elapsed)
            previous = self.batch_s
            self.batch_s = (
                elapsed if previous is None else previous + BATCH_TIME_WEIGHT * (elapsed - previous)
            )

    def take_up(self, loaded: Loaded) -> None:
        """Between two batches: compute with the model `loaded` from now on, if `inferd reload` still waits
        for it (it withdraws a request it gave up on, and then the old model serves on)."""
        model = applied(loaded.choice, self.settings.model)
        old_version = self.settings.model.version
        detail = f"version {old_version} -> {model.version}, loaded and checked in {loaded.load_s:.1f}s"
        if not self.queues.answer_swap(loaded.asked, SwapResult(model.version, True, detail)):
            log.warning(
                "%s inferd reload stopped waiting for version %d; keeping the model in use",
                self.prefix,
                model.version,
            )
            return
        self.settings = replace(self.settings, model=model)
        self.predictor = loaded.predictor
        self.pace.forget()  # the old model's batch times say nothing of the new one's
        self.info = replace(self.info, model_version=model.version)
        self.triton_metrics = TritonBatchMetrics(model)
        self.beat()
        log.info("%s now serving %s (%s)", self.prefix, model.path, detail)

    def sweep_dead_shards(self) -> None:
        """Now and then, adopt the claimed and queued jobs of registered shards whose worker has no heartbeat,
        and remove pixel segments that outlived their owner (a killed API process)."""
        if time.monotonic() - self._last_sweep < SWEEP_INTERVAL_S:
            return
        self._last_sweep = time.monotonic()
        for dead, moved in self.queues.adopt_dead_shards().items():
            log.warning("%s adopted %d job(s) of dead shard %s", self.prefix, moved, dead)
        orphans = self.pixels.sweep()
        if orphans:
            log.warning(
                "%s removed %d orphaned pixel segment(s) in %s", self.prefix, orphans, self.pixels.folder
            )

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


def own_shards(settings: Settings) -> list[Shard]:
    """The shards of this appliance, as the launcher discovered them (or discovered here, run by hand)."""
    encoded = os.environ.get(SHARDS_ENV)
    return decode_shards(encoded) if encoded else discover_shards(settings)


def main(argv: list[str] | None = None) -> int:
    parser = UsageArgumentParser(description="inferd worker: batch-classifies one shard's queue")
    parser.add_argument("--config", help="settings file (default: INFERD_CONFIG or conf/settings.toml)")
    parser.add_argument(
        "--shard-index", type=int, default=0, help="which discovered shard this worker serves"
    )
    parser.add_argument(
        "--check-device",
        action="store_true",
        help="pin, load the runtime, print what this shard would compute on as JSON, and exit (inferd check)",
    )
    args = parser.parse_args(argv)
    setup_logging()
    try:
        # The model `inferd reload` chose last, if it did: a worker restarted after a swap keeps the new one.
        settings = with_active_model(load_settings(args.config))
        shards = own_shards(settings)
        if not 0 <= args.shard_index < len(shards):
            raise ConfigError(
                f"--shard-index {args.shard_index} is outside the {len(shards)} discovered shard(s)"
            )
    except ConfigError as exc:
        log.error("worker: configuration error: %s", exc.message)
        return EXIT_CONFIG
    shard = shards[args.shard_index]
    # Before Keras (and so the ML runtime) is imported: model.py and device.py import it lazily.
    pin_process(shard, settings, len(shards))
    if args.check_device:
        return check_device(shard, settings)
    client = connect(settings, socket_timeout_s=IDLE_BLOCK_S + 5.0)
    queues = ShardQueues(client, shard.shard_id, settings)
    try:
        info, classifier, warm_batch = start_serving(shard, settings)
    except DeviceUnavailable as exc:
        return refuse(shard, queues, exc.message, EXIT_DEVICE)
    except ModelLoadError as exc:
        return refuse(shard, queues, exc.message, EXIT_MODEL_LOAD)
    # A GPU shard's worker sees its one GPU as cuda:0 (CUDA_VISIBLE_DEVICES, daemon/shard.py).
    on_gpu = shard.kind == "gpu" and not info.fallback
    decoder = decoder_for_shard(
        settings.model, settings.api.max_image_pixels, "cuda:0" if on_gpu else None, os.cpu_count() or 1
    )
    log.info("%s: uploads decode with the %s decoder", shard.shard_id, decoder.name)
    return Worker(
        settings, shard, queues, classifier, info=info, decoder=decoder, warm_batch=warm_batch
    ).work()


if __name__ == "__main__":
    sys.exit(main())
