"""The browser status page: `GET /` for a client that prefers HTML, its script and style, and `GET /shards`.

The page is three static files shipped in the package (daemon/http/static/): no build step and no outside URL,
since the appliance is offline. Its data come from the JSON endpoints (`/shards`, `/predict`, `/`), which
keep their bearer token; the page and its two files carry no data, so they are served without one, and the
page asks for the token when an endpoint answers 401. Every file is sent with a Content-Security-Policy
that lets it load only this origin's script and style: no inline script, nothing from elsewhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import falcon
import redis

from daemon.errors import RedisUnavailable
from daemon.ops.nvml import Nvml
from daemon.ops.shard_status import collect, shards_json
from daemon.settings import Settings

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
HTML = "text/html; charset=utf-8"
ASSETS = {
    "/static/status.js": ("status.js", "text/javascript; charset=utf-8"),
    "/static/status.css": ("status.css", "text/css; charset=utf-8"),
}
"""URL -> (file in STATIC_DIR, content type) of what the page loads besides itself."""
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' blob: data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Only this origin's script, style and requests; `blob:` for the preview of a chosen photo, `data:` for the
empty favicon (without it the browser asks for /favicon.ico and logs the 404)."""
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # A new release's page must not be mixed with the old script from a cache.
    "Cache-Control": "no-cache",
}


def prefers_html(req: falcon.Request) -> bool:
    """Whether the client asked for HTML over JSON (a browser does); `*/*`, none or a tie is JSON."""
    return req.client_prefers([falcon.MEDIA_JSON, falcon.MEDIA_HTML]) == falcon.MEDIA_HTML


def is_public(req: falcon.Request) -> bool:
    """The page itself and its files, which hold no data and must load before the page can ask for a token."""
    if req.method not in ("GET", "HEAD"):
        return False
    return req.path in ASSETS or (req.path == "/" and prefers_html(req))


class StaticFile:
    """One file of STATIC_DIR, read once when the app is built (a missing file fails the start, not a request)."""

    def __init__(self, name: str, content_type: str) -> None:
        self._body = (STATIC_DIR / name).read_bytes()
        self._content_type = content_type

    def serve(self, resp: falcon.Response) -> None:
        resp.content_type = self._content_type
        resp.set_headers(PAGE_HEADERS)
        resp.data = self._body

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.serve(resp)

    on_head = on_get


def status_page() -> StaticFile:
    return StaticFile("status.html", HTML)


class ShardsResource:
    """`GET /shards`: every shard as daemon.ops.shard_status sees it (GPU figures from NVML)."""

    def __init__(self, settings: Settings, client: redis.Redis, nvml: Any = None) -> None:
        self._settings = settings
        self._client = client
        self._module = nvml
        self._session: Nvml | None = None  # opened at the first request: most API processes never get one

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self._session is None:
            self._session = Nvml.open(self._module)
        try:
            statuses = collect(self._client, self._settings, self._session)
        except redis.RedisError as exc:
            log.warning("api: /shards: Redis unreachable: %s", exc)
            raise RedisUnavailable("the queue service is unavailable; retry shortly") from None
        resp.media = shards_json(statuses, self._session.available)


def add_status_page_routes(app: falcon.App[Any, Any], settings: Settings, client: redis.Redis) -> None:
    """The page's files and the `/shards` JSON it reads (`/` itself is the index resource's, by Accept)."""
    for url, (name, content_type) in ASSETS.items():
        app.add_route(url, StaticFile(name, content_type))
    app.add_route("/shards", ShardsResource(settings, client))
