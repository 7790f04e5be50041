"""Where the operator commands look and write: the default model's own folder, and the running appliance."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon import launcher
from daemon.cli.common import settings_or_exit
from daemon.model import default_model
from daemon.ops.run_dir import ApplianceRecord, read_record, write_record
from daemon.settings import HOME, load_settings


def test_the_default_model_is_built_in_its_own_folder_never_beside_the_users_model(monkeypatch, tmp_path):
    built: list[list[str]] = []

    def build(argv: list[str]) -> int:
        built.append(list(argv))
        return 0

    monkeypatch.setattr(default_model, "main", build)
    monkeypatch.setenv("INFERD_MODEL_PATH", str(tmp_path / "mine.keras"))
    monkeypatch.setenv("INFERD_MODEL_LABELS", str(tmp_path / "mine.txt"))
    assert launcher.main(["build-default-model"]) == 0
    assert built == [["--out", str(HOME / "var" / "models")]]
    assert launcher.main(["build-default-model", "--out", str(tmp_path / "elsewhere")]) == 0
    assert built[-1] == ["--out", str(tmp_path / "elsewhere")]


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(f'[api]\nport = 8000\n[paths]\nrun_dir = "{tmp_path / "run"}"\n')
    (tmp_path / "run").mkdir()
    return path


def test_tools_use_the_running_appliances_addresses_over_the_files(config: Path):
    started_with = load_settings(config, env={"INFERD_API_PORT": "9000", "INFERD_API_HOST": "0.0.0.0"})
    write_record(started_with.paths.run_dir, ApplianceRecord.of(started_with, os.getpid()))
    found = settings_or_exit("test", str(config))
    assert (found.api.host, found.api.port) == ("0.0.0.0", 9000)
    assert found.redis_socket == started_with.redis_socket


def test_a_stopped_appliances_record_is_ignored(config: Path):
    settings = load_settings(config, env={"INFERD_API_PORT": "9000"})
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    write_record(settings.paths.run_dir, ApplianceRecord.of(settings, dead_pid))
    assert read_record(settings.paths.run_dir) is None
    assert settings_or_exit("test", str(config)).api.port == 8000
    (settings.paths.run_dir / "appliance.json").write_text("{not json")
    assert read_record(settings.paths.run_dir) is None
