"""Where the operator commands look and write: the default model's own folder, and the running appliance."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from daemon import launcher
from daemon.cli.common import settings_or_exit
from daemon.model import default_model
from daemon.model.active_model import ModelRecord, choice_of, record_path
from daemon.model.active_model import write_record as write_model_record
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


def test_both_run_dir_records_are_replaced_whole_never_rewritten_in_place(config: Path):
    """appliance.json and model.json share one writer (daemon.ops.run_dir.write_json_record): a reader that
    opened the old record reads all of it, however the new one is written meanwhile. appliance.json was
    rewritten in place, so a tool could read it half-written."""
    settings = load_settings(config)
    run_dir = settings.paths.run_dir
    write_record(run_dir, ApplianceRecord.of(settings, os.getpid()))
    with (run_dir / "appliance.json").open() as before:
        write_record(run_dir, ApplianceRecord.of(settings, os.getppid()))
        assert json.load(before)["pid"] == os.getpid()
    assert read_record(run_dir) == ApplianceRecord.of(settings, os.getppid())
    first, second = choice_of(settings.model), replace(choice_of(settings.model), version=7)
    write_model_record(settings, ModelRecord(active=first, settings_model=first))
    with record_path(settings).open() as before:
        write_model_record(settings, ModelRecord(active=second, settings_model=first))
        assert json.load(before)["active"] == first.as_dict()
    assert sorted(path.name for path in run_dir.iterdir()) == ["appliance.json", "model.json"]
