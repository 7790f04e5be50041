"""The HTTP API: a Falcon app factory (`create_app`) and the thin `get_app()` gunicorn loads.

`POST /predict` decodes the upload here and hands a compact uint8 job to the dispatcher, or, on a box with
GPU shards (`api.decode_in`, `decodes_in_shard`), checks only its header and hands over the file for the shard
to decode; the dispatcher puts the job on a shard's queue and waits for the answer within the request's
deadline.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from functools import partial
from typing import Any, cast

import falcon
import numpy as np
import numpy.typing as npt
import redis

from daemon.dispatcher import Dispatch, Dispatcher
from daemon.errors import (
    BadRequest,
    InferdError,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)
from daemon.http.auth import bearer_matches
from daemon.http.deadline import arrival_deadline
from daemon.http.kserve import add_v2_routes, is_v2_path
from daemon.http.multipart import form_fields
from daemon.http.openapi import OpenApiResource
from daemon.http.readiness import ReadyResource
from daemon.http.request_body import check_declared_size
from daemon.http.status_page import add_status_page_routes, is_public, prefers_html, status_page
from daemon.images.decode import decode_image, inspect_upload
from daemon.logs import setup_logging
from daemon.metrics.inferd import ApiMetrics, MetricsMiddleware, MetricsResource
from daemon.metrics.limits import LimitsCollector
from daemon.metrics.triton import PendingRequestCollector, TritonMiddleware, TritonRequestMetrics
from daemon.model.active_model import ServedVersions, with_active_model
from daemon.ops.capacity import api_pool_size, shard_count_from_env
from daemon.queue.connection import connect
from daemon.queue.faces import ApiQueues
from daemon.queue.pixel_store import PixelStore
from daemon.queue.wire import Job, new_job_id
from daemon.settings import Settings, load_settings
from daemon.shard import SHARDS_ENV, decode_shards

log = logging.getLogger(__name__)

VERSION = "0.1.0"
UNAUTHENTICATED_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
"""Probes a supervisor or load balancer calls without credentials."""
RAW_IMAGE_TYPES = ("image/", "application/octet-stream")
MODEL_VERSION_HEADER = "X-Inferd-Model-Version"
UPLOAD_FIELDS = frozenset({"image", "top"})
"""The multipart fields /predict reads; any other is skipped."""


class IndexResource:
    """`GET /`: what this is, as JSON for API clients, or the status page for a browser (by `Accept`)."""

    def __init__(self, settings: Settings) -> None:
        self._page = status_page()
        self._body = {
            "name": "inferd",
            "version": VERSION,
            "what": "image classification: POST an image to /predict (multipart field 'image', or a raw image body)",
            "model": settings.model.path.name,
            "input_size": settings.model.input_size,
            "endpoints": {
                "POST /predict": f"classify an image; ?top=N for N predictions (default {settings.api.default_top})",
                "GET /healthz": "the API process is alive",
                "GET /readyz": "Redis is reachable, a worker is live and the box is not draining (and which shards failed, why)",
                "GET /shards": "every shard: device, status, queue, in flight, images/s, batch size, GPU figures",
                "GET /metrics": "Prometheus metrics",
                "GET /openapi.json": "OpenAPI 3.1 description of every endpoint",
                "GET /v2, POST /v2/models/{name}/infer, ...": "KServe V2 (Open Inference Protocol), as tritonclient speaks it",
            },
        }

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.vary = ("Accept",)  # one URL, two representations: a cache must key on Accept
        if prefers_html(req):
            self._page.serve(resp)
        else:
            resp.media = self._body


class HealthResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}

    # Load balancers (HAProxy's default check among them) probe with HEAD: same status, no body.
    on_head = on_get


class PredictResource:
    def __init__(
        self, settings: Settings, dispatcher: Dispatch, metrics: ApiMetrics, decode_in_shard: bool
    ) -> None:
        self._settings = settings
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._decode_in_shard = decode_in_shard

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        deadline = arrival_deadline(req, self._settings.api.request_timeout_s)
        data, form_top = self._read_image(req)
        top = self._top(req, form_top)
        job = Job(new_job_id(), deadline, time.monotonic(), top, *self._job_input(data, deadline))
        reply = self._dispatcher.dispatch(job)
        self._metrics.queue_wait_seconds.observe(reply.queue_ms / 1000.0)
        resp.set_header("X-Inferd-Shard", reply.shard)
        resp.set_header("X-Inferd-Batch-Size", str(reply.batch_size))
        resp.set_header("X-Inferd-Queue-Ms", f"{reply.queue_ms:.1f}")
        resp.set_header("X-Inferd-Infer-Ms", f"{reply.infer_ms:.1f}")
        resp.media = {
            "success": True,
            "predictions": [{"label": p.label, "probability": p.probability} for p in reply.predictions],
        }
        if reply.model_version is not None:
            # The version that computed this answer: during `inferd reload` shards differ for a while.
            req.context.model_version = reply.model_version
            resp.set_header(MODEL_VERSION_HEADER, str(reply.model_version))
            resp.media["model_version"] = reply.model_version

    def _job_input(
        self, data: bytes, deadline: float
    ) -> tuple[npt.NDArray[np.uint8], None, tuple[int, int] | None]:
        """The job's pixels, or the file itself (with the size its header gives) for the shard to decode."""
        max_pixels = self._settings.api.max_image_pixels
        if not self._decode_in_shard:
            return decode_image(data, self._settings.model, max_pixels, deadline), None, None
        # The header alone here (415, 413 and a broken header's 400 at once); the shard decodes the file
        # and answers a corrupt one with its 400.
        upload = inspect_upload(data, max_pixels)
        return np.frombuffer(data, dtype=np.uint8), None, (upload.width, upload.height)

    def _read_image(self, req: falcon.Request) -> tuple[bytes, str | None]:
        limit = self._settings.api.max_body_bytes
        check_declared_size(req, limit, "upload")
        content_type = (req.content_type or "").lower()
        if content_type.startswith("multipart/form-data"):
            return self._read_multipart(req, limit)
        if content_type.startswith(RAW_IMAGE_TYPES):
            return _read_bounded(req.bounded_stream, limit), None
        if not content_type and not req.content_length:
            raise BadRequest("the request has no body: send the image as multipart field 'image'")
        raise UnsupportedMediaType(
            f"content type {content_type or '(none)'!r} is not accepted: send multipart/form-data with an "
            "'image' field, or a raw image/* body"
        )

    def _read_multipart(self, req: falcon.Request, limit: int) -> tuple[bytes, str | None]:
        body = _read_bounded(req.bounded_stream, limit, "request body")
        fields = form_fields(body, req.content_type or "", UPLOAD_FIELDS)
        image = fields.get("image")
        if image is None:
            raise BadRequest("multipart field 'image' is missing")
        top = fields.get("top")
        return image, None if top is None else top.decode("utf-8", errors="replace")

    def _top(self, req: falcon.Request, form_top: str | None) -> int:
        raw = req.get_param("top") or form_top
        if raw is None:
            return self._settings.api.default_top
        max_top = self._settings.api.max_top
        try:
            top = int(raw)
        except ValueError:
            raise BadRequest(f"top={raw!r} is not an integer from 1 to {max_top}") from None
        if not 1 <= top <= max_top:
            raise BadRequest(f"top={top} is outside 1 to {max_top}")
        return top


