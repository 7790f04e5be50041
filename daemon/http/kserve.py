"""The Open Inference Protocol (KServe V2) over HTTP, so tritonclient and other V2 clients work unchanged.

Routes (`add_v2_routes`): `GET /v2` (server metadata), `GET /v2/health/live`, `GET /v2/health/ready`,
`GET /v2/models/{name}` (inputs, outputs, datatypes, shapes), `GET /v2/models/{name}/ready` and
`POST /v2/models/{name}/infer`, each model route also under `/v2/models/{name}/versions/{version}/...`.

The appliance serves one model (`model.served_name`, `model.version`). It takes either input:
- `image`: BYTES [N] or [N, 1], encoded image files, decoded and resized exactly as /predict does them;
- `pixels`: UINT8 [N, S, S, 3], already at the model's input size.
Its output `probabilities` is FP32 [N, classes]; asked with `"parameters": {"classification": k}` it is
Triton's classification extension instead, BYTES [N, k] of "score:index:label". Each of the N images is its
own job, all submitted before any answer is awaited (`Dispatch.dispatch_many`), so they spread over the shards
and come back in order. Errors are the protocol's `{"error": "..."}` with the statuses /predict uses.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import falcon
import numpy as np
import numpy.typing as npt

from daemon.dispatcher import Dispatch
from daemon.errors import BadRequest, InferenceFailed, PayloadTooLarge, UnsupportedMediaType
from daemon.http.deadline import arrival_deadline
from daemon.http.readiness import readiness
from daemon.http.request_body import check_declared_size
from daemon.http.v2_tensors import (
    HEADER_LENGTH,
    InferRequest,
    InputTensor,
    OutputTensor,
    RequestedOutput,
    classification_strings,
    encode_infer_response,
    parse_infer_request,
)
from daemon.images.batch import DecodePool, check_request_pixels
from daemon.images.decode import decode_image
from daemon.model.active_model import ServedVersions
from daemon.model.classifier import load_labels
from daemon.queue.wire import ALL_CLASSES, Job, new_job_id
from daemon.settings import Settings

EXTENSIONS = ("binary_tensor_data", "classification")
"""Triton's protocol extensions /v2 announces, and supports."""
OUTPUT_NAME = "probabilities"
MAX_IMAGES_PER_REQUEST = 1024
"""More images than one request may carry: beyond it 413 (the queues would refuse most of them anyway)."""
DECODED_ENCODINGS = ("gzip", "deflate")
"""Request compressions tritonclient offers (`request_compression_algorithm`)."""


def is_v2_path(path: str) -> bool:
    """Errors on these paths take the protocol's `{"error": ...}` form."""
    return path == "/v2" or path.startswith("/v2/")


class ServedModel:
    """What V2 metadata says about the one model: its version and labels follow `inferd reload`
    (daemon.model.active_model); each labels file is read once, on first use."""

    def __init__(self, settings: Settings) -> None:
        self.name = settings.model.served_name
        self.input_size = settings.model.input_size
        self._versions = ServedVersions(settings)
        self._labels: dict[Path, list[str]] = {}
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        return str(self._versions.current().version)

    @property
    def labels(self) -> list[str]:
        return self.labels_of(self._versions.current().version)

    def labels_of(self, version: int) -> list[str]:
        """The labels of `version`: the current one, or the one a swap under way replaces."""
        choice = self._versions.find(version)
        if choice is None:
            raise InferenceFailed(f"a worker answered with model version {version}, which is no longer known")
        with self._lock:
            if choice.labels not in self._labels:
                self._labels[choice.labels] = load_labels(choice.labels)
            return self._labels[choice.labels]

    def check(self, model_name: str, model_version: str | None) -> None:
        """404 unless the route names this model (and, if any, a version it serves)."""
        if model_name != self.name:
            raise falcon.HTTPNotFound(
                description=f"unknown model {model_name!r}; this appliance serves {self.name!r}"
            )
        known = [str(choice.version) for choice in self._versions.known()]
        if model_version is not None and model_version not in known:
            raise falcon.HTTPNotFound(
                description=f"model {self.name!r} has no version {model_version!r}; it serves version {known[0]}"
            )

    def metadata(self) -> dict[str, Any]:
        size = self.input_size
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "keras",
            "inputs": [
                {"name": "image", "datatype": "BYTES", "shape": [-1]},
                {"name": "pixels", "datatype": "UINT8", "shape": [-1, size, size, 3]},
            ],
            "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, len(self.labels)]}],
        }


