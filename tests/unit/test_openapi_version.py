"""/openapi.json states the model version served now: it follows `inferd reload`, not the one of the start."""

from __future__ import annotations

import falcon
import falcon.testing

from daemon.http.openapi import OpenApiResource
from daemon.settings import DEFAULT_CONFIG, load_settings


def test_the_document_follows_the_served_model_version():
    served = {"version": 1}
    app = falcon.App()
    app.add_route(
        "/openapi.json",
        OpenApiResource(load_settings(DEFAULT_CONFIG, env={}), "0.1.0", lambda: served["version"]),
    )
    client = falcon.testing.TestClient(app)
    info = client.simulate_get("/openapi.json").json["info"]
    assert info["description"] == "Image classification with efficientnet_lite0 (version 1)."
    for version in (2, 3):
        served["version"] = version  # what ServedVersions reads from <run_dir>/model.json after a reload
        info = client.simulate_get("/openapi.json").json["info"]
        assert info["description"] == f"Image classification with efficientnet_lite0 (version {version})."
        assert info["version"] == "0.1.0"  # the API's own version does not change
