"""A peer inferd is compared with: the same model and the same per-image work, served by LitServe.

LitServe as its documentation deploys a batching image classifier: its own API server processes (uvicorn,
as many as inference workers) parse the multipart upload and pass the form to the inference workers over
a queue; each worker decodes its requests, batches them (`max_batch_size`, `batch_timeout`), predicts and
encodes the answers. One inference worker per core. The work is inferd's, piece for piece:
`daemon.images.decode.decode_image` (decode, resize, crop), `daemon.model.classifier.Classifier` (the normalisation layers,
the batch buckets, `predict_on_batch`) and `daemon.model.classifier.top_k`, under the settings inferd would read
(INFERD_CONFIG plus INFERD_* overrides): the model, `api.port`, `batching.max_batch_size` and
`batching.max_wait_ms` as LitServe's batch timeout. Run as `python -m bench.litserve_peer`.
"""

# No `from __future__ import annotations`: LitServe reads decode_request's annotation as a live class.
import logging
import os
import sys
from pathlib import Path
from typing import Any, cast

import litserve
import numpy as np
import numpy.typing as npt
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from bench.peers import WORKER_PIDS_ENV, pin_threads
from daemon.images.decode import decode_image
from daemon.settings import Settings, load_settings

log = logging.getLogger(__name__)

TOP = 5
"""Predictions per answer: inferd's `api.default_top`."""
IMAGE_FIELD = "image"
WORKERS_ENV = "PEER_WORKERS"
"""Inference workers; the default is one per core."""


class ClassifierAPI(litserve.LitAPI):  # type: ignore[misc]
    """inferd's decode, model call and top-k, in LitServe's request/batch/response hooks."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            max_batch_size=settings.batching.max_batch_size,
            batch_timeout=settings.batching.max_wait_ms / 1000.0,
        )
        self.settings = settings

    def setup(self, device: str) -> None:
        # Imported here: the LitAPI is pickled into each spawned worker, and only there is Keras loaded.
        from daemon.model.classifier import Classifier

        self.classifier = Classifier(self.settings.model, self.settings.batching.max_batch_size)
        self.classifier.warm_up()
        pids_dir = os.environ.get(WORKER_PIDS_ENV)
        if pids_dir:
            Path(pids_dir, str(os.getpid())).touch()

    def decode_request(self, request: Request) -> npt.NDArray[np.uint8]:
        # Annotated Request, LitServe parses the multipart body in its API server and hands over the form.
        upload = cast(FormData, request)[IMAGE_FIELD]
        if not isinstance(upload, UploadFile):
            raise ValueError(f"multipart field {IMAGE_FIELD!r} is not a file")
        return decode_image(upload.file.read(), self.settings.model, self.settings.api.max_image_pixels)

    def batch(self, inputs: list[npt.NDArray[np.uint8]]) -> npt.NDArray[np.uint8]:
        return np.stack(inputs)

    def predict(self, batch: npt.NDArray[np.uint8]) -> list[list[dict[str, Any]]]:
        from daemon.model.classifier import top_k

        ranked = top_k(self.classifier.predict(batch), self.classifier.labels, TOP)
        return [[{"label": p.label, "probability": p.probability} for p in row] for row in ranked]

    def unbatch(self, output: list[list[dict[str, Any]]]) -> list[list[dict[str, Any]]]:
        return output

    def encode_response(self, output: list[dict[str, Any]]) -> dict[str, Any]:
        return {"success": True, "predictions": output}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = load_settings()
    workers = int(os.environ.get(WORKERS_ENV) or os.cpu_count() or 1)
    pin_threads(workers, settings)  # before Keras loads: the spawned workers inherit it
    log.info(
        "litserve peer: %d inference workers, max batch %d, batch timeout %g ms, on port %d",
        workers,
        settings.batching.max_batch_size,
        settings.batching.max_wait_ms,
        settings.api.port,
    )
    server = litserve.LitServer(
        ClassifierAPI(settings),
        accelerator="cpu",
        workers_per_device=workers,
        timeout=settings.api.request_timeout_s,
    )
    server.run(
        host=settings.api.host, port=settings.api.port, log_level="warning", generate_client_file=False
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
