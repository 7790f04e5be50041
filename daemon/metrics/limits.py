"""The configured limits as gauges, so alert rules compare against the running settings, not copies of them.

`inferd_queue_max_depth` (`queue.max_depth`, per shard) and `inferd_request_timeout_seconds`
(`api.request_timeout_s`): conf/prometheus/inferd-alerts.yml divides queue depth and p99 latency by them.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon.settings import Settings


class LimitsCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        self._max_depth = settings.queue.max_depth
        self._timeout_s = settings.api.request_timeout_s

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "inferd_queue_max_depth", "Jobs a shard's queue may hold (queue.max_depth)", value=self._max_depth
        )
        yield GaugeMetricFamily(
            "inferd_request_timeout_seconds",
            "Deadline of a request (api.request_timeout_s)",
            value=self._timeout_s,
        )