def _read_bounded(stream: Any, limit: int, what: str = "image") -> bytes:
    data: bytes = stream.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"the {what} is larger than the {limit}-byte limit")
    return data


class BearerAuth:
    """Optional bearer-token check, compared in constant time; health probes and the status page's own files
    (not the data it reads) stay open."""

    def __init__(self, token: str) -> None:
        self._token = token

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.path in UNAUTHENTICATED_PATHS or is_public(req):
            return
        if not bearer_matches(req, self._token):
            raise Unauthorized("missing or wrong bearer token")


def _json_error(req: falcon.Request, resp: falcon.Response, status: int, message: str) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    # KServe V2 clients read the protocol's own error form.
    body = {"error": message} if is_v2_path(req.path) else {"success": False, "error": message}
    resp.text = json.dumps(body)


def handle_inferd_error(req: falcon.Request, resp: falcon.Response, exc: InferdError, params: Any) -> None:
    _json_error(req, resp, exc.status, exc.message)
    if exc.retry_after_s is not None:
        resp.set_header("Retry-After", str(max(1, round(exc.retry_after_s))))
    if exc.status == 401:
        resp.set_header("WWW-Authenticate", "Bearer")
    if exc.status >= 500:
        log.warning("api: %s %s -> %d %s", req.method, req.path, exc.status, exc.message)


