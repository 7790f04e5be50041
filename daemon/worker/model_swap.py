"""A shard's half of `inferd reload`: load the new model beside the old, check it, switch between two batches.

The worker keeps serving with its model while a thread loads the new one, warms every batch size and checks
its answers on sample inputs (`load_checked`). Only then, between two batches, does the worker take it up
(`Worker.take_up`), so the batch in hand finishes on the old model and no claimed job is lost or answered
twice; a model that fails any check is refused and the old one serves on. A worker killed at any point of
this restarts on the model the run dir's record names (daemon.model.active_model), its claims requeued as ever.

`python -m daemon.worker.model_swap --model M --labels L` runs the same checks in a process of its own on the CPU:
`inferd reload` does so before it touches any shard.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daemon.errors import (
    EXIT_CONFIG,
    EXIT_MODEL_LOAD,
    EXIT_OK,
    ConfigError,
    ModelLoadError,
    UsageArgumentParser,
)
from daemon.logs import setup_logging
from daemon.model.active_model import applied, choice_of, with_active_model
from daemon.model.classifier import batch_buckets
from daemon.queue.faces import ShardQueues
from daemon.queue.wire import ModelChoice, SwapResult
from daemon.settings import ModelSettings, Settings, load_settings
from daemon.shard import cpu_shards, pin_process
from daemon.worker.inference import Predictor

log = logging.getLogger(__name__)

SWAP_POLL_S = 0.5
"""How often a worker looks for a swap request between batches."""
SAMPLE_SEED = 14
"""Seed of the random sample images every batch size is checked on."""
PROBABILITY_SUM_TOLERANCE = 1e-3


def check_answers(predictor: Predictor, input_size: int, sizes: tuple[int, ...]) -> None:
    """Random images in every batch size get one finite probability row per image over every label."""
    rng = np.random.default_rng(SAMPLE_SEED)
    classes = len(predictor.labels)
    for size in sizes:
        batch = rng.integers(0, 256, (size, input_size, input_size, 3), dtype=np.uint8)
        rows = np.asarray(predictor.predict(batch))
        if rows.shape != (size, classes):
            raise ModelLoadError(
                f"a batch of {size} gave outputs of shape {rows.shape}, not ({size}, {classes})"
            )
        if not np.isfinite(rows).all():
            raise ModelLoadError(f"a batch of {size} gave outputs that are not finite (NaN or infinity)")
        if not np.allclose(rows.sum(axis=1), 1.0, atol=PROBABILITY_SUM_TOLERANCE):
            raise ModelLoadError(f"a batch of {size} gave probabilities that do not sum to 1")


def load_checked(model: ModelSettings, max_batch_size: int) -> Predictor:
    """Load `model`, warm and check every batch size; raises ModelLoadError saying what is wrong."""
    # Imported here: a stand-in or a Keras model, and Keras must load after the process is pinned.
    from daemon.model.classifier import Classifier
    from daemon.model.standin import StandinModel, is_standin

    predictor: Predictor = (
        StandinModel(model) if is_standin(model.path) else Classifier(model, max_batch_size)
    )
    try:
        check_answers(predictor, model.input_size, batch_buckets(max_batch_size))
    except ModelLoadError:
        raise
    except Exception as exc:  # the model call raises what its runtime raises
        raise ModelLoadError(f"the model failed a sample batch: {type(exc).__name__}: {exc}") from exc
    return predictor


@dataclass(frozen=True, slots=True)
class Loaded:
    """A model loaded and checked, waiting for the worker to take it up between two batches."""

    asked: bytes
    choice: ModelChoice
    predictor: Predictor
    load_s: float


class Swapper:
    """Watches one shard's swap request and loads what it names in a thread; the worker polls it between
    batches and takes up what it hands back."""

    def __init__(self, queues: ShardQueues, settings: Settings, prefix: str) -> None:
        self._queues = queues
        self._settings = settings
        self._prefix = prefix
        self._last_look = float("-inf")
        self._thread: threading.Thread | None = None
        self._outcome: Loaded | SwapResult | None = None

    def poll(self, serving: int) -> Loaded | None:
        """A loaded model to take up now, if one is ready; starts a load when a request for another version
        than `serving` appears. A refusal is answered here and the old model serves on."""
        if self._thread is not None:
            if self._thread.is_alive():
                return None
            self._thread = None
            outcome, self._outcome = self._outcome, None
            return outcome if isinstance(outcome, Loaded) else None
        if time.monotonic() - self._last_look < SWAP_POLL_S:
            return None
        self._last_look = time.monotonic()
        request = self._queues.swap_request()
        if request is None:
            return None
        asked, choice = request
        recorded = choice_of(with_active_model(self._settings).model)
        if choice != recorded:
            # Anyone who can write to Redis can post a request; only `inferd reload`, which alone writes the
            # 0700 run dir's record before it asks, names the model the record names.
            reason = (
                f"the request names {choice.path} (version {choice.version}), not the model the run dir's "
                f"record names ({recorded.path}, version {recorded.version}); only `inferd reload` asks for swaps"
            )
            log.error("%s refused a swap request: %s", self._prefix, reason)
            self._queues.answer_swap(asked, SwapResult(choice.version, False, reason))
            return None
        if choice.version == serving:
            self._queues.answer_swap(asked, SwapResult(choice.version, True, "already serving it"))
            return None
        log.info(
            "%s loading %s (version %d) beside the model in use", self._prefix, choice.path, choice.version
        )
        self._thread = threading.Thread(
            target=self._load, args=(asked, choice), name="model-swap", daemon=True
        )
        self._thread.start()
        return None

    def _load(self, asked: bytes, choice: ModelChoice) -> None:
        started = time.monotonic()
        try:
            model = applied(choice, self._settings.model)
            predictor = load_checked(model, self._settings.batching.max_batch_size)
        except Exception as exc:  # whatever stops the load (Keras raises many types) is a refusal
            reason = exc.message if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
            log.error(
                "%s refused version %d, keeping the model in use: %s", self._prefix, choice.version, reason
            )
            result = SwapResult(choice.version, False, reason)
            self._outcome = result
            try:
                self._queues.answer_swap(asked, result)
            except Exception as report_exc:  # Redis gone: the tool times out and says so
                log.warning("%s could not report the refusal: %s", self._prefix, report_exc)
            return
        self._outcome = Loaded(asked, choice, predictor, time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = UsageArgumentParser(description="check a model as a shard would before swapping to it")
    parser.add_argument("--config", help="settings file (default: INFERD_CONFIG or conf/settings.toml)")
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--labels", required=True, type=Path)
    args = parser.parse_args(argv)
    setup_logging()
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(json.dumps({"ok": False, "reason": f"configuration error: {exc.message}"}))
        return EXIT_CONFIG
    # On the CPU, so the check takes no device memory from the shards that serve.
    pin_process(cpu_shards(1)[0], settings, 1)
    model = applied(ModelChoice(args.model, args.labels, settings.model.version), settings.model)
    started = time.monotonic()
    try:
        predictor = load_checked(model, settings.batching.max_batch_size)
    except ModelLoadError as exc:
        print(json.dumps({"ok": False, "reason": exc.message}))
        return EXIT_MODEL_LOAD
    sizes = batch_buckets(settings.batching.max_batch_size)
    print(
        json.dumps(
            {
                "ok": True,
                "classes": len(predictor.labels),
                "input_size": settings.model.input_size,
                "batch_sizes": list(sizes),
                "seconds": round(time.monotonic() - started, 2),
            }
        )
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
