"""The API tier's ceiling: a bare Falcon app that parses the upload, decodes and resizes it, and answers.

No queue, no Redis, no model: whatever `/predict` does beyond this is what the appliance adds. It decodes
with the same `daemon.images.decode.decode_image` and runs under the same gunicorn settings (workers, threads,
worker class) as inferd's API, so the two differ only in what happens after the pixels are ready.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import cast

import falcon

from daemon.images.decode import decode_image
from daemon.settings import Settings, load_settings
from testkit.harness import PYTHON, REPO, Service

log = logging.getLogger(__name__)

CONFIG = REPO / "conf" / "settings.toml"


class DecodeOnlyResource:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        image: bytes | None = None
        for part in req.get_media():
            if part.name == "image" and image is None:
                image = part.stream.read()
            else:
                part.stream.read()
        if image is None:
            raise falcon.HTTPBadRequest(description="multipart field 'image' is missing")
        pixels = decode_image(image, self._settings.model, self._settings.api.max_image_pixels)
        resp.media = {"success": True, "shape": list(pixels.shape), "mean": round(float(pixels.mean()), 3)}


class AnswerAtOnceResource:
    """The HTTP floor: the upload is read whole, as /predict reads it, and answered without any work."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        size = 0
        for part in req.get_media():
            size += len(part.stream.read())
        resp.media = {"success": True, "bytes": size}


def create_app(settings: Settings, decode: bool = True) -> falcon.App[falcon.Request, falcon.Response]:
    app = falcon.App()
    multipart = cast(
        falcon.media.MultipartFormHandler, app.req_options.media_handlers[falcon.MEDIA_MULTIPART]
    )
    multipart.parse_options.max_body_part_buffer_size = settings.api.max_body_bytes
    app.add_route("/predict", DecodeOnlyResource(settings) if decode else AnswerAtOnceResource())
    return app


def get_app() -> falcon.App[falcon.Request, falcon.Response]:
    """Entry point for gunicorn: settings from INFERD_CONFIG, as inferd's own API reads them."""
    return create_app(load_settings())


def get_http_floor_app() -> falcon.App[falcon.Request, falcon.Response]:
    """Entry point for gunicorn: the same app answering at once (bench/floors.py's HTTP floor)."""
    return create_app(load_settings(), decode=False)


def http_floor_service(env: dict[str, str], folder: Path, config: Path | None = None) -> Service:
    """`decode_only_service` serving the app that answers at once."""
    return decode_only_service(config or CONFIG, env, folder, "bench.decode_only:get_http_floor_app()")


def decode_only_service(
    config: Path, env: dict[str, str], folder: Path, app: str = "bench.decode_only:get_app()"
) -> Service:
    """gunicorn serving this app with inferd's own gunicorn settings (`config` plus INFERD_* in `env`), but
    on TCP at api.port with all of api.workers in one instance: the appliance splits its processes between
    two instances behind its front door, and the ceiling gets as many processes in all."""
    settings = load_settings(config, env={**os.environ, **env})
    argv = [
        PYTHON,
        "-m",
        "gunicorn",
        "--config",
        "python:daemon.http.gunicorn_conf",
        # Command-line options win over the config module's.
        "--bind",
        f"{settings.api.host}:{settings.api.port}",
        "--workers",
        str(settings.api.workers),
        app,
    ]
    return Service(
        app.split(":")[1][:-2], argv, folder / "decode-only.log", {**env, "INFERD_CONFIG": str(config)}
    )
