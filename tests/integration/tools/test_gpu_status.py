"""gpu_status against a real Redis holding what real workers write (registration, heartbeats, batch records)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
import pytest

from daemon.errors import EXIT_OK, EXIT_REDIS_DOWN, EXIT_SHARD_DOWN
from daemon.gpu_worker import Worker
from daemon.queue.faces import ShardQueues
from daemon.queue.keys import heartbeat_key, processing_key, queue_key
from daemon.queue.wire import BatchRecord
from daemon.shard import Shard
from tests.fake_nvml import GIB, H100, FakeNvml
from tools import gpu_status


class NeverCalled:
    """The worker's model slot: these tests only use the worker's Redis bookkeeping."""

    def __init__(self) -> None:
        self.labels = ["unused"]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        raise AssertionError("no inference in these tests")


def start_worker(settings, client, shard: Shard, batches: list[int]) -> Worker:
    """Register and beat the way a starting worker does, then record `batches` as if it had run them."""
    queues = ShardQueues(client, shard.shard_id, settings)
    worker = Worker(settings, shard, queues, NeverCalled(), handle_signals=False)
    worker.bootstrap()
    for size in batches:
        queues.commit({}, BatchRecord(finished_at=time.time(), size=size))
    return worker


@pytest.fixture()
def two_gpu_shards(redis_settings, redis_client):
    gpu0 = Shard("gpu0", "gpu", 0, "NVIDIA H100 80GB HBM3")
    gpu1 = Shard("gpu1", "gpu", 1, "NVIDIA H100 80GB HBM3")
    start_worker(redis_settings, redis_client, gpu0, [32, 16])
    start_worker(redis_settings, redis_client, gpu1, [])
    redis_client.lpush(queue_key("gpu0"), b"job-a", b"job-b", b"job-c")
    redis_client.lpush(processing_key("gpu1"), b"job-d")
    return redis_settings


def run(capsys, settings, *args: str) -> tuple[int, str]:
    code = gpu_status.main(["--config", str(settings.source), *args], nvml=FakeNvml([H100, H100]))
    return code, capsys.readouterr().out


def test_json_has_one_entry_per_shard_with_gpu_queue_and_worker_figures(two_gpu_shards, capsys):
    code, out = run(capsys, two_gpu_shards, "--json")
    assert code == EXIT_OK
    report = json.loads(out)
    assert report["nvml"] is True and report["down"] == [] and report["exit_code"] == 0
    gpu0, gpu1 = report["shards"]
    assert gpu0["shard"] == "gpu0" and gpu0["device_index"] == 0 and gpu0["kind"] == "gpu"
    assert gpu0["live"] is True and gpu0["pid"] == os.getpid()
    assert 0 <= gpu0["heartbeat_age_s"] < 1.0
    assert (gpu0["queue_depth"], gpu0["in_flight"]) == (3, 0)
    assert (gpu1["queue_depth"], gpu1["in_flight"]) == (0, 1)
    assert gpu0["images_per_s"] == pytest.approx(48 / 60.0)
    assert gpu0["mean_batch_size"] == 24.0
    assert (gpu1["images_per_s"], gpu1["mean_batch_size"]) == (0.0, None)
    assert gpu0["gpu"] == {
        "utilization_pct": 87,
        "memory_used_bytes": 10 * GIB,
        "memory_total_bytes": 80 * GIB,
        "temperature_c": 61,
        "power_w": 312.0,
    }


def test_a_down_shard_shows_in_the_table_and_makes_the_exit_code_non_zero(
    two_gpu_shards, redis_client, capsys
):
    code, out = run(capsys, two_gpu_shards)
    assert code == EXIT_OK
    assert out.splitlines()[-1] == "2 shard(s): 2 live, 0 down"

    redis_client.delete(heartbeat_key("gpu1"))  # what a worker that stopped, or stopped beating, leaves
    code, out = run(capsys, two_gpu_shards)
    assert code == EXIT_SHARD_DOWN
    gpu1_row = next(line for line in out.splitlines() if line.startswith("gpu1"))
    assert "DOWN" in gpu1_row and "87%" in gpu1_row  # the GPU is still read: it is the worker that is gone
    assert out.splitlines()[-1] == "2 shard(s): 1 live, 1 down (gpu1)"
    code, out = run(capsys, two_gpu_shards, "--json")
    assert json.loads(out)["down"] == ["gpu1"]


def test_cpu_shards_without_nvml_and_an_empty_registry(redis_settings, redis_client, capsys):
    code, out = run(capsys, redis_settings)
    assert code == EXIT_SHARD_DOWN
    assert "no shard registered" in out

    start_worker(redis_settings, redis_client, Shard("cpu0", "cpu", 0, "CPU"), [4])
    code = gpu_status.main(
        ["--config", str(redis_settings.source), "--json"], nvml=FakeNvml([], fail_init=True)
    )
    report = json.loads(capsys.readouterr().out)
    assert code == EXIT_OK and report["nvml"] is False
    assert report["shards"][0]["gpu"] is None and report["shards"][0]["live"] is True


def test_unreachable_redis_exits_3(make_settings, tmp_path, capsys):
    settings = make_settings(redis={"managed": False, "socket": str(tmp_path / "nobody.sock")})
    code = gpu_status.main(["--config", str(settings.source)], nvml=FakeNvml([]))
    assert code == EXIT_REDIS_DOWN
    assert "is unreachable" in capsys.readouterr().err
    code = gpu_status.main(["--config", str(settings.source), "--json"], nvml=FakeNvml([]))
    assert code == EXIT_REDIS_DOWN
    assert "unreachable" in json.loads(capsys.readouterr().out)["error"]


def test_watch_redraws_a_frame_per_refresh(two_gpu_shards, capsys):
    code, out = run(capsys, two_gpu_shards, "--watch", "0.05", "--count", "3")
    assert code == EXIT_OK
    assert out.count("Every 0.05s: inferd gpu_status") == 3
    code, out = run(capsys, two_gpu_shards, "--watch", "0.05", "--count", "2", "--json")
    assert [json.loads(line)["exit_code"] for line in out.splitlines()] == [0, 0]


def test_the_api_serves_the_shards_as_gpu_status_shows_them(two_gpu_shards, redis_client, capsys):
    import falcon.testing

    from daemon.http.status_page import ShardsResource

    app = falcon.App()
    app.add_route("/shards", ShardsResource(two_gpu_shards, redis_client, nvml=FakeNvml([H100, H100])))
    served = falcon.testing.TestClient(app).simulate_get("/shards").json
    _, out = run(capsys, two_gpu_shards, "--json")
    shown = json.loads(out)

    def steady(document: dict[str, Any]) -> dict[str, Any]:
        # The reading's time and the heartbeats' ages move between the two looks; nothing else may.
        shards = [{k: v for k, v in shard.items() if k != "heartbeat_age_s"} for shard in document["shards"]]
        return {**{k: v for k, v in document.items() if k != "time"}, "shards": shards}

    assert "redis" not in served and "exit_code" not in served  # where Redis lives is not the API's to say
    assert steady(served) == {k: v for k, v in steady(shown).items() if k not in ("redis", "exit_code")}
    assert [s["gpu"]["utilization_pct"] for s in served["shards"]] == [87, 87]
