"""Bearer-token auth end to end: the real appliance (gunicorn, Redis, a worker) with `api.auth_token_file` set."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.tiny_model import TINY_LABELS

pytestmark = pytest.mark.slow

TOKEN = "appliance-token-1234"


def test_predict_needs_the_token_and_refusals_are_counted_as_401(start_appliance, tmp_path, photo_png):
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    token_file.chmod(0o600)
    # The readiness wait itself shows the probes stay open: it calls /readyz without a token.
    appliance = start_appliance(shards=1, api={"auth_token_file": str(token_file)})
    upload = {"image": ("photo.png", photo_png, "image/png")}

    refused = requests.post(f"{appliance.url}/predict", files=upload, timeout=30)
    assert refused.status_code == 401, refused.text
    assert refused.json() == {"success": False, "error": "missing or wrong bearer token"}
    assert refused.headers["WWW-Authenticate"] == "Bearer"

    # Lower-case scheme on purpose: RFC 7235 makes it case-insensitive, and clients do send it so.
    auth = {"Authorization": f"bearer {TOKEN}"}
    answered = requests.post(f"{appliance.url}/predict", files=upload, headers=auth, timeout=30)
    assert answered.status_code == 200, answered.text
    body = answered.json()
    assert body["success"] is True
    assert body["predictions"] and {p["label"] for p in body["predictions"]} <= set(TINY_LABELS)

    assert requests.get(f"{appliance.url}/metrics", timeout=10).status_code == 401
    scraped = requests.get(f"{appliance.url}/metrics", headers=auth, timeout=10)
    assert scraped.status_code == 200
    requests_by_status = {
        sample.labels["status"]: sample.value
        for family in text_string_to_metric_families(scraped.text)
        for sample in family.samples
        if sample.name == "inferd_requests_total"
    }
    assert requests_by_status == {"401": 1.0, "200": 1.0}
