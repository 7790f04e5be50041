"""One readiness rule on a real appliance: `inferd drain` takes the box out of /readyz and both KServe V2
readiness routes at once, and `inferd undrain` puts it back on all three."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from testkit.harness import REPO, Appliance

pytestmark = pytest.mark.slow

READY_ROUTES = ("/readyz", "/v2/health/ready", "/v2/models/tiny/ready")
"""The tiny model is tiny.keras and no model.name is set: the served name comes from the file."""
GRACE_S = 3.0
"""`inferd drain --grace`: how long the box reads unready before admission closes; the probes run inside it."""


def statuses(appliance: Appliance) -> dict[str, int]:
    return {path: requests.get(f"{appliance.url}{path}", timeout=5).status_code for path in READY_ROUTES}


def inferd(appliance: Appliance, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "daemon.launcher", "--config", str(appliance.config), *args],
        cwd=REPO,
        env=appliance.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_drain_makes_every_readiness_route_503_and_undrain_makes_them_200(shared_appliance):
    appliance = shared_appliance
    assert statuses(appliance) == dict.fromkeys(READY_ROUTES, 200)
    drain = inferd(appliance, "drain", "--grace", str(GRACE_S), "--timeout", "10")
    try:
        appliance.wait_until(
            "/readyz to answer 503 while `inferd drain` runs",
            lambda: requests.get(f"{appliance.url}/readyz", timeout=5).status_code == 503,
            timeout_s=GRACE_S * 5,
        )
        during = statuses(appliance)
        running = drain.poll() is None
        out, err = drain.communicate(timeout=60)
        assert drain.returncode == 0, out + err
        assert running, "the drain ended before the routes were probed: raise GRACE_S"
        assert during == dict.fromkeys(READY_ROUTES, 503)
        assert statuses(appliance) == dict.fromkeys(READY_ROUTES, 503)  # drained: admission closed too
    finally:
        undrain = inferd(appliance, "undrain")
        out, err = undrain.communicate(timeout=60)
    assert undrain.returncode == 0, out + err
    assert statuses(appliance) == dict.fromkeys(READY_ROUTES, 200)
