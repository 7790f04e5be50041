"""The whole appliance under supervisord: two CPU shards, a tiny generated model, concurrent clients."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from testkit.images import encode_image
from tests.tiny_model import TINY_LABELS

pytestmark = pytest.mark.slow


def jobs_stolen(url: str) -> float:
    """Every job a shard took from another's queue, by /metrics."""
    lines = requests.get(f"{url}/metrics", timeout=10).text.splitlines()
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("inferd_jobs_stolen_total{")
    )


def test_concurrent_requests_are_all_answered_by_both_shards(start_appliance, photo_png):
    appliance = start_appliance(shards=2)

    def classify(i: int) -> requests.Response:
        files = {"image": (f"photo{i}.png", photo_png, "image/png")}
        return requests.post(f"{appliance.url}/predict", files=files, timeout=30)

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(classify, range(120)))

    assert [r.status_code for r in responses] == [200] * 120
    for response in responses:
        body = response.json()
        assert body["success"] is True
        assert len(body["predictions"]) == 5
        assert all(p["label"] in TINY_LABELS for p in body["predictions"])
        probabilities = [p["probability"] for p in body["predictions"]]
        assert probabilities == sorted(probabilities, reverse=True)
    # The same image gets the same answer whichever shard ran it and whatever batch it was in.
    assert len({tuple(p["label"] for p in r.json()["predictions"]) for r in responses}) == 1
    served = Counter(r.headers["X-Inferd-Shard"] for r in responses)
    assert set(served) == {"cpu0", "cpu1"}
    # Global round-robin: the two shards split the load evenly whatever API process took each request. A job
    # one shard took from behind the other's overdue batch (work stealing: a batch held up past 3x its pace,
    # as a busy host can do) is answered by the thief, which moves the split by two.
    stolen = jobs_stolen(appliance.url)
    print(f"\n[round robin] answered by {dict(served)}, jobs stolen {stolen:g}")
    assert abs(served["cpu0"] - served["cpu1"]) <= 2 + 2 * stolen


def test_index_top_parameter_and_raw_body(start_appliance):
    appliance = start_appliance(shards=1)
    index = requests.get(appliance.url, timeout=5).json()
    assert index["name"] == "inferd" and "POST /predict" in index["endpoints"]

    image = encode_image(np.full((40, 60, 3), 128, dtype=np.uint8), "JPEG")
    raw = requests.post(
        f"{appliance.url}/predict?top=3", data=image, headers={"Content-Type": "image/jpeg"}, timeout=30
    )
    assert raw.status_code == 200, raw.text
    assert len(raw.json()["predictions"]) == 3
    bad = requests.post(
        f"{appliance.url}/predict?top=0", data=image, headers={"Content-Type": "image/jpeg"}, timeout=30
    )
    assert bad.status_code == 400
    assert bad.json() == {"success": False, "error": "top=0 is outside 1 to 100"}
