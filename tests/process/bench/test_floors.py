"""`python -m bench.run --quick --phases floors`: the floors phase runs end to end and writes section (k)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from testkit.harness import REPO


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_quick_floors_phase_measures_every_upload_and_writes_its_section(tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "bench.run", "--quick", "--phases", "floors", "--out-dir", str(out)]
    argv += ["--work-dir", str(tmp_path / "work")]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=340, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    floors = json.loads((out / "results-floors.json").read_text())["meta"]["floors"]
    assert set(floors["decode"]) == {"jpeg", "png", "camera"}
    assert floors["decode"]["camera"]["bytes"] > 3_000_000  # a camera-size file, not a flat colour
    for floor in floors["decode"].values():
        assert floor["fastest_ms"] > 0 and floor["appliance_ms"] > 0
    assert floors["http"]["rps"] > 0 and floors["http"]["cpu_ms"] > 0
    assert {(p["image"], p["errors"]) for p in floors["appliance"]} == {
        ("jpeg", 0),
        ("png", 0),
        ("camera", 0),
    }
    for point in floors["appliance"]:
        assert {"api", "workers", "redis", "front door"} <= set(point["cpu_ms"]), point
        assert point["infer_ms_per_batch"] > 0, point
    # The GPU box's placement: the API only checks the header, so the shard does the decode and the API's
    # CPU per request drops below what it is with the decode in the API.
    shard = floors["shard_decode"]
    assert shard["errors"] == 0 and shard["rps"] > 0
    jpeg = next(p for p in floors["appliance"] if p["image"] == "jpeg")
    assert shard["cpu_ms"]["api"] < jpeg["cpu_ms"]["api"], (shard["cpu_ms"], jpeg["cpu_ms"])
    assert floors["model"]["batch1_p50_ms"] > 0
    assert set(floors["model"]["cpu_ms_per_image"]) == {"1", "32"}
    assert floors["decode_only"]["p50_ms"] > 0
    text = (out / "RESULTS.md").read_text()
    assert "## (k) Floors" in text and "| camera | 4" in text
    assert "| jpeg, decode in shard | 64 |" in text and "Model floor" in text
