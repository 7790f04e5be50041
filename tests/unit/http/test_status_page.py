"""The status page's negotiation and headers: `GET /` is JSON for API clients and the page for a browser."""

from __future__ import annotations

import re

import falcon.testing
import pytest
import redis

from daemon.api import create_app
from daemon.http.status_page import ASSETS, CONTENT_SECURITY_POLICY, STATIC_DIR
from daemon.settings import Settings

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
"""What Chromium sends when it navigates to a page."""


@pytest.fixture()
def client() -> falcon.testing.TestClient:
    # The page and its files need no Redis: a client that connects nowhere proves it.
    nowhere = redis.Redis(unix_socket_path="/nonexistent/redis.sock")
    return falcon.testing.TestClient(create_app(Settings(), nowhere))


@pytest.mark.parametrize(
    "accept", [None, "*/*", "application/json", "application/json, text/html", "image/png"]
)
def test_api_clients_keep_the_json_index(client, accept):
    headers = {"Accept": accept} if accept else {}
    result = client.simulate_get("/", headers=headers)
    assert result.status_code == 200
    assert result.json["name"] == "inferd" and "GET /shards" in result.json["endpoints"]
    assert result.headers["Vary"] == "Accept"


@pytest.mark.parametrize("accept", [BROWSER_ACCEPT, "text/html", "application/json;q=0.5, text/html"])
def test_a_client_that_prefers_html_gets_the_page_under_a_strict_policy(client, accept):
    result = client.simulate_get("/", headers={"Accept": accept})
    assert result.status_code == 200
    assert result.headers["Content-Type"] == "text/html; charset=utf-8"
    assert result.headers["Vary"] == "Accept"
    assert result.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self';" in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
    assert result.text == (STATIC_DIR / "status.html").read_text()


def test_the_page_loads_only_files_this_appliance_serves(client):
    page = (STATIC_DIR / "status.html").read_text()
    # No inline script or style (the policy would block it) and nothing from another origin.
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/static/status.js" defer>']
    assert "<style" not in page and " style=" not in page
    loaded = set(re.findall(r'(?:src|href)="([^"]+)"', page))
    assert loaded == {"data:,", *ASSETS}
    for text in [page, *((STATIC_DIR / name).read_text() for name, _ in ASSETS.values())]:
        assert "http://" not in text and "https://" not in text
    for path, (name, content_type) in ASSETS.items():
        result = client.simulate_get(path)
        assert result.status_code == 200, path
        assert result.headers["Content-Type"] == content_type
        assert result.headers["X-Content-Type-Options"] == "nosniff"
        assert result.content == (STATIC_DIR / name).read_bytes()


def test_the_shards_endpoint_says_503_when_redis_is_unreachable(client):
    result = client.simulate_get("/shards")
    assert result.status_code == 503
    assert result.json == {"success": False, "error": "the queue service is unavailable; retry shortly"}
    assert result.headers["Retry-After"] == "1"
