"""Exit codes that tell supervisord to stop retrying: 78 for bad settings, 79 for a model that cannot load."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from daemon.errors import EXIT_CONFIG, EXIT_MODEL_LOAD
from tests.conftest import tiny_sections
from tools.harness import REPO, Appliance, write_settings

pytestmark = pytest.mark.slow


def run_worker(config, extra_env=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.gpu_worker", "--config", str(config), "--shard-index", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", **(extra_env or {})},
    )


def test_bad_settings_exit_78_with_one_line(tmp_path, tiny_model):
    config = write_settings(tmp_path, tiny_sections(tiny_model, batching={"max_batch_size": 0}))
    result = run_worker(config)
    assert result.returncode == EXIT_CONFIG
    assert "batching.max_batch_size = 0 is not allowed" in result.stderr


def test_a_model_that_cannot_load_exits_79(tmp_path, tiny_model):
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"this is not a keras archive")
    config = write_settings(tmp_path, tiny_sections(tiny_model, model={"path": broken}))
    result = run_worker(config)
    assert result.returncode == EXIT_MODEL_LOAD
    assert f"cannot load model {broken}" in result.stderr


def test_labels_that_do_not_match_the_model_exit_79(tmp_path, tiny_model):
    labels = tmp_path / "three.txt"
    labels.write_text("a\nb\nc\n")
    config = write_settings(tmp_path, tiny_sections(tiny_model, model={"labels": labels}))
    result = run_worker(config)
    assert result.returncode == EXIT_MODEL_LOAD
    assert "has 10 outputs but" in result.stderr and "has 3 labels" in result.stderr


def test_supervisord_leaves_a_worker_that_cannot_load_stopped(tmp_path, tiny_model):
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"PK\x03\x04 not really")
    sections = tiny_sections(tiny_model, model={"path": broken})
    appliance = Appliance(
        tmp_path, write_settings(tmp_path, sections), sections["api"]["port"], sections["paths"]["run_dir"], 1
    )
    appliance.launch()  # never ready: its one worker cannot load the model
    try:
        appliance.wait_until(
            "the worker to exit with 79",
            lambda: "worker:worker-0                  EXITED" in appliance.supervisorctl("status"),
            90,
        )
        time.sleep(3)  # had supervisord meant to retry, it would have started the worker again by now
        status = appliance.supervisorctl("status")
        assert "worker:worker-0                  EXITED" in status, status
        assert appliance.output().count("spawned: 'worker-0'") == 1
    finally:
        appliance.stop()
