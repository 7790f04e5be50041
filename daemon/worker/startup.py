"""A shard worker's start: serve where the shard should compute, or say why not and stay down.

`start_serving` loads the runtime pinned to the shard, asks it what it sees (daemon.worker.device), loads
and warms the model, and times one warm batch (the shard's pace until real batches are timed); `refuse` leaves a "failed" registry entry with the reason for /readyz, /metrics and
gpu_status, for an exit code supervisord does not retry (daemon.errors.WORKER_FINAL_EXITS); `check_device`
is `inferd check`'s probe. `shard_info` is the one place a shard's registry entry is made.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace

import numpy as np
import redis

from daemon.errors import EXIT_DEVICE, EXIT_OK, DeviceUnavailable, ModelLoadError
from daemon.model.classifier import Classifier
from daemon.model.standin import StandinModel, is_standin
from daemon.queue.connection import Backoff
from daemon.queue.faces import ShardQueues
from daemon.queue.wire import FAILED, ShardInfo
from daemon.settings import Settings
from daemon.shard import Shard
from daemon.worker.device import is_out_of_memory, judge_device, limit_gpu_memory, probe_runtime
from daemon.worker.inference import Predictor

log = logging.getLogger(__name__)

REFUSAL_REPORT_TRIES = 5
"""Attempts (with backoff, a few seconds in all) to record a refusal in Redis before exiting regardless."""


def shard_info(shard: Shard) -> ShardInfo:
    """The registry entry of `shard` as discovery named it; each use adds what it found (device, state)."""
    return ShardInfo(kind=shard.kind, index=shard.index, name=shard.name)


def timed_warm_batch(predictor: Predictor, settings: Settings) -> tuple[int, float]:
    """(jobs, seconds) of one warm batch of the largest size: the shard's pace until real batches are timed."""
    size = settings.model.input_size
    jobs = settings.batching.max_batch_size
    started = time.monotonic()
    predictor.predict(np.zeros((jobs, size, size, 3), dtype=np.uint8))
    return jobs, time.monotonic() - started


def start_serving(shard: Shard, settings: Settings) -> tuple[ShardInfo, Predictor, tuple[int, float]]:
    """Load the runtime, check it sees this shard's device, load and warm the model, and time a warm batch
    (`timed_warm_batch`); raises what stops us."""
    if is_standin(settings.model.path):
        # No runtime to ask: the stand-in computes nothing, anywhere. Its warm-up is one batch of one, and
        # does not count towards `hang_after_batches`, as a real batch would.
        standin = StandinModel(settings.model, shard.shard_id)
        started = time.monotonic()
        standin.warm_up(settings.batching.max_batch_size)
        device = f"stand-in ({settings.model.path.name})"
        return replace(shard_info(shard), device=device), standin, (1, time.monotonic() - started)
    report = probe_runtime(settings.model.backend)
    verdict = judge_device(shard, report, settings.devices.cpu_fallback)
    if not verdict.serve:
        raise DeviceUnavailable(verdict.reason or "the runtime does not see this shard's device")
    if verdict.fallback:
        log.warning("%s: %s", shard.shard_id, verdict.reason)
    on_gpu = shard.kind == "gpu" and not verdict.fallback
    memory = (report.memory_total_bytes or shard.memory_total_bytes) if on_gpu else None
    if on_gpu:
        limit_gpu_memory(report.backend, settings.devices.gpu_memory_limit_mb, memory)
    info = replace(
        shard_info(shard),
        reason=verdict.reason,
        device=verdict.device,
        fallback=verdict.fallback,
        backend=report.backend,
        runtime_version=report.runtime_version,
        cuda_version=report.cuda_version if on_gpu else None,
        memory_total_bytes=memory,
    )
    classifier = Classifier(settings.model, settings.batching.max_batch_size)
    try:
        classifier.warm_up()
        warm_batch = timed_warm_batch(classifier, settings)
    except Exception as exc:
        # A model that loads but cannot run a batch will not start working on a retry either.
        if is_out_of_memory(exc):
            raise ModelLoadError(
                f"out of device memory warming up batches of up to {settings.batching.max_batch_size} "
                f"({type(exc).__name__}): lower batching.max_batch_size or raise devices.gpu_memory_limit_mb"
            ) from exc
        log.exception("%s: the model failed its warm-up batch", shard.shard_id)
        raise ModelLoadError(f"the model failed its warm-up batch: {type(exc).__name__}: {exc}") from exc
    log.info(
        "%s: %s %s on %s, batch buckets %s, a warm batch of %d in %.3fs",
        shard.shard_id,
        report.backend,
        report.runtime_version,
        verdict.device,
        ",".join(map(str, classifier.buckets)),
        *warm_batch,
    )
    return info, classifier, warm_batch


def check_device(shard: Shard, settings: Settings) -> int:
    """Print what this shard would compute on, as one JSON line, for `inferd check`; 80 if it would refuse."""
    try:
        report = probe_runtime(settings.model.backend)
    except DeviceUnavailable as exc:
        print(json.dumps({"shard": shard.shard_id, "serve": False, "reason": exc.message}))
        return EXIT_DEVICE
    verdict = judge_device(shard, report, settings.devices.cpu_fallback)
    print(json.dumps({"shard": shard.shard_id, **asdict(verdict), "runtime": asdict(report)}))
    return EXIT_OK if verdict.serve else EXIT_DEVICE


def refuse(shard: Shard, queues: ShardQueues, reason: str, code: int) -> int:
    """Say in one line why this shard cannot serve, leave that in the registry for every surface, exit."""
    log.error("%s: cannot serve (exit %d): %s", shard.shard_id, code, reason)
    info = replace(shard_info(shard), state=FAILED, reason=reason)
    backoff = Backoff()
    for _ in range(REFUSAL_REPORT_TRIES):
        try:
            queues.mark_failed(info)
            break
        except redis.RedisError as exc:
            log.debug("%s: Redis not reachable to record the failure (%s)", shard.shard_id, exc)
            backoff.pause()
    else:
        log.warning("%s: could not record the failure in Redis; it shows as down, not failed", shard.shard_id)
    return code
