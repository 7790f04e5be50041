"""What the README promises of every operator tool, run as an operator runs it (tools/<name>): `--help` with
the exit codes, 78 and one line naming the key on bad settings, and haproxy_config's `--weights`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from daemon.errors import EXIT_CONFIG, EXIT_MEANINGS, EXIT_OK, EXIT_USAGE
from testkit.harness import REPO
from testkit.images import encode_image
from tests.needs import need_program

TOOLS = ("gpu_status", "flush_queues", "stress", "haproxy_config")
"""Every tools/<name> wrapper an operator runs."""
BAD_SETTINGS = "[batching]\nmax_batch_size = 0\n"
BAD_SETTINGS_LINE = "configuration error: batching.max_batch_size = 0 is not allowed: from 1 to 1024"


def tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "tools" / name), *args], capture_output=True, text=True, timeout=60, cwd="/"
    )


def test_every_tool_wrapper_is_listed():
    wrappers = {path.name for path in (REPO / "tools").iterdir() if path.is_file() and not path.suffix}
    assert wrappers == set(TOOLS)


@pytest.mark.parametrize("name", TOOLS)
def test_every_tool_answers_help_with_the_exit_codes_it_uses(name):
    result = tool(name, "--help")
    assert result.returncode == EXIT_OK, result.stderr
    assert result.stdout.startswith(f"usage: {name} ") and "--config" in result.stdout
    codes = result.stdout.split("exit codes:\n", 1)[1]
    assert f"{EXIT_OK:<3} {EXIT_MEANINGS[EXIT_OK]}" in codes
    assert f"{EXIT_USAGE:<3} {EXIT_MEANINGS[EXIT_USAGE]}" in codes


@pytest.mark.parametrize("name", ["gpu_status", "flush_queues", "stress"])
def test_every_tool_that_reads_the_settings_exits_78_naming_the_bad_key(name, tmp_path: Path):
    config = tmp_path / "settings.toml"
    config.write_text(BAD_SETTINGS)
    photo = tmp_path / "photo.png"
    photo.write_bytes(encode_image(np.zeros((32, 32, 3), dtype=np.uint8)))
    extra = {"flush_queues": ["--purge"], "stress": [str(photo)]}.get(name, [])
    result = tool(name, "--config", str(config), *extra)
    assert result.returncode == EXIT_CONFIG, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"{name}: {BAD_SETTINGS_LINE}"
    assert f"{EXIT_CONFIG:<3} {EXIT_MEANINGS[EXIT_CONFIG]}" in tool(name, "--help").stdout


def test_haproxy_config_weights_reach_each_server_and_haproxy_accepts_them(tmp_path: Path):
    haproxy = need_program("haproxy", "haproxy")
    result = tool("haproxy_config", "10.0.0.1:8000", "10.0.0.2:8000", "--weights", "4,1")
    assert result.returncode == EXIT_OK, result.stderr
    servers = [line.split() for line in result.stdout.splitlines() if line.strip().startswith("server ")]
    assert servers == [
        ["server", "box1", "10.0.0.1:8000", "weight", "4"],
        ["server", "box2", "10.0.0.2:8000", "weight", "1"],
    ]
    config = tmp_path / "haproxy.cfg"
    config.write_text(result.stdout)
    checked = subprocess.run([haproxy, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for bad in ("4", "4,x", "0,1", "257,1"):
        refused = tool("haproxy_config", "10.0.0.1:8000", "10.0.0.2:8000", "--weights", bad)
        assert refused.returncode == EXIT_USAGE and "--weights" in refused.stderr, (bad, refused.stderr)
