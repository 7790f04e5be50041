"""Bearer-token auth and the JSON error shape of the Falcon app (real app, session Redis, no worker)."""

from __future__ import annotations

import base64

import falcon.inspect
import falcon.testing
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from testkit.images import encode_image

TOKEN = "s3cret-token"
RIGHT = {"Authorization": f"Bearer {TOKEN}"}
BAD_AUTHORIZATION: dict[str, dict[str, str]] = {
    "missing header": {},
    "wrong token": {"Authorization": "Bearer wrong"},
    "longer token": {"Authorization": f"Bearer {TOKEN}x"},
    "token without a scheme": {"Authorization": TOKEN},
    "the right token under Basic": {"Authorization": f"Basic {TOKEN}"},
    "Basic credentials": {"Authorization": "Basic " + base64.b64encode(f"inferd:{TOKEN}".encode()).decode()},
}
PNG = encode_image(np.zeros((8, 8, 3), dtype=np.uint8))


@pytest.fixture()
def secured(make_settings, redis_socket, redis_client, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    token_file.chmod(0o600)
    settings = make_settings(
        redis={"managed": False, "socket": str(redis_socket)}, api={"auth_token_file": str(token_file)}
    )
    from daemon.api import create_app

    return falcon.testing.TestClient(create_app(settings, redis_client))


def routes(client: falcon.testing.TestClient) -> list[tuple[str, str]]:
    """(method, path) of every responder the app registers, read from its router: none can be forgotten."""
    return [
        (method.method, route.path)
        for route in falcon.inspect.inspect_routes(client.app)
        for method in route.methods
        if not method.internal
    ]


def call(client: falcon.testing.TestClient, method: str, path: str, headers: dict[str, str]):
    # /predict gets a real image, so auth is the only thing that can refuse it.
    body = {"body": PNG, "content_type": "image/png"} if method == "POST" else {}
    return client.simulate_request(method, path, headers=headers, **body)


def test_the_route_list_is_read_from_the_app(secured):
    from daemon.api import UNAUTHENTICATED_PATHS

    found = routes(secured)
    probes = {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"}
    assert probes == UNAUTHENTICATED_PATHS, "only the probes may go without a token"
    # A check that the enumeration sees the app at all; new routes join the loops below by themselves.
    assert {("GET", "/"), ("POST", "/predict"), ("GET", "/metrics")} <= set(found)
    assert {path for _, path in found} >= UNAUTHENTICATED_PATHS


@pytest.mark.parametrize("headers", BAD_AUTHORIZATION.values(), ids=BAD_AUTHORIZATION.keys())
def test_every_route_but_the_probes_and_the_page_files_refuses_a_bad_authorization_with_401_json(
    secured, headers
):
    from daemon.api import UNAUTHENTICATED_PATHS
    from daemon.http.status_page import ASSETS

    open_paths = UNAUTHENTICATED_PATHS | set(ASSETS)
    guarded = [(method, path) for method, path in routes(secured) if path not in open_paths]
    assert ("GET", "/shards") in guarded
    for method, path in guarded:
        result = call(secured, method, path, headers)
        assert result.status_code == 401, (method, path, result.text)
        # Open Inference Protocol paths answer in that protocol's error form, the others in /predict's.
        expected: dict[str, object] = {"error": "missing or wrong bearer token"}
        if not path.startswith("/v2"):
            expected = {"success": False, **expected}
        assert result.json == expected, (method, path)
        assert result.headers["WWW-Authenticate"] == "Bearer", (method, path)


def test_the_scheme_is_case_insensitive_and_the_token_is_not(secured):
    for scheme in ("bearer", "BEARER", "Bearer"):
        headers = {"Authorization": f"{scheme} {TOKEN}"}
        assert secured.simulate_get("/", headers=headers).status_code == 200, scheme
        assert secured.simulate_get("/metrics", headers=headers).status_code == 200, scheme
        # Past auth: refused only because no worker is live.
        assert call(secured, "POST", "/predict", headers).status_code == 503, scheme
    upper_token = {"Authorization": f"bearer {TOKEN.upper()}"}
    assert secured.simulate_get("/", headers=upper_token).status_code == 401


def test_metrics_count_refused_predictions_as_401_and_time_them(secured):
    for headers in BAD_AUTHORIZATION.values():
        assert call(secured, "POST", "/predict", headers).status_code == 401
    scraped = secured.simulate_get("/metrics", headers=RIGHT)
    assert scraped.status_code == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(scraped.text)
        for sample in family.samples
    }
    refused = len(BAD_AUTHORIZATION)
    assert samples[("inferd_requests_total", (("status", "401"),))] == refused
    assert ("inferd_requests_total", (("status", "500"),)) not in samples
    assert samples[("inferd_request_seconds_count", ())] == refused


def test_probes_stay_open_and_the_right_token_passes(secured):
    assert secured.simulate_get("/healthz").status_code == 200
    assert secured.simulate_get("/readyz").status_code == 503  # no worker registered in this test
    result = call(secured, "POST", "/predict", RIGHT)
    # Past auth: refused only because no worker is live, with a retry hint.
    assert result.status_code == 503
    assert result.json["error"].startswith("no worker is registered yet")
    assert result.headers["Retry-After"] == "1"


def test_the_status_page_loads_without_a_token_but_its_data_do_not(secured):
    from daemon.http.status_page import ASSETS

    browser = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    page = secured.simulate_get("/", headers=browser)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    for path in ASSETS:
        assert secured.simulate_get(path).status_code == 200, path
    # What the page then reads asks for the token, and gets it: JSON from the same URL, and the shards.
    for path in ("/", "/shards"):
        refused = secured.simulate_get(path, headers={"Accept": "application/json"})
        assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer", path
        answered = secured.simulate_get(path, headers={"Accept": "application/json", **RIGHT})
        assert answered.status_code == 200 and answered.json, path
    # Only reading the page is open: any other method on / is refused before it reaches a route.
    assert secured.simulate_post("/", headers=browser).status_code == 401
