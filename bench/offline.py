"""(a) The model's offline throughput: `Classifier.predict` on uint8 batches, no HTTP, no Redis, no queue.

Run as its own process (`python -m bench.offline`) pinned the way a worker pins itself, so the ML runtime's
threads and memory are those a worker would have and the driver stays light.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from daemon.errors import UsageArgumentParser
from daemon.logs import setup_logging
from daemon.settings import load_settings
from daemon.shard import discover_shards, pin_process

log = logging.getLogger(__name__)

RESULT_PREFIX = "offline-json "
WARMUP_CALLS = 2
"""Calls per batch size before timing: the first traces the graph for that shape."""
MIN_CALLS_PER_ROUND = 2
"""Calls per batch size and round however long they take, so large batches are timed more than once."""


@dataclass(frozen=True, slots=True)
class OfflinePoint:
    batch_size: int
    images_per_s: float
    batch_p50_ms: float
    calls: int
    cpu_ms_per_image: float = 0.0
    """CPU of the whole process (the runtime's threads too) per image, over every timed call."""


def pin_like_a_worker(config: str | None) -> str:
    """Pin this process as a worker of this config would pin itself; returns the device's name."""
    settings = load_settings(config)
    shards = discover_shards(settings)
    threads = pin_process(shards[0], settings, len(shards))
    return f"{shards[0].name} ({shards[0].shard_id}, {threads} threads)"


def measure(
    config: str | None, image: bytes, batch_sizes: list[int], seconds: float, rounds: int
) -> tuple[str, list[OfflinePoint]]:
    """images/s per batch size: the best of `rounds` timed windows, the batch sizes taking turns."""
    device = pin_like_a_worker(config)
    from daemon.images.decode import decode_image
    from daemon.model.classifier import Classifier

    settings = load_settings(config)
    classifier = Classifier(settings.model, settings.batching.max_batch_size)  # as a worker has it
    pixels = decode_image(image, settings.model, settings.api.max_image_pixels)
    batches = {size: np.repeat(pixels[np.newaxis], size, axis=0) for size in batch_sizes}
    for batch in batches.values():
        for _ in range(WARMUP_CALLS):
            classifier.predict(batch)
    # Rounds over all sizes rather than one long window per size: a burst of other work on a shared
    # machine then spoils one round of a size, not its only measurement.
    best_rate = dict.fromkeys(batch_sizes, 0.0)
    durations: dict[int, list[float]] = {size: [] for size in batch_sizes}
    cpu_s = dict.fromkeys(batch_sizes, 0.0)
    for _ in range(rounds):
        for size, batch in batches.items():
            window: list[float] = []
            cpu_started, started = time.process_time(), time.monotonic()
            while time.monotonic() - started < seconds / rounds or len(window) < MIN_CALLS_PER_ROUND:
                call_started = time.monotonic()
                classifier.predict(batch)
                window.append(time.monotonic() - call_started)
            cpu_s[size] += time.process_time() - cpu_started
            best_rate[size] = max(best_rate[size], size * len(window) / sum(window))
            durations[size] += window
    points = []
    for size in batch_sizes:
        point = OfflinePoint(
            batch_size=size,
            images_per_s=best_rate[size],
            batch_p50_ms=statistics.median(durations[size]) * 1000.0,
            calls=len(durations[size]),
            cpu_ms_per_image=1000.0 * cpu_s[size] / (size * len(durations[size])),
        )
        log.info(
            "offline: batch %3d: %7.1f images/s (p50 %.1f ms per call)",
            size,
            point.images_per_s,
            point.batch_p50_ms,
        )
        points.append(point)
    return device, points


def main(argv: list[str] | None = None) -> int:
    parser = UsageArgumentParser(description="offline throughput of the configured model")
    parser.add_argument("--config", help="settings file (model, devices)")
    parser.add_argument("--image", required=True, help="a photo to classify (decoded as the API would)")
    parser.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per batch size")
    parser.add_argument("--rounds", type=int, default=3, help="windows per batch size; the best one counts")
    args = parser.parse_args(argv)
    setup_logging()
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    with open(args.image, "rb") as handle:
        image = handle.read()
    device, points = measure(args.config, image, sizes, args.seconds, args.rounds)
    print(RESULT_PREFIX + json.dumps({"device": device, "points": [asdict(p) for p in points]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
