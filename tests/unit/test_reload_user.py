"""`inferd reload` loads the new model to check it: never as root where the appliance runs as another user."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path

from daemon.cli.reload import root_refusal
from daemon.errors import EXIT_USAGE
from daemon.settings import load_settings
from testkit.config import write_settings
from testkit.harness import REPO
from tests.needs import need

NOBODY = pwd.getpwnam("nobody").pw_uid


def settings_with_run_dir(tmp_path: Path, owner: int | None) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    if owner is not None:
        os.chown(run_dir, owner, -1)
    return write_settings(tmp_path, {"paths": {"run_dir": str(run_dir), "log_dir": str(tmp_path / "log")}})


def test_root_is_refused_where_the_appliance_runs_as_another_user(tmp_path):
    need(os.geteuid() == 0, "chown to another user needs root", "run the tests as root")
    config = settings_with_run_dir(tmp_path, NOBODY)
    refusal = root_refusal(load_settings(config, env={}), 0)
    assert refusal is not None and "refusing to run as root" in refusal and "sudo -u nobody" in refusal
    assert root_refusal(load_settings(config, env={}), NOBODY) is None
    model = tmp_path / "m.keras"
    model.write_bytes(b"not looked at")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon.launcher",
            "--config",
            str(config),
            "reload",
            "--model",
            str(model),
            "--labels",
            str(model),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "INFERD_CONFIG": str(config)},
    )
    assert result.returncode == EXIT_USAGE, result.stderr
    assert (
        "inferd reload: refusing to run as root" in result.stderr and "nothing was changed" in result.stderr
    )


def test_root_may_reload_an_appliance_that_runs_as_root(tmp_path):
    config = settings_with_run_dir(tmp_path, None if os.geteuid() != 0 else 0)
    settings = load_settings(config, env={})
    owner = settings.paths.run_dir.stat().st_uid
    assert root_refusal(settings, 0) is None or owner != 0
    assert root_refusal(settings, 12345) is None
