"""`inferd run` stops before starting anything, with exit 78 and one line, on settings that would expose it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.errors import EXIT_CONFIG
from testkit.config import write_settings
from testkit.harness import REPO


def run_refused(config: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "daemon.launcher", "--config", str(config), "run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "INFERD_CONFIG": str(config)},
    )
    assert result.returncode == EXIT_CONFIG, (result.returncode, result.stderr[-2000:])
    return result.stderr


@pytest.mark.parametrize("key", ["api.auth_token_file", "redis.password_file"])
def test_a_world_readable_secret_stops_the_start(tmp_path: Path, key: str):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    section, name = key.split(".")
    config = write_settings(
        tmp_path, {section: {name: str(secret)}, "paths": {"run_dir": str(tmp_path / "run")}}
    )
    stderr = run_refused(config)
    assert f"inferd: configuration error: {key} = {str(secret)!r} is readable by every user" in stderr
    assert "chmod 600" in stderr


def test_an_external_redis_over_the_network_without_a_password_stops_the_start(tmp_path: Path):
    config = write_settings(
        tmp_path,
        {"redis": {"managed": False, "host": "192.0.2.10"}, "paths": {"run_dir": str(tmp_path / "run")}},
    )
    stderr = run_refused(config)
    assert "redis.host = '192.0.2.10' is not allowed" in stderr and "redis.allow_no_password" in stderr