def handle_http_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError, params: Any) -> None:
    message = exc.description or exc.title or "error"
    _json_error(req, resp, exc.status_code, message)
    resp.set_headers(exc.headers or {})


def handle_unexpected(req: falcon.Request, resp: falcon.Response, exc: Exception, params: Any) -> None:
    log.exception("api: unexpected error on %s %s", req.method, req.path)
    _json_error(req, resp, 500, f"internal error: {type(exc).__name__}")


def decodes_in_shard(settings: Settings, env: Mapping[str, str] | None = None) -> bool:
    """Whether /predict forwards files for the shards to decode (`api.decode_in`). "auto" picks the shards
    when the launcher's shards include a GPU: there the workers' host cores wait on their devices and nvJPEG
    can decode. On a CPU box the API decodes: the two placements measured level there (the figures are in
    daemon/images/shard_decode.py), and the API's processes decode side by side."""
    if settings.api.decode_in != "auto":
        return settings.api.decode_in == "shard"
    encoded = (os.environ if env is None else env).get(SHARDS_ENV)
    return bool(encoded) and any(shard.kind == "gpu" for shard in decode_shards(encoded or "[]"))


def create_app(
    settings: Settings, client: redis.Redis, dispatcher: Dispatch | None = None
) -> falcon.App[falcon.Request, falcon.Response]:
    """Build the WSGI app around an injected Redis client (for /metrics' queue figures) and dispatcher
    (by default the real one on that client; tests may pass a fake)."""
    if dispatcher is None:
        queues = ApiQueues(client, settings.queue, settings.batching)
        dispatcher = Dispatcher(
            queues,
            settings.api.request_timeout_s,
            PixelStore.for_settings(settings),
            decode_here=partial(decode_image, model=settings.model, max_pixels=settings.api.max_image_pixels),
            inline_file_limit=settings.model.input_size**2 * 3,
        )
    token = settings.secrets.auth_token
    metrics = ApiMetrics()
    # Metrics first: its clock starts before auth can refuse, so a 401 is timed and counted like any answer.
    versions = ServedVersions(settings)
    triton = TritonRequestMetrics(with_active_model(settings).model, metrics.registry)
    middleware: list[Any] = [
        MetricsMiddleware(metrics),
        TritonMiddleware(triton, lambda: versions.current().version),
    ]
    if token:
        middleware.append(BearerAuth(token))
    app = falcon.App(middleware=middleware)
    multipart = cast(
        falcon.media.MultipartFormHandler, app.req_options.media_handlers[falcon.MEDIA_MULTIPART]
    )
    multipart.parse_options.max_body_part_buffer_size = settings.api.max_body_bytes
    app.add_route("/", IndexResource(settings))
    app.add_route("/healthz", HealthResource())
    app.add_route("/readyz", ReadyResource(dispatcher, token))
    pending = PendingRequestCollector(client, settings.model, lambda: versions.current().version)
    app.add_route(
        "/metrics", MetricsResource(metrics, client, collectors=[pending, LimitsCollector(settings)])
    )
    app.add_route("/predict", PredictResource(settings, dispatcher, metrics, decodes_in_shard(settings)))
    add_v2_routes(app, settings, dispatcher, VERSION)
    add_status_page_routes(app, settings, client)
    app.add_route("/openapi.json", OpenApiResource(settings, VERSION, lambda: versions.current().version))
    # Most specific first in effect: Falcon picks the handler registered for the nearest class.
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(InferdError, handle_inferd_error)
    return app


def get_app() -> falcon.App[falcon.Request, falcon.Response]:
    """Entry point for gunicorn (`daemon.api:get_app()`): settings from INFERD_CONFIG or the default."""
    setup_logging()
    settings = load_settings()
    # One connection per thread: a smaller pool answers 503 "Too many connections" under a full load.
    pool = api_pool_size(settings, shard_count_from_env())
    client = connect(settings, socket_timeout_s=settings.api.request_timeout_s + 2.0, max_connections=pool)
    return create_app(settings, client)
