"""A second peer: the same model and per-image work served by BentoML, as its documentation builds a batchable
image classifier.

`bentoml serve bench.bentoml_peer:Classifier` runs `workers` processes (one per core), each with its own HTTP
server and its own adaptive batcher in front of the model: requests are corked up to `max_batch_size`, for as
long as BentoML's latency model predicts still meets `max_latency_ms` (it has no fixed wait). The upload
arrives as a file input (`Path`: BentoML spools each upload to a temporary file, its way of taking files);
the work after that is inferd's, as in bench/litserve_peer.py: `daemon.images.decode.decode_image`,
`daemon.model.classifier.Classifier` and `daemon.model.classifier.top_k`, under the settings inferd would read (INFERD_CONFIG plus
INFERD_* overrides). Run as `python -m bench.bentoml_peer`: `bentoml serve` on `api.host`:`api.port`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import bentoml
import numpy as np

from bench.peers import WORKER_PIDS_ENV, pin_threads
from daemon.images.decode import decode_image
from daemon.settings import Settings, load_settings

TOP = 5
"""Predictions per answer: inferd's `api.default_top`."""


def build_service(settings: Settings, workers: int) -> Any:
    """The BentoML service class for `settings`: BentoML reads batching and workers from decorators."""

    # Access logs off: a line per request is CPU the other systems do not spend.
    @bentoml.service(
        workers=workers,
        traffic={"timeout": settings.api.request_timeout_s},
        logging={"access": {"enabled": False}},
    )
    class Classifier:
        def __init__(self) -> None:
            from daemon.model.classifier import Classifier as Model

            pin_threads(workers, settings)
            self.model = Model(settings.model, settings.batching.max_batch_size)
            self.model.warm_up()
            pids_dir = os.environ.get(WORKER_PIDS_ENV)
            if pids_dir:
                Path(pids_dir, str(os.getpid())).touch()

        @bentoml.api(  # type: ignore[untyped-decorator,unused-ignore]
            batchable=True,
            max_batch_size=settings.batching.max_batch_size,
            max_latency_ms=round(settings.api.request_timeout_s * 1000),
        )
        def predict(self, image: list[Path]) -> list[dict[str, Any]]:
            from daemon.model.classifier import top_k

            model = settings.model
            batch = np.stack(
                [decode_image(path.read_bytes(), model, settings.api.max_image_pixels) for path in image]
            )
            ranked = top_k(self.model.predict(batch), self.model.labels, TOP)
            return [
                {
                    "success": True,
                    "predictions": [{"label": p.label, "probability": p.probability} for p in row],
                }
                for row in ranked
            ]

    return Classifier


# BentoML imports this module in every process and looks the service up by name, so it is built here.
_settings = load_settings()
Classifier = build_service(_settings, os.cpu_count() or 1)


def main() -> int:
    from bentoml_cli.cli import cli

    host, port = _settings.api.host, str(_settings.api.port)
    cli.main(["serve", f"{__spec__.name}:Classifier", "--host", host, "--port", port], "bentoml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
