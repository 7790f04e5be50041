"""The command lines the README shows: `--config` after the subcommand, and exit 64 for every usage error."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from bench import run as bench_run
from daemon import launcher
from daemon.errors import EXIT_USAGE
from tools import flush_queues, gpu_status, haproxy_config, install, runtime_choice, stress

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("argv", "config"),
    [
        (["run", "--config", "x.toml"], "x.toml"),
        (["check", "--config", "x.toml"], "x.toml"),
        (["--config", "x.toml", "check"], "x.toml"),
        (["--config", "before.toml", "run", "--config", "after.toml"], "after.toml"),
        (["drain", "--config", "x.toml", "--shard", "cpu0"], "x.toml"),
        (["reload", "--model", "m.keras", "--labels", "l.txt", "--config", "x.toml"], "x.toml"),
        (["build-default-model", "--force", "--config", "x.toml"], "x.toml"),
        (["run"], None),
    ],
)
def test_inferd_takes_config_before_or_after_its_subcommand(argv, config):
    assert launcher.build_parser().parse_args(argv).config == config


MAINS: dict[str, Callable[[list[str]], object]] = {
    "inferd": launcher.main,
    "gpu_status": gpu_status.main,
    "flush_queues": flush_queues.main,
    "stress": stress.main,
    "haproxy_config": haproxy_config.main,
    "runtime_choice": runtime_choice.main,
    "tools.install": install.main,
    "bench.run": bench_run.main,
}


@pytest.mark.parametrize("name", sorted(MAINS))
def test_an_unknown_option_is_a_usage_error_with_exit_64(name, capsys):
    with pytest.raises(SystemExit) as exited:
        MAINS[name](["--no-such-option"])
    assert exited.value.code == EXIT_USAGE
    assert "error: " in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--no-such-option"],
        ["no-such-command"],
        [],
        ["reload", "--model", "m.keras"],
        ["drain", "--timeout", "soon"],
    ],
)
def test_inferd_subcommand_usage_errors_exit_64(argv):
    with pytest.raises(SystemExit) as exited:
        launcher.main(argv)
    assert exited.value.code == EXIT_USAGE


def test_stress_refuses_a_duration_over_its_cap(tmp_path, capsys):
    image = tmp_path / "photo.png"
    image.write_bytes(b"not read: the command line is refused first")
    with pytest.raises(SystemExit) as exited:
        stress.main([str(image), "--url", "http://127.0.0.1:9", "-d", "601"])
    assert exited.value.code == EXIT_USAGE
    assert "--duration is 600 seconds at most (got 601)" in capsys.readouterr().err


def test_setup_sh_and_the_installed_command_exit_64_on_a_usage_error():
    for argv in (["./setup.sh", "no-such-action"], [".venv/bin/inferd", "run", "--no-such-option"]):
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == EXIT_USAGE, (argv, done.stderr)
