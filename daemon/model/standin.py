"""A stand-in model: the real worker, queues and API around a "device" that only spends time.

A GPU computes a batch of a 224x224 classifier in milliseconds, so on a GPU box the API tier and Redis set
the appliance's speed; on a CPU box the real model would hide them. Pointing `model.path` at a stand-in file
runs the whole appliance unchanged (same jobs, same 224x224 pixels, same batching) around a predictor that
sleeps a fixed time per batch plus a time per image, with the GIL released as a device call would. Used by
the benchmark (capacity of the front door against many fast shards) and by tests (a model that hangs).

A stand-in file is JSON:
    {"inferd_standin": 1, "batch_ms": 3.0, "per_image_ms": 0.05, "hang_after_batches": null}
`hang_after_batches: N` makes every batch after the N-th block forever, as a wedged device call would.
`slow_after_batches: N` with `slow_factor: F` makes every batch after the N-th take F times as long, as a
throttled GPU would. `only_shards: ["cpu0"]` confines both faults to those shards (all when absent). Batch
counts are per worker process: a restarted worker counts from 0 again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from daemon.errors import ModelLoadError
from daemon.model.classifier import load_labels
from daemon.settings import ModelSettings

log = logging.getLogger(__name__)

MARKER = "inferd_standin"


def is_standin(path: Path) -> bool:
    """Whether `path` is a stand-in file rather than a Keras model."""
    if path.suffix != ".json":
        return False
    try:
        return MARKER in json.loads(path.read_text())
    except (OSError, ValueError, TypeError):
        return False


class StandinModel:
    """Spends `batch_ms + per_image_ms * n` per batch asleep and scores class i of every image alike."""

    def __init__(self, settings: ModelSettings, shard: str | None = None) -> None:
        """`shard`: the shard this stand-in serves, for `only_shards`."""
        try:
            spec = json.loads(settings.path.read_text())
            self.batch_s = float(spec.get("batch_ms", 3.0)) / 1000.0
            self.per_image_s = float(spec.get("per_image_ms", 0.05)) / 1000.0
            only = spec.get("only_shards")
            faulty = only is None or shard in [str(name) for name in only]
            hang = spec.get("hang_after_batches") if faulty else None
            self.hang_after = None if hang is None else int(hang)
            slow = spec.get("slow_after_batches") if faulty else None
            self.slow_after = None if slow is None else int(slow)
            self.slow_factor = float(spec.get("slow_factor", 1.0))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise ModelLoadError(f"cannot read stand-in model {settings.path}: {exc}") from exc
        self.labels = load_labels(settings.labels)
        self.settings = settings
        self.batches = 0
        scores = np.linspace(1.0, 0.1, len(self.labels), dtype=np.float32)
        self._scores = scores / scores.sum()
        log.info(
            "model: stand-in %s: %.2f ms per batch + %.3f ms per image, %d classes",
            settings.path,
            self.batch_s * 1000,
            self.per_image_s * 1000,
            len(self.labels),
        )

    def predict(self, batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        self.batches += 1
        if self.hang_after is not None and self.batches > self.hang_after:
            log.warning("model: stand-in hangs on batch %d, as configured", self.batches)
            threading.Event().wait()  # blocks forever with the GIL released, like a wedged device call
        factor = self.slow_factor if self.slow_after is not None and self.batches > self.slow_after else 1.0
        time.sleep((self.batch_s + self.per_image_s * len(batch)) * factor)
        return np.tile(self._scores, (len(batch), 1))

    def warm_up(self, max_batch_size: int) -> None:
        """Nothing to compile, and warm-up batches do not count towards `hang_after_batches`."""
        time.sleep(self.batch_s)
