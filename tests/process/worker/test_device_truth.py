"""On a GPU shard whose runtime sees no GPU, the worker refuses (exit 80), or serves on the CPU when told to,
and every surface says which. This machine has no GPU: a GPU shard is faked at discovery, the runtime is real."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import requests

from daemon.errors import EXIT_DEVICE
from daemon.queue.keys import SHARDS_KEY
from daemon.queue.wire import FAILED, ShardInfo
from daemon.shard import SHARDS_ENV, Shard, encode_shards
from testkit.config import run_tool, write_settings
from testkit.harness import REPO, Appliance, wait_until
from tests.conftest import tiny_sections
from tests.standin_nvml import STANDIN_GPU_NAME, write_standin_pynvml

pytestmark = pytest.mark.slow

FAKE_GPU = Shard("gpu0", "gpu", 0, STANDIN_GPU_NAME, uuid="GPU-5a1d0000", memory_total_bytes=80 * 2**30)


def test_a_gpu_shard_whose_runtime_sees_no_gpu_exits_80_with_one_line(
    tmp_path, tiny_model, redis_socket, redis_client
):
    sections = tiny_sections(tiny_model, redis={"managed": False, "socket": str(redis_socket)})
    config = write_settings(tmp_path, sections)
    result = subprocess.run(
        [sys.executable, "-m", "daemon.gpu_worker", "--config", str(config), "--shard-index", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", SHARDS_ENV: encode_shards([FAKE_GPU])},
    )
    assert result.returncode == EXIT_DEVICE, result.stderr
    lines = [line for line in result.stderr.splitlines() if "cannot serve" in line]
    assert len(lines) == 1, result.stderr
    assert "ERROR gpu0: cannot serve (exit 80): tensorflow" in lines[0]
    assert f"sees no GPU, but NVML lists GPU 0 ({STANDIN_GPU_NAME})" in lines[0]
    assert "tensorflow[and-cuda]" in lines[0] and "devices.cpu_fallback = true" in lines[0]
    assert "serving on" not in result.stderr
    info = ShardInfo.decode(redis_client.hget(SHARDS_KEY, "gpu0"))
    assert info.state == FAILED and info.reason and info.reason in lines[0]
    assert redis_client.exists("inferd:heartbeat:gpu0") == 0


def test_the_appliance_shows_the_failed_gpu_shard_on_readyz_metrics_and_gpu_status(tmp_path, tiny_model):
    pythonpath = write_standin_pynvml(tmp_path / "standin")
    sections = tiny_sections(tiny_model, devices={"gpus": "auto"})
    config = write_settings(tmp_path, sections)
    appliance = Appliance(
        tmp_path,
        config,
        sections["api"]["port"],
        sections["paths"]["run_dir"],
        1,
        {"PYTHONPATH": str(pythonpath)},
    )
    appliance.launch()  # not start(): it never becomes ready, which is the point
    try:

        def failed_shards() -> dict[str, str]:
            # Until the API is up, the front door answers /readyz itself, without the shard lists.
            body = requests.get(f"{appliance.url}/readyz", timeout=2).json()
            shards: dict[str, str] = body.get("failed_shards", {})
            return shards

        wait_until("/readyz to list gpu0 as failed", lambda: "gpu0" in failed_shards(), 90, appliance.output)
        ready = requests.get(f"{appliance.url}/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["live_shards"] == []
        reason = ready.json()["failed_shards"]["gpu0"]
        assert "sees no GPU" in reason and "devices.cpu_fallback" in reason
        assert ready.json()["reason"] == f"no worker is serving: gpu0: {reason}"
        assert "cannot serve (exit 80)" in appliance.log_text()

        metrics = requests.get(f"{appliance.url}/metrics", timeout=5).text
        assert re.search(
            r'^inferd_shard_failed\{reason="[^"]*sees no GPU[^"]*",shard="gpu0"\} 1\.0$', metrics, re.M
        )

        status = run_tool("gpu_status", config, env=appliance.env)
        assert status.returncode == 2, status.stdout + status.stderr
        row = next(line for line in status.stdout.splitlines() if line.startswith("gpu0"))
        assert "FAILED" in row.split()
        assert f"gpu0 FAILED: {reason}" in status.stdout

        # "expected" is supervisord's decision not to restart (autorestart=unexpected): logged as it decides.
        appliance.wait_until(
            "supervisord to take exit 80 as final",
            lambda: "exited: worker-0 (exit status 80; expected)" in appliance.log_text(),
        )
        assert appliance.log_path.read_text(errors="replace").count("spawned: 'worker-0'") == 1
        assert "worker:worker-0                  EXITED" in appliance.supervisorctl("status")
    finally:
        appliance.stop()


def test_with_cpu_fallback_the_gpu_shard_serves_on_the_cpu_and_says_so(tmp_path, start_appliance, photo_png):
    pythonpath = write_standin_pynvml(tmp_path / "standin")
    appliance = start_appliance(
        shards=1, env={"PYTHONPATH": str(pythonpath)}, devices={"gpus": "auto", "cpu_fallback": True}
    )
    answer = requests.post(f"{appliance.url}/predict", files={"image": photo_png}, timeout=30)
    assert answer.status_code == 200 and answer.headers["X-Inferd-Shard"] == "gpu0"
    device = f"CPU (fallback for GPU 0: {STANDIN_GPU_NAME})"

    status = run_tool("gpu_status", appliance.config, "--json", env=appliance.env)
    assert status.returncode == 0, status.stdout + status.stderr
    (shard,) = json.loads(status.stdout)["shards"]
    assert shard["device_name"] == device and shard["fallback"] is True and shard["live"] is True
    assert "devices.cpu_fallback = true" in shard["reason"]

    metrics = requests.get(f"{appliance.url}/metrics", timeout=5).text
    assert (
        f'inferd_shard_device{{backend="tensorflow",device="{device}",fallback="1",shard="gpu0"}} 1.0'
        in metrics
    )
    assert "serving on the CPU (devices.cpu_fallback = true)" in appliance.log_text()


def test_inferd_check_loads_the_runtime_and_says_what_each_shard_would_use(tmp_path, tiny_model):
    pythonpath = write_standin_pynvml(tmp_path / "standin")
    sections = tiny_sections(tiny_model, devices={"gpus": "auto"})
    config = write_settings(tmp_path, sections)

    def check(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "daemon.launcher", "--config", str(config), "check"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(pythonpath), **env},
        )

    refused = check()
    assert refused.returncode == EXIT_DEVICE, refused.stdout + refused.stderr
    assert f"gpu0\tgpu\t{STANDIN_GPU_NAME}\t-> WOULD FAIL (exit 80): tensorflow " in refused.stdout
    fallback = check(INFERD_DEVICES_CPU_FALLBACK="true")
    assert fallback.returncode == 0, fallback.stdout + fallback.stderr
    assert f"-> CPU (fallback for GPU 0: {STANDIN_GPU_NAME}) (tensorflow " in fallback.stdout


def test_a_serving_shard_shows_its_runtime_version_and_no_cuda_on_the_cpu_everywhere(start_appliance):
    import tensorflow as tf

    appliance = start_appliance(shards=1)
    # The version this test's own TensorFlow import reports: the worker's venv is this one.
    runtime = {
        "backend": "tensorflow",
        "runtime_version": tf.__version__,
        "cuda_version": None,
        "memory_total_bytes": None,  # no device memory on the CPU
    }

    info = ShardInfo.decode(appliance.redis().hget(SHARDS_KEY, "cpu0"))
    assert (info.backend, info.runtime_version, info.cuda_version, info.memory_total_bytes) == tuple(
        runtime.values()
    )

    status = run_tool("gpu_status", appliance.config, "--json", env=appliance.env)
    assert status.returncode == 0, status.stdout + status.stderr
    (listed,) = json.loads(status.stdout)["shards"]
    assert {key: listed.get(key, "absent") for key in runtime} == runtime
    (served,) = requests.get(f"{appliance.url}/shards", timeout=5).json()["shards"]
    assert {key: served.get(key, "absent") for key in runtime} == runtime
