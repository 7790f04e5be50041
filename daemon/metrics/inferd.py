"""Prometheus metrics: request and batch figures recorded where they happen, queues and GPUs read at scrape.

Under the appliance every process (gunicorn workers and model workers alike) writes its samples to files in
PROMETHEUS_MULTIPROC_DIR, which the launcher empties at each start, and `/metrics` on any API process sums
them: so counters survive a gunicorn worker's restart, and worker restarts can be counted at all.
Without that variable (tests, a bare `create_app`) each app keeps its own in-memory registry.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import falcon
import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from daemon.metrics.triton import TritonGpuFamilies
from daemon.ops.nvml import Nvml
from daemon.queue.registry import read_shards
from daemon.queue.wire import STUCK

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256)


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def _own_registry() -> CollectorRegistry | None:
    # In multiprocess mode samples go to files and the live registry is built at scrape time.
    return None if multiprocess_mode() else CollectorRegistry()


class ApiMetrics:
    """What the API records per request."""

    def __init__(self) -> None:
        self.registry = _own_registry()
        self.requests = Counter(
            "inferd_requests", "Requests to /predict by HTTP status", ["status"], registry=self.registry
        )
        self.request_seconds = Histogram(
            "inferd_request_seconds",
            "End-to-end /predict latency inside the API",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.queue_wait_seconds = Histogram(
            "inferd_queue_wait_seconds",
            "Time a job waited in its shard's queue before its batch ran",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )


class WorkerMetrics:
    """What a model worker records per batch."""

    def __init__(self, shard: str) -> None:
        registry = _own_registry()
        self.shard = shard
        self.starts = Counter("inferd_worker_starts", "Worker process starts", ["shard"], registry=registry)
        self.images = Counter("inferd_images", "Images classified", ["shard"], registry=registry)
        self.batch_size = Histogram(
            "inferd_batch_size", "Images per batch", ["shard"], buckets=BATCH_BUCKETS, registry=registry
        )
        self.stuck = Counter(
            "inferd_worker_stuck",
            "Workers restarted because a model call ran past queue.stuck_after_s",
            ["shard"],
            registry=registry,
        )
        self.stolen = Counter(
            "inferd_jobs_stolen",
            "Jobs this shard took, while idle, from the queue of a shard whose batch was overdue",
            ["shard", "from_shard"],
            registry=registry,
        )
        self.inference_seconds = Histogram(
            "inferd_inference_seconds",
            "Time of one batched prediction",
            ["shard"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )

    def record_batch(self, size: int, seconds: float) -> None:
        self.images.labels(self.shard).inc(size)
        self.batch_size.labels(self.shard).observe(size)
        self.inference_seconds.labels(self.shard).observe(seconds)


class MetricsMiddleware:
    """Counts /predict outcomes by status and times them, errors included."""

    def __init__(self, metrics: ApiMetrics) -> None:
        self._metrics = metrics

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.monotonic()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        if req.path != "/predict":
            return
        self._metrics.requests.labels(str(resp.status_code)).inc()
        # Falcon skips the process_request of middleware behind one that raised, so the clock can be
        # missing; that must not turn the answer already chosen (a 401, say) into a 500.
        started: float | None = getattr(req.context, "started", None)
        if started is not None:
            self._metrics.request_seconds.observe(time.monotonic() - started)


class QueueCollector(Collector):
    """Queue depth, in-flight claims and liveness per shard, read from Redis at each scrape."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("inferd_queue_depth", "Jobs waiting per shard", labels=["shard"])
        claimed = GaugeMetricFamily("inferd_jobs_in_flight", "Jobs claimed by a worker", labels=["shard"])
        status = GaugeMetricFamily(
            "inferd_shard_status",
            "1 for the shard's status: live, down (no fresh heartbeat) or stuck (its model call hung)",
            labels=["shard", "status"],
        )
        live = GaugeMetricFamily(
            "inferd_shard_live", "1 if the shard's worker has a fresh heartbeat", labels=["shard"]
        )
        failed = GaugeMetricFamily(
            "inferd_shard_failed",
            "1 if the shard's worker refused to start (no GPU, model not loadable), with its reason",
            labels=["shard", "reason"],
        )
        device = GaugeMetricFamily(
            "inferd_shard_device",
            "Always 1: the device a shard computes on as its runtime reports it; fallback=1 for a GPU shard "
            "serving on the CPU",
            labels=["shard", "device", "backend", "fallback"],
        )
        model_version = GaugeMetricFamily(
            "inferd_shard_model_version",
            "The version of the model the shard computes with (changes shard by shard during `inferd reload`)",
            labels=["shard"],
        )
        stuck_since = GaugeMetricFamily(
            "inferd_shard_stuck_since_seconds",
            "Unix time the batch of a stuck shard went into the model (only while it is stuck)",
            labels=["shard"],
        )
        up = GaugeMetricFamily("inferd_redis_up", "1 if Redis answered this scrape")
        try:
            shards = read_shards(self._client)
        except redis.RedisError as exc:
            log.warning("metrics: Redis unreachable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for state in shards:
            depth.add_metric([state.shard], state.queue_depth)
            claimed.add_metric([state.shard], state.in_flight)
            live.add_metric([state.shard], 1 if state.live else 0)
            status.add_metric([state.shard, state.status], 1)
            info = state.info
            if info is None:
                continue
            failed.add_metric(
                [state.shard, info.reason or "" if info.failed else ""], 1 if info.failed else 0
            )
            if state.status == STUCK and info.since is not None:
                stuck_since.add_metric([state.shard], info.since)
            if info.model_version is not None and state.live:
                model_version.add_metric([state.shard], info.model_version)
            if info.device is not None:
                fallback = "1" if info.fallback else "0"
                device.add_metric([state.shard, info.device, info.backend or "", fallback], 1)
        yield from (up, depth, claimed, live, status, failed, device, model_version, stuck_since)


class GpuCollector(Collector):
    """Utilisation and memory of every GPU, from NVML, under inferd's names and Triton's (`nv_gpu_*`, with power);
    nothing at all on a machine without NVML."""

    def __init__(self, nvml: Any = None) -> None:
        self._module = nvml
        self._session: Nvml | None = None  # started at the first scrape: most API processes are never scraped

    def collect(self) -> Iterator[Metric]:
        if self._session is None:
            self._session = Nvml.open(self._module)
            if not self._session.available:
                log.debug("metrics: NVML unavailable: %s", self._session.unavailable_reason)
        util = GaugeMetricFamily("inferd_gpu_utilization_percent", "GPU utilisation", labels=["gpu"])
        used = GaugeMetricFamily("inferd_gpu_memory_used_bytes", "GPU memory in use", labels=["gpu"])
        total = GaugeMetricFamily("inferd_gpu_memory_total_bytes", "GPU memory", labels=["gpu"])
        triton = TritonGpuFamilies()
        try:
            gpus = self._session.gpus()
        except Exception as exc:  # NVML's own error class per return code; no GPU is not a scrape error
            log.debug("metrics: NVML cannot list GPUs: %s", exc)
            gpus = []
        for gpu in gpus:
            reading = self._session.read(gpu.index)
            if reading is None:
                continue
            # A figure this GPU does not report is left out rather than shown as 0.
            for family, value in (
                (util, reading.utilization_pct),
                (used, reading.memory_used_bytes),
                (total, reading.memory_total_bytes),
            ):
                if value is not None:
                    family.add_metric([str(gpu.index)], value)
            triton.add(gpu.uuid, reading)
        if self._session.available:
            yield from (util, used, total, *triton.families())


class MetricsResource:
    def __init__(
        self, metrics: ApiMetrics, client: redis.Redis, nvml: Any = None, collectors: Sequence[Collector] = ()
    ) -> None:
        if multiprocess_mode():
            self._registry = CollectorRegistry()
            MultiProcessCollector(self._registry)  # type: ignore[no-untyped-call]
        else:
            assert metrics.registry is not None
            self._registry = metrics.registry
        self._registry.register(QueueCollector(client))
        self._registry.register(GpuCollector(nvml))
        for collector in collectors:
            self._registry.register(collector)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = "text/plain; version=0.0.4; charset=utf-8"
        resp.data = generate_latest(self._registry)