class ServerMetadataResource:
    def __init__(self, version: str) -> None:
        self._body = {"name": "inferd", "version": version, "extensions": list(EXTENSIONS)}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self._body


class ServerLiveResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"live": True}


class ServerReadyResource:
    """Ready by /readyz's rule (daemon.http.readiness): a drained box is not ready here either."""

    def __init__(self, dispatcher: Dispatch) -> None:
        self._dispatcher = dispatcher

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        found = readiness(self._dispatcher, req.path)
        resp.status = found.http_status
        resp.media = {"ready": found.ready}


class ModelMetadataResource:
    def __init__(self, model: ServedModel) -> None:
        self._model = model

    def on_get(
        self, req: falcon.Request, resp: falcon.Response, model_name: str, model_version: str | None = None
    ) -> None:
        self._model.check(model_name, model_version)
        resp.media = self._model.metadata()


class ModelReadyResource:
    def __init__(self, model: ServedModel, dispatcher: Dispatch) -> None:
        self._model = model
        self._dispatcher = dispatcher

    def on_get(
        self, req: falcon.Request, resp: falcon.Response, model_name: str, model_version: str | None = None
    ) -> None:
        self._model.check(model_name, model_version)
        found = readiness(self._dispatcher, req.path)
        resp.status = found.http_status
        resp.media = {"name": self._model.name, "ready": found.ready}


class ModelInferResource:
    def __init__(
        self, settings: Settings, model: ServedModel, dispatcher: Dispatch, decode_pool: DecodePool
    ) -> None:
        self._settings = settings
        self._model = model
        self._dispatcher = dispatcher
        self._decode_pool = decode_pool

    def on_post(
        self, req: falcon.Request, resp: falcon.Response, model_name: str, model_version: str | None = None
    ) -> None:
        deadline = arrival_deadline(req, self._settings.api.request_timeout_s)
        self._model.check(model_name, model_version)
        request = parse_infer_request(
            read_body(req, self._settings.api.max_body_bytes), req.get_header(HEADER_LENGTH)
        )
        images = self._images(request, deadline)
        requested = self._requested_outputs(request)
        jobs = [
            Job(
                job_id=new_job_id(),
                deadline=deadline,
                enqueued_at=time.monotonic(),
                top_k=ALL_CLASSES,
                pixels=p,
            )
            for p in images
        ]
        replies = self._dispatcher.dispatch_many(jobs)
        while len({r.model_version for r in replies}) > 1 and time.monotonic() < deadline:
            # `inferd reload` is under way and the images met both models: one answer must come from one
            # model, so ask again (the swap of a shard takes seconds; the deadline bounds the retries).
            jobs = [replace(job, job_id=new_job_id()) for job in jobs]
            replies = self._dispatcher.dispatch_many(jobs)
        version = replies[0].model_version
        labels = self._model.labels if version is None else self._model.labels_of(version)
        classes = len(labels)
        if any(r.probabilities is None or r.probabilities.shape != (classes,) for r in replies):
            raise InferenceFailed(f"a worker answered without the {classes}-class probability vector")
        probabilities = np.stack([r.probabilities for r in replies if r.probabilities is not None])
        outputs = [self._output(probabilities, labels, output, request.binary_output) for output in requested]
        served = self._model.version if version is None else str(version)
        req.context.model_version = served
        body, json_size = encode_infer_response(self._model.name, served, request.id, outputs)
        if json_size is None:
            resp.content_type = falcon.MEDIA_JSON
        else:
            resp.content_type = "application/octet-stream"
            resp.set_header(HEADER_LENGTH, str(json_size))
        resp.data = body

    def _images(self, request: InferRequest, deadline: float) -> list[npt.NDArray[np.uint8]]:
        """The model inputs of every image in the request, decoded (or taken as sent) and checked."""
        if len(request.inputs) != 1:
            raise BadRequest("send exactly one input: 'image' (BYTES, encoded files) or 'pixels' (UINT8)")
        (tensor,) = request.inputs
        count = tensor.shape[0]
        if count < 1:
            raise BadRequest(f"input {tensor.name!r} holds no image (shape {list(tensor.shape)})")
        if count > MAX_IMAGES_PER_REQUEST:
            raise PayloadTooLarge(f"{count} images in one request; the limit is {MAX_IMAGES_PER_REQUEST}")
        if tensor.name == "image":
            return self._decoded(tensor, deadline)
        if tensor.name == "pixels":
            return self._pixels(tensor)
        raise BadRequest(f"unknown input {tensor.name!r}: this model takes 'image' or 'pixels'")

    def _decoded(self, tensor: InputTensor, deadline: float) -> list[npt.NDArray[np.uint8]]:
        if tensor.datatype != "BYTES" or tensor.shape not in ((tensor.shape[0],), (tensor.shape[0], 1)):
            raise BadRequest(
                f"input 'image' must be BYTES of shape [N] or [N, 1], not {tensor.datatype} {list(tensor.shape)}"
            )
        assert isinstance(tensor.data, list)
        api, model = self._settings.api, self._settings.model
        # From the headers, before any pixel: a few kilobytes of PNG can declare gigapixels.
        check_request_pixels(tensor.data, api.max_image_pixels, api.max_request_pixels)
        return self._decode_pool.decode_all(
            tensor.data, lambda data: decode_image(data, model, api.max_image_pixels, deadline), deadline
        )

    def _pixels(self, tensor: InputTensor) -> list[npt.NDArray[np.uint8]]:
        size = self._model.input_size
        if tensor.datatype != "UINT8" or tensor.shape[1:] != (size, size, 3):
            raise BadRequest(
                f"input 'pixels' must be UINT8 of shape [N, {size}, {size}, 3], not {tensor.datatype} {list(tensor.shape)}"
            )
        assert isinstance(tensor.data, np.ndarray)
        return list(tensor.data)

    def _requested_outputs(self, request: InferRequest) -> list[RequestedOutput]:
        if request.outputs is None:
            return [RequestedOutput(OUTPUT_NAME, None, 0)]
        for output in request.outputs:
            if output.name != OUTPUT_NAME:
                raise BadRequest(f"unknown output {output.name!r}: this model gives {OUTPUT_NAME!r}")
        return request.outputs

    def _output(
        self,
        probabilities: npt.NDArray[np.float32],
        labels: list[str],
        requested: RequestedOutput,
        binary_default: bool,
    ) -> OutputTensor:
        binary = binary_default if requested.binary is None else requested.binary
        if not requested.classification:
            return OutputTensor(OUTPUT_NAME, "FP32", probabilities.shape, probabilities, binary)
        rows = classification_strings(probabilities, labels, requested.classification)
        flat = [element for row in rows for element in row]
        return OutputTensor(OUTPUT_NAME, "BYTES", (len(rows), len(rows[0])), flat, binary)


