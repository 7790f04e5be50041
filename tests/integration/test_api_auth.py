"""Bearer-token auth and the JSON error shape of the Falcon app (real app, session Redis, no worker)."""

from __future__ import annotations

import falcon.testing
import pytest

from tests.conftest import encode_image


@pytest.fixture()
def secured(make_settings, redis_socket, redis_client, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    settings = make_settings(
        redis={"managed": False, "socket": str(redis_socket)}, api={"auth_token_file": str(token_file)}
    )
    from daemon.api import create_app

    return falcon.testing.TestClient(create_app(settings, redis_client))


def test_requests_without_the_token_get_401_json(secured):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"}):
        result = secured.simulate_get("/", headers=headers)
        assert result.status_code == 401
        assert result.json == {"success": False, "error": "missing or wrong bearer token"}
        assert result.headers["WWW-Authenticate"] == "Bearer"


def test_probes_stay_open_and_the_right_token_passes(secured):
    assert secured.simulate_get("/healthz").status_code == 200
    assert secured.simulate_get("/readyz").status_code == 503  # no worker registered in this test
    image = encode_image(__import__("numpy").zeros((8, 8, 3), dtype="uint8"))
    result = secured.simulate_post(
        "/predict", body=image, content_type="image/png", headers={"Authorization": "Bearer s3cret-token"}
    )
    # Past auth: refused only because no worker is live, with a retry hint.
    assert result.status_code == 503
    assert result.json["error"].startswith("no worker has registered")
    assert result.headers["Retry-After"] == "1"
