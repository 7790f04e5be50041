"""Triton Inference Server's metric names, beside inferd's own, so dashboards built for Triton read inferd.

| metric | labels | recorded by | meaning |
| --- | --- | --- | --- |
| `nv_inference_request_success` | model, version | API | inference requests answered 2xx (/predict, V2 infer) |
| `nv_inference_request_failure` | model, version | API | inference requests answered otherwise |
| `nv_inference_request_duration_us` | model, version | API | their end-to-end time, summed, in µs |
| `nv_inference_count` | model, version | worker | images computed (a request of N counts N) |
| `nv_inference_exec_count` | model, version | worker | model executions (batches): count / exec = mean batch |
| `nv_inference_queue_duration_us` | model, version | worker | time images waited in a queue, summed, in µs |
| `nv_inference_compute_infer_duration_us` | model, version | worker | time images spent in the model call, summed |
| `nv_inference_pending_request_count` | model, version | scrape (Redis) | images waiting in the queues now |
| `nv_gpu_utilization` | gpu_uuid | scrape (NVML) | 0.0 to 1.0 |
| `nv_gpu_memory_total_bytes`, `nv_gpu_memory_used_bytes` | gpu_uuid | scrape (NVML) | bytes |
| `nv_gpu_power_usage` | gpu_uuid | scrape (NVML) | watts |

As in Triton, each image is one request to the scheduler: its queue and compute times are its own, and an
image computed in a batch of 8 spends that batch's whole compute time (Triton counts a dynamic batch so).

Triton's cumulative figures are counters without the `_total` suffix; prometheus_client appends `_total` to
every Counter it exposes, so these are gauges that only ever increase, summed over processes dead and alive
(multiprocess mode `sum`). They are exposed as TYPE gauge; `rate()` and `increase()` read them as counters.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import falcon
import redis
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon.ops.nvml import GpuReading
from daemon.queue.registry import read_shards
from daemon.settings import ModelSettings

MODEL_LABELS = ("model", "version")
INFERENCE_PATH = re.compile(r"/predict|/v2/models/[^/]+(/versions/[^/]+)?/infer")
"""The paths whose requests are inference requests, in Triton's sense."""
MICROSECONDS = 1e6
GPU_METRIC_NAMES = (
    "nv_gpu_utilization",
    "nv_gpu_memory_total_bytes",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_power_usage",
)
"""Exported only where NVML sees a GPU."""


def _cumulative(name: str, documentation: str, registry: CollectorRegistry | None) -> Gauge:
    return Gauge(name, documentation, MODEL_LABELS, registry=registry, multiprocess_mode="sum")


def _model_labels(model: ModelSettings) -> tuple[str, str]:
    return model.served_name, str(model.version)


class TritonRequestMetrics:
    """What the API records per inference request, under the version that answered it."""

    def __init__(self, model: ModelSettings, registry: CollectorRegistry | None) -> None:
        self.model_name = model.served_name
        self.success = _cumulative("nv_inference_request_success", "Successful inference requests", registry)
        self.failure = _cumulative("nv_inference_request_failure", "Failed inference requests", registry)
        self.duration_us = _cumulative(
            "nv_inference_request_duration_us",
            "Cumulative inference request duration in microseconds",
            registry,
        )
        for family in (self.success, self.failure, self.duration_us):
            family.labels(*_model_labels(model))  # exported from the start, at 0, as Triton does


class TritonMiddleware:
    """Counts and times every inference request by outcome, under the model version that computed it (a
    resource leaves it in `req.context.model_version`), else the version served now (`current_version`)."""

    def __init__(self, metrics: TritonRequestMetrics, current_version: Callable[[], int]) -> None:
        self._metrics = metrics
        self._current_version = current_version

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.triton_started = time.monotonic()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        started = getattr(req.context, "triton_started", None)
        if started is None or not INFERENCE_PATH.fullmatch(req.path):
            return  # refused before our process_request ran (auth), or not an inference request
        version = getattr(req.context, "model_version", None)
        labels = (self._metrics.model_name, str(self._current_version() if version is None else version))
        outcome = self._metrics.success if 200 <= resp.status_code < 300 else self._metrics.failure
        outcome.labels(*labels).inc()
        self._metrics.duration_us.labels(*labels).inc((time.monotonic() - started) * MICROSECONDS)


class TritonBatchMetrics:
    """What a worker records per batch."""

    def __init__(self, model: ModelSettings, registry: CollectorRegistry | None = None) -> None:
        labels = _model_labels(model)
        self.inferences = _cumulative(
            "nv_inference_count", "Number of inferences performed", registry
        ).labels(*labels)
        self.executions = _cumulative(
            "nv_inference_exec_count", "Number of model executions performed", registry
        ).labels(*labels)
        self.queue_us = _cumulative(
            "nv_inference_queue_duration_us",
            "Cumulative inference queuing duration in microseconds",
            registry,
        ).labels(*labels)
        self.compute_us = _cumulative(
            "nv_inference_compute_infer_duration_us",
            "Cumulative compute inference duration in microseconds",
            registry,
        ).labels(*labels)

    def record_batch(self, images: int, infer_s: float, queue_s: float) -> None:
        """One model execution over `images` images that took `infer_s` and whose images waited `queue_s` in all."""
        self.inferences.inc(images)
        self.executions.inc()
        self.queue_us.inc(queue_s * MICROSECONDS)
        self.compute_us.inc(images * infer_s * MICROSECONDS)


class PendingRequestCollector(Collector):
    """Images waiting in the shards' queues, read from Redis at each scrape (nothing when Redis is down)."""

    def __init__(self, client: redis.Redis, model: ModelSettings, current_version: Callable[[], int]) -> None:
        self._client = client
        self._model_name = model.served_name
        self._current_version = current_version

    def collect(self) -> Iterator[Metric]:
        try:
            waiting = sum(state.queue_depth for state in read_shards(self._client))
        except redis.RedisError:
            return  # inferd_redis_up says so
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution",
            labels=list(MODEL_LABELS),
        )
        pending.add_metric([self._model_name, str(self._current_version())], waiting)
        yield pending


class TritonGpuFamilies:
    """Triton's per-GPU gauges, filled from one NVML reading (daemon.metrics.inferd.GpuCollector's)."""

    def __init__(self) -> None:
        self.utilization = GaugeMetricFamily(
            "nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", labels=["gpu_uuid"]
        )
        self.total = GaugeMetricFamily(
            "nv_gpu_memory_total_bytes", "GPU total memory, in bytes", labels=["gpu_uuid"]
        )
        self.used = GaugeMetricFamily(
            "nv_gpu_memory_used_bytes", "GPU used memory, in bytes", labels=["gpu_uuid"]
        )
        self.power = GaugeMetricFamily("nv_gpu_power_usage", "GPU power usage in watts", labels=["gpu_uuid"])

    def add(self, uuid: str, reading: GpuReading) -> None:
        """One GPU's figures; a figure the board does not report is left out."""
        for family, value in (
            (self.utilization, None if reading.utilization_pct is None else reading.utilization_pct / 100.0),
            (self.total, reading.memory_total_bytes),
            (self.used, reading.memory_used_bytes),
            (self.power, reading.power_w),
        ):
            if value is not None:
                family.add_metric([uuid], value)

    def families(self) -> tuple[Metric, ...]:
        return (self.utilization, self.total, self.used, self.power)