def read_body(req: falcon.Request, limit: int) -> bytes:
    """The request body, at most `limit` bytes once decompressed: 413 beyond, 411 when chunked."""
    check_declared_size(req, limit, "request")
    data: bytes = req.bounded_stream.read(limit + 1)
    encoding = (req.get_header("Content-Encoding") or "identity").strip().lower()
    if encoding in DECODED_ENCODINGS:
        # 15 + 32: zlib or gzip framing, told apart by the header. Bounded: a small bomb stops at the limit.
        inflater = zlib.decompressobj(15 + 32)
        try:
            data = inflater.decompress(data, limit + 1)
        except zlib.error as exc:
            raise BadRequest(f"the {encoding} body does not decompress: {exc}") from None
    elif encoding != "identity":
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not accepted (gzip, deflate or none)")
    if len(data) > limit:
        raise PayloadTooLarge(f"the request body is larger than the {limit}-byte limit")
    return data


def add_v2_routes(
    app: falcon.App[falcon.Request, falcon.Response], settings: Settings, dispatcher: Dispatch, version: str
) -> None:
    """Mount every V2 route on `app`."""
    model = ServedModel(settings)
    app.add_route("/v2", ServerMetadataResource(version))
    app.add_route("/v2/health/live", ServerLiveResource())
    app.add_route("/v2/health/ready", ServerReadyResource(dispatcher))
    per_model: Sequence[tuple[str, object]] = (
        ("", ModelMetadataResource(model)),
        ("/ready", ModelReadyResource(model, dispatcher)),
        ("/infer", ModelInferResource(settings, model, dispatcher, DecodePool())),
    )
    for suffix, resource in per_model:
        app.add_route(f"/v2/models/{{model_name}}{suffix}", resource)
        app.add_route(f"/v2/models/{{model_name}}/versions/{{model_version}}{suffix}", resource)
