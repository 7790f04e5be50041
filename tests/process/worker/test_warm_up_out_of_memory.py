"""Out of memory while warming up is a start error: exit 79, one line saying what to change, and the shard shown
as failed with that reason (docs/gpu.md, docs/operating.md). The memory really runs out: a generated model asks
TensorFlow's CPU allocator for more than the machine's address space, and the real worker meets the refusal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon.errors import EXIT_MODEL_LOAD, EXIT_SHARD_DOWN
from daemon.queue.keys import SHARDS_KEY
from daemon.queue.wire import FAILED, ShardInfo
from testkit.config import run_tool, write_settings
from testkit.harness import REPO
from tests.conftest import tiny_sections
from tests.process.test_worker_exit_codes import error_messages
from tests.tiny_model import build_model_out_of_memory_at_warm_up

pytestmark = pytest.mark.slow

WORKER_TIMEOUT_S = 120.0
"""Loading TensorFlow on two shared cores; the refusal itself takes a fraction of a second."""
MAX_WORKER_RSS_BYTES = 3 * 2**30
"""The worker with TensorFlow loaded is under 1 GiB: more would mean the huge tensor was really being filled."""


def run_worker(config: Path) -> tuple[int, str, int]:
    """(exit code, stderr, peak resident bytes) of one worker for shard 0, measured by wait4 for that child."""
    stderr_path = config.parent / "worker.stderr"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.gpu_worker", "--config", str(config), "--shard-index", "0"],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={"PATH": "/usr/bin:/bin"},
            start_new_session=True,
        )
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            os.wait4(proc.pid, 0)
            raise AssertionError(
                f"the worker still runs after {WORKER_TIMEOUT_S:g}s:\n{stderr_path.read_text()}"
            )
        time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait for it again
    return proc.returncode, stderr_path.read_text(errors="replace"), usage.ru_maxrss * 1024


def gpu_status(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_tool("gpu_status", config, *args, env={"PATH": "/usr/bin:/bin"})


def test_running_out_of_memory_at_warm_up_exits_79_and_the_shard_shows_failed_with_the_fix(
    tmp_path, redis_socket, redis_client
):
    model = build_model_out_of_memory_at_warm_up(tmp_path / "model")
    sections = tiny_sections(
        model, batching={"max_batch_size": 4}, redis={"managed": False, "socket": str(redis_socket)}
    )
    config = write_settings(tmp_path, sections)

    code, stderr, peak_rss = run_worker(config)

    assert code == EXIT_MODEL_LOAD, stderr
    assert peak_rss < MAX_WORKER_RSS_BYTES, f"the worker peaked at {peak_rss / 2**30:.1f} GiB"
    # The reason names TensorFlow's own refusal as the runtime raised it (not a shape error, not a kill).
    reason = (
        "out of device memory warming up batches of up to 4 (ResourceExhaustedError): "
        "lower batching.max_batch_size or raise devices.gpu_memory_limit_mb"
    )
    assert error_messages(stderr) == [f"cpu0: cannot serve (exit 79): {reason}"]

    # What every surface reads: the registry entry says failed, with that reason, and no heartbeat is left.
    info = ShardInfo.decode(redis_client.hget(SHARDS_KEY, "cpu0"))
    assert info.state == FAILED and info.reason == reason
    assert redis_client.exists("inferd:heartbeat:cpu0") == 0

    status = gpu_status(config)
    assert status.returncode == EXIT_SHARD_DOWN, status.stdout + status.stderr
    row = next(line for line in status.stdout.splitlines() if line.startswith("cpu0"))
    assert "FAILED" in row.split()
    assert f"cpu0 FAILED: {reason}" in status.stdout
    assert json.loads(gpu_status(config, "--json").stdout)["failed"] == {"cpu0": reason}
