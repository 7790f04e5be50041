"""The tools find an appliance started with INFERD_* overrides they were not given (<run_dir>/appliance.json)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.config import write_settings
from testkit.harness import REPO, Appliance, free_port
from tests.conftest import tiny_sections

pytestmark = pytest.mark.slow


def test_stress_and_gpu_status_reach_an_appliance_started_on_another_port(tmp_path, tiny_model, photo_png):
    sections = tiny_sections(tiny_model, devices={"cpu_workers": 1})
    config = write_settings(tmp_path, sections)
    port = free_port()  # the settings file says another one
    assert port != sections["api"]["port"]
    appliance = Appliance(
        tmp_path, config, port, Path(sections["paths"]["run_dir"]), 1, {"INFERD_API_PORT": str(port)}
    )
    image = tmp_path / "photo.png"
    image.write_bytes(photo_png)
    # No INFERD_API_PORT for the tool: only --config, as an operator in another shell would run it.
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    try:
        appliance.start()
        record = json.loads((appliance.run_dir / "appliance.json").read_text())
        assert record["api_port"] == port and record["config"] == str(config)
        stress = subprocess.run(
            [sys.executable, "-m", "tools.stress", "--config", str(config), "-n", "5", "--json", str(image)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert stress.returncode == 0, stress.stdout + stress.stderr
        summary = json.loads(stress.stdout)
        assert summary["url"] == f"http://127.0.0.1:{port}/predict" and summary["ok"] == 5
    finally:
        appliance.stop()
    after = subprocess.run(
        [sys.executable, "-m", "tools.stress", "--config", str(config), "-n", "5", str(image)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Stopped: the record is stale, the file's port is used, and nothing answers there.
    assert after.returncode == 1
    assert f"nothing answers at http://127.0.0.1:{sections['api']['port']}/predict" in after.stderr
